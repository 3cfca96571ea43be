#!/usr/bin/env python
"""Issue 24's "Done when" ratios, measured in one run on this machine.

1. The default engines (``covidedge build-engine``, autotuned: built here into --build-dir
   unless already there) against what a user gets without covidedge on the same network, the
   shipped fp32 graph: a plain ONNX Runtime ``InferenceSession`` (default options) and a plain
   OpenVINO ``compile_model`` (the CPU plugin's defaults, bf16 compute on CPUs with bf16 units),
   plus covidedge's previous default (the model card's CPU engine: ONNX Runtime fp32 or int8 u8,
   taken from the candidates the autotuner built). Batch 1, every variant timed in alternating
   rounds (covidedge.bench.timing.time_alternating), so machine load hits them alike.
2. ``infer FOLDER`` end to end (run_inference: decode, preprocess, both models, masks, no files
   written) in images per second over --count images of the dataset, before (previous default
   engines, no decode prefetch) and after (autotuned engines, decode prefetched in a thread),
   plus after without prefetch to show what the thread brings. Each pass follows an untimed
   run over 16 images (engines loaded once, OpenVINO's compile cache filled).

Example (a few minutes on a 2-core CPU):
    python benchmarks/engine_ratios.py --data /work/shared/data/covid-qu-ex --count 1166
Results: benchmarks/results/engine-ratios-<machine>-<date>.md / .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The issue's targets at batch 1: default engine vs plain ONNX Runtime, vs plain OpenVINO.
TARGETS = {"classifier": (2.5, 1.5), "segmenter": (2.0, 1.2)}
#: End to end: images per second after / before.
FOLDER_TARGET = 2.0
#: Images of the untimed run before each end-to-end pass.
WARMUP = 16


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def previous_default(model) -> str:
    """The flavour covidedge built for CPUs before autotuning: the card's cpu_engine_precision."""
    return "int8-u8" if model.summary.get("cpu_engine_precision") == "int8" else "fp32"


def images(data: Path, count: int):
    found = sorted(p for p in data.rglob("*.png") if "images" in p.parts[-2].lower() and "mask" not in str(p).lower())
    val = [p for p in found if "/Val/" in str(p)]
    rest = [p for p in found if p not in set(val)]
    return (val + rest)[:count]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", type=Path, default=Path("build/engine-ratios"))
    p.add_argument("--data", type=Path, default=None, help="COVID-QU-Ex folder for the end-to-end run")
    p.add_argument("--count", type=int, default=1166, help="images for the end-to-end run (default 1166)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    p.add_argument("--round-seconds", type=float, default=0.5, help="time per variant per round (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="infer's images per call (default 8)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)

    # the benchmark's engines never become this machine's defaults
    os.environ["COVIDEDGE_ENGINES"] = str((args.build_dir / "record").resolve())
    import onnxruntime as ort

    from covidedge.bench.timing import sample_batch, time_alternating
    from covidedge.engine.autotune import AutotuneOptions, read_choices
    from covidedge.engine.defaults import build_default_engines
    from covidedge.machine import probe_machine
    from covidedge.pretrained import shipped_models
    from covidedge.runtime import load

    machine = probe_machine()
    t0 = time.perf_counter()
    chosen = {e.task: e for e in build_default_engines(args.build_dir, autotune=AutotuneOptions(batches=(1,)),
                                                       progress=True)}
    log(f"default engines ready in {time.perf_counter() - t0:.0f} s")
    choices = read_choices(args.build_dir)["models"]
    try:
        import openvino as ov
        core = ov.Core()
    except ImportError:
        core = None

    rows, previous = [], {}
    for model in shipped_models():
        fp32 = model.fp32_onnx()
        engine = chosen[model.task]
        cands = {c["backend"] + " " + c["form"]: c for c in choices[model.name]["candidates"]}
        prev = cands.get("onnxruntime " + previous_default(model)) or {}
        previous[model.task] = prev.get("engine")
        spec = load(fp32).spec
        x = sample_batch(spec, 1)
        feed = {spec.input_name: x}
        variants = {}
        r_default = load(engine.engine).activate()
        variants[f"covidedge default ({engine.backend} {engine.flavour})"] = lambda r=r_default: r.infer(x)
        if prev.get("engine") and Path(prev["engine"]).is_file():
            r_prev = load(prev["engine"]).activate()
            variants[f"covidedge previous default (onnxruntime {previous_default(model)})"] = \
                lambda r=r_prev: r.infer(x)
        sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        variants["plain ONNX Runtime session (fp32 graph)"] = lambda s=sess: s.run(None, feed)
        if core is not None:
            compiled = core.compile_model(str(fp32), "CPU")
            request = compiled.create_infer_request()
            computes = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
            variants[f"plain OpenVINO compile_model (fp32 graph, {computes} inside)"] = \
                lambda q=request: q.infer({spec.input_name: x})
        for fn in variants.values():
            fn()
        t = time.perf_counter()
        for fn in variants.values():
            fn()
        per_call = (time.perf_counter() - t) / len(variants)
        iterations = max(3, int(args.round_seconds / max(per_call, 1e-4)))
        log(f"{model.task}: timing {len(variants)} variants, {args.rounds} rounds of {iterations} calls")
        stats = time_alternating(variants, 1, rounds=args.rounds, warmup=3, iterations=iterations)
        base = stats[next(iter(variants))].median_ms
        for name, st in stats.items():
            rows.append({"task": model.task, "model": model.name, "variant": name, "ms": st.median_ms,
                         "p90_ms": st.p90_ms, "cv": st.cv, "default_speedup": st.median_ms / base})
        r_default.deactivate()

    lines = ["| model | variant | ms (median, batch 1) | p90 ms | default is x faster |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['ms']:.2f} | {r['p90_ms']:.2f} | {r['default_speedup']:.2f}x |")
    verdicts = []
    for task, (vs_ort, vs_ov) in TARGETS.items():
        got = {r["variant"].split(" (")[0]: r["default_speedup"] for r in rows if r["task"] == task}
        for what, target in (("plain ONNX Runtime session", vs_ort), ("plain OpenVINO compile_model", vs_ov)):
            if what in got:
                verdicts.append(f"- {task}: default vs {what}: {got[what]:.2f}x (target {target}x): "
                                f"{'met' if got[what] >= target else 'NOT met'}")

    folder = {}
    if args.data:
        from covidedge.runtime.pipeline import Pipeline
        from covidedge.runtime.run import run_inference

        files = images(args.data, args.count)
        log(f"end to end over {len(files)} images, batch {args.batch_size}")
        passes = [("before: previous default engines, no prefetch", previous, False),
                  ("after: autotuned engines, decode prefetched", {t: e.engine for t, e in chosen.items()}, True),
                  ("after without prefetch", {t: e.engine for t, e in chosen.items()}, False)]
        for label, models, prefetch in passes:
            if not all(models.get(t) for t in ("classifier", "segmenter")):
                continue
            Pipeline.prefetch = prefetch
            # untimed: loads the engines once, so OpenVINO's compile cache holds them (as after a
            # user's first run) and each pass times its steady state, not a first compile
            run_inference(files[:WARMUP], classifier=str(models["classifier"]),
                          segmenter=str(models["segmenter"]), batch_size=args.batch_size)
            t = time.perf_counter()
            summary = run_inference(files, classifier=str(models["classifier"]), segmenter=str(models["segmenter"]),
                                    batch_size=args.batch_size)
            seconds = time.perf_counter() - t
            folder[label] = {"images": summary.ok, "seconds": seconds, "images_per_s": summary.ok / seconds}
            log(f"{label}: {summary.ok} images in {seconds:.1f} s = {summary.ok / seconds:.1f} images/s")
        Pipeline.prefetch = True
        before = folder.get(passes[0][0], {}).get("images_per_s")
        after = folder.get(passes[1][0], {}).get("images_per_s")
        if before and after:
            verdicts.append(f"- infer FOLDER: {after:.1f} vs {before:.1f} images/s = {after / before:.2f}x "
                            f"(target {FOLDER_TARGET}x): {'met' if after / before >= FOLDER_TARGET else 'NOT met'}")
        lines += ["", f"End to end, each pass after an untimed run over {WARMUP} images (engines loaded, "
                  "OpenVINO's compile cache filled):", "",
                  "| infer FOLDER | images | s | images/s |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['images']} | {v['seconds']:.1f} | {v['images_per_s']:.1f} |" for k, v in folder.items()]

    cpu = machine.get("cpu") or platform.processor() or "?"
    text = "\n".join([f"# Engine ratios (issue 24), {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
                      f"{cpu}, {machine.get('cpu_cores')} cores; onnxruntime {machine.get('onnxruntime')}, "
                      f"openvino {machine.get('openvino')}; load average {os.getloadavg()[0]:.2f}", "",
                      *lines, "", *verdicts, ""])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", cpu).strip("-").lower()[:40]
    stem = args.out / f"engine-ratios-{slug}-{dt.datetime.now():%Y%m%d-%H%M}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"rows": rows, "folder": folder, "verdicts": verdicts,
                                                     "machine": {k: v for k, v in machine.items()
                                                                 if isinstance(v, (str, int, float))}}, indent=1))
    log(f"results: {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
