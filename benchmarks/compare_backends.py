#!/usr/bin/env python
"""Compare PyTorch eager, default ONNX Runtime, every covidedge engine and peers on this machine.

In ONE run, on the same machine and the same input batch, for named model variants
(``covidedge.models.registry.VARIANTS``; by default the full-size classifier xception256 and
segmenter resunet256), at batch 1 and a larger batch:

- PyTorch eager fp32: ``model.eval()`` under ``torch.inference_mode()`` with torch's default
  threads - the baseline a user starts from;
- ONNX Runtime default: an ``InferenceSession`` on the fp32 export with default session
  options - what a user gets without covidedge;
- every covidedge engine for this machine (``covidedge.engine.build.build_engine``): ONNX Runtime
  fp32, fp16 and int8 (signed int8 symmetric activations, TensorRT's format) and, for the
  int8-activations study, int8 with unsigned asymmetric activations (ONNX Runtime on CPUs only);
  TensorRT fp32 / fp16 / int8 where TensorRT is present; torch CUDA fp16 on a GPU without TensorRT;
- OpenVINO on the CPU with its own defaults when it is installed (a peer);
- the engine covidedge's autotuner chooses for the model here (``covidedge.engine.autotune``,
  what ``covidedge build-engine MODEL --backend auto`` builds: its float forms on every backend,
  timed against each other at the batches asked), as the row "covidedge autotuned".

Every row also gets its speed-up over the OpenVINO default peer ("vs OV default").

Every row is a covidedge Runner (``covidedge.backends``; the baselines with default settings),
timed by covidedge.bench's timing loop (``covidedge.bench.timing.time_callable`` around
``Runner.infer``), so every row pays the same per-call input check. This script keeps only the
list of variants, the interleaving and the tables: the variants are timed in interleaved rounds
(each round runs every variant in turn), so that a change in machine load during the run hits
all of them alike. Latency does not depend on the weights: without --classifier-ckpt /
--segmenter-ckpt the models are freshly initialised (the table says so) and the metric column
stays empty; --data with trained checkpoints fills it.
Results go to benchmarks/results/<machine>-<date>.md / .json / .png.

Examples (a few minutes on a 2-core CPU; the second under a minute):
    python benchmarks/compare_backends.py --batches 1,8 --iterations 10
    python benchmarks/compare_backends.py --variants xception64-small,resunet64-small --batches 1 --iterations 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from covidedge.backends.base import Runner
from covidedge.bench import batch_skip_reason, metric_from_evaluation
from covidedge.bench.report import BenchReport, BenchRow, file_size_mb, machine_summary, probe_machine_safely
from covidedge.bench.timing import LatencyStats, percentile, sample_batch, time_callable
from covidedge.errors import CovidEdgeError
from covidedge.models.registry import DEFAULT_VARIANTS, VARIANTS
from covidedge.spec import CALIBRATION_METHODS, PRECISIONS

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Targets this benchmark reports against (not tests): speed-up of covidedge's best engine at batch 1.
TARGETS = {
    "classifier": {"vs_eager": 2.5, "vs_ort_default": 1.2},
    "segmenter": {"vs_eager": 2.0},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- what is timed ------------------------------------------------------------------------------
@dataclass
class Variant:
    """One row of the table: a covidedge Runner and what it stands for in the comparison."""

    label: str                 # e.g. "PyTorch eager", "ONNX Runtime default", "covidedge ORT"
    role: str                  # "baseline" | "reference" | "covidedge" | "peer" | "info"
    runner: Runner
    path: Path                 # the file it runs (its size is the size column)
    shown_precision: Optional[str] = None   # the precision column, when not the graph's own
    torch_threads: Optional[int] = None     # torch intra-op threads while this variant runs
    settings: Dict[str, Any] = field(default_factory=dict)  # reported beside runner.describe()
    note: str = ""

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.shown_precision or self.runner.precision

    @property
    def name(self) -> str:
        return f"{self.label} {self.precision}"

    def describe(self) -> Dict[str, Any]:
        return _jsonable({**self.runner.describe(), **self.settings})


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def baseline_variants(ckpt: Path, onnx_fp32: Path, eager_device: str, eager_threads: List[int]) -> List[Variant]:
    """PyTorch eager (the baseline), an ONNX Runtime session with default options (the reference),
    and with --eager-threads eager with torch's thread count set (informational rows)."""
    import onnxruntime as ort

    from covidedge.backends.onnxruntime import OrtRunner
    from covidedge.backends.torch import TorchRunner

    cuda = ["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else None
    variants = [Variant("PyTorch eager", "baseline", TorchRunner(ckpt, device=eager_device), ckpt),
                Variant("ONNX Runtime default", "reference", OrtRunner(onnx_fp32, providers=cuda), onnx_fp32,
                        settings={"session_options": "defaults"})]
    for n in eager_threads:
        variants.append(Variant(f"PyTorch eager ({n} thread{'s' if n > 1 else ''})", "info",
                                TorchRunner(ckpt, device=eager_device), ckpt, torch_threads=n,
                                settings={"threads": {"intra_op": n}},
                                note="not the baseline: torch's thread count set for comparison"))
    return variants


#: OpenVINO's names of the precisions its CPU plugin computes in -> (runner setting, table column).
_OPENVINO_COMPUTES = {"bf16": ("bf16", "bf16 (default)"), "f32": ("f32", "fp32"), "f16": ("f16", "fp16 (default)")}


def openvino_default_variant(onnx_fp32: Path) -> Tuple[Optional[Variant], Optional[str]]:
    """(variant, None) for OpenVINO on the CPU with the plugin's own defaults - its performance hint
    and its inference precision, bf16 on CPUs with bf16 units - or (None, why not)."""
    try:
        import openvino as ov
    except ImportError:
        return None, "OpenVINO is not installed: no OpenVINO row (pip install openvino to add the peer)"
    from covidedge.backends.openvino import PERFORMANCE_HINTS, OpenVinoRunner

    core = ov.Core()
    computes = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()  # e.g. "bf16"
    hint = getattr(core.get_property("CPU", "PERFORMANCE_HINT"), "name", "")
    if computes not in _OPENVINO_COMPUTES or hint not in PERFORMANCE_HINTS:
        return None, (f"OpenVINO's CPU defaults (precision {computes}, hint {hint or '?'}) are not "
                      "settings covidedge's OpenVINO runner takes: no OpenVINO default row")
    setting, shown = _OPENVINO_COMPUTES[computes]
    runner = OpenVinoRunner(onnx_fp32, device="CPU", performance_hint=hint, inference_precision=setting)
    return Variant("OpenVINO default", "peer", runner, onnx_fp32, shown_precision=shown), None


# -- preparing models and engines ---------------------------------------------------------------
@dataclass
class ModelCase:
    key: str           # "classifier" | "segmenter"
    title: str         # table name
    checkpoint: Path
    trained: bool
    size: int          # input size (px)


def model_cases(args) -> List[Tuple[str, Any]]:
    """(task, what) of each model to compare, in order: a checkpoint given with --classifier-ckpt /
    --segmenter-ckpt takes the place of its task's --variants; other variants are freshly
    initialised."""
    ckpts = {"classifier": args.classifier_ckpt, "segmenter": args.segmenter_ckpt}
    cases: List[Tuple[str, Any]] = []
    for v in args.variants:
        if ckpts[v.task] is None:
            cases.append((v.task, v))
        elif (v.task, ckpts[v.task]) not in cases:
            cases.append((v.task, ckpts[v.task]))
    cases += [(task, ckpt) for task, ckpt in ckpts.items() if ckpt is not None and (task, ckpt) not in cases]
    return cases


def make_checkpoint(task: str, what, out: Path, args) -> ModelCase:
    """The user's checkpoint (``what`` is its path), or the named variant ``what`` freshly
    initialised (seed 0, at --image-size when given) and saved as one."""
    if isinstance(what, Path):
        from covidedge.formats.checkpoint import read_checkpoint

        spec = read_checkpoint(what)["spec"]
        kw = spec.get("model_kwargs") or {}
        size = int(spec["input_size"][0])
        shape = ", ".join(f"{k} {v}" for k, v in sorted(kw.items()))
        title = f"{spec['model_name']}-{size} ({shape + ', ' if shape else ''}trained)"
        return ModelCase(task, title, what, True, size)
    import torch

    from covidedge.formats.checkpoint import save_checkpoint
    from covidedge.models.registry import create_model
    from covidedge.spec import classifier_spec, segmenter_spec

    size = args.image_size or what.input_size
    make_spec = classifier_spec if task == "classifier" else segmenter_spec
    spec = make_spec(what.model, input_size=(size, size), model_kwargs=dict(what.model_kwargs))
    title = f"{what.name}{'' if size == what.input_size else f' at {size} px'} (fresh init)"
    torch.manual_seed(0)
    path = out / f"{what.name}-{size}.pt"
    save_checkpoint(path, create_model(what.model, **what.model_kwargs).eval(), spec,
                    extra={"note": "freshly initialised for benchmarks", "variant": what.name})
    return ModelCase(task, title, path, False, size)


_CALIBRATION: Dict[Tuple[Path, int], Any] = {}


def calibration_set(args, work: Path, size: int):
    """Calibration images for int8 at ``size`` px (made once per size): --data's Train split, or a
    small synthetic set."""
    from covidedge.export.calibration import make_calibration_set

    if (work, size) in _CALIBRATION:
        return _CALIBRATION[work, size]
    root = args.data
    if root is None:
        from covidedge.data.synth import make_synthetic_dataset

        per_class = max(1, math.ceil(args.calib_count / 3))
        root = make_synthetic_dataset(work / f"synth-{size}", per_class=per_class, splits=("Train",), size=size)
    _CALIBRATION[work, size] = make_calibration_set(root, args.calib_count, split="Train",
                                                    out=work / f"calibration-{size}.json", input_size=(size, size))
    return _CALIBRATION[work, size]


def prepare_graphs(case: ModelCase, work: Path, args) -> Dict[str, Path]:
    """fp32 export, fp16 graph, int8 Q/DQ graphs (s8 symmetric; u8 asymmetric for the study)."""
    from covidedge.export.onnx import export_onnx
    from covidedge.export.fp16 import convert_fp16
    from covidedge.export.int8 import quantize_int8

    stem = work / case.checkpoint.stem
    graphs = {"fp32": stem.with_suffix(".fp32.onnx")}
    t = time.perf_counter()
    export_onnx(case.checkpoint, graphs["fp32"])
    log(f"{case.key}: exported fp32 ONNX in {time.perf_counter() - t:.0f} s")
    if "fp16" in args.precisions:
        graphs["fp16"] = stem.with_suffix(".fp16.onnx")
        with _quiet_warnings():
            convert_fp16(graphs["fp32"], graphs["fp16"])
    if "int8" in args.precisions:
        t = time.perf_counter()
        calib = calibration_set(args, work, case.size)
        graphs["int8"] = stem.with_suffix(".int8.onnx")
        quantize_int8(graphs["fp32"], graphs["int8"], calib, method=args.calib_method)
        if args.int8_activations:
            graphs["int8-u8"] = stem.with_suffix(".int8-u8.onnx")
            quantize_int8(graphs["fp32"], graphs["int8-u8"], calib, method=args.calib_method,
                          activation_type="uint8", symmetric_activations=False)
        log(f"{case.key}: int8 graphs calibrated ({args.calib_method}, {len(calib)} images) in "
            f"{time.perf_counter() - t:.0f} s")
    return graphs


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def build_variants(case: ModelCase, graphs: Dict[str, Path], work: Path, args, notes: List[str]) -> List[Variant]:
    """Every way this machine can run the model (runners created, not yet activated)."""
    from covidedge.backends.available import available_backends
    from covidedge.engine.build import build_engine
    from covidedge.runtime import load

    max_batch = max(args.batches)
    cuda = _cuda_available()
    eager_device = args.eager_device if args.eager_device != "auto" else ("cuda" if cuda else "cpu")
    variants = baseline_variants(case.checkpoint, graphs["fp32"], eager_device, args.eager_threads)

    threads = {"intra_op_threads": args.threads} if args.threads else {}
    for prec, graph in graphs.items():
        t = time.perf_counter()
        try:
            with _quiet_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                built = build_engine(graph, work / f"{case.key}.{prec}.ort.onnx", backend="onnxruntime",
                                     min_batch=1, opt_batch=1, max_batch=max_batch, progress=False,
                                     overwrite=True)  # --work is this script's scratch folder
        except CovidEdgeError as exc:  # stated in the results; the graph itself is timed instead
            notes.append(f"{case.title}: the ONNX Runtime {prec} engine was not built ({exc}); "
                         f"its {prec} ONNX graph was timed with covidedge's ONNX Runtime runner instead")
            log(f"{case.key}: ONNX Runtime {prec} engine NOT built: {exc}")
            variants.append(Variant(f"covidedge ORT (graph{', u8 act' if prec == 'int8-u8' else ''})",
                                    "covidedge", load(graph, **threads), graph))
            continue
        label = "covidedge ORT" if prec != "int8-u8" else "covidedge ORT (u8 act, CPU only)"
        variants.append(Variant(label, "covidedge", load(built.engine_path, **threads), built.engine_path))
        log(f"{case.key}: ONNX Runtime {prec} engine built in {time.perf_counter() - t:.0f} s")

    if available_backends()["backends"]["tensorrt"]["available"]:
        for prec in PRECISIONS:
            if prec not in graphs:
                continue
            t = time.perf_counter()
            try:
                built = build_engine(graphs[prec], work / f"{case.key}.{prec}.engine", backend="tensorrt",
                                     min_batch=1, opt_batch=1, max_batch=max_batch, progress=False,
                                     overwrite=True)
            except CovidEdgeError as exc:
                notes.append(f"{case.title}: the TensorRT {prec} engine was not built: {exc}")
                log(f"{case.key}: TensorRT {prec} engine NOT built: {exc}")
                continue
            variants.append(Variant("covidedge TensorRT", "covidedge", load(built.engine_path), built.engine_path))
            log(f"{case.key}: TensorRT {prec} engine built in {time.perf_counter() - t:.0f} s")
    elif cuda:
        from covidedge.backends.torch import TorchRunner

        variants.append(Variant("covidedge torch CUDA", "covidedge",
                                TorchRunner(case.checkpoint, device="cuda", half=True), case.checkpoint))
        notes.append("TensorRT is not installed: the GPU engine is torch CUDA fp16")
    # the engine covidedge's autotuner chooses here for this model (its float forms: no Val
    # measurement says an int8 graph of a freshly initialised model is faithful)
    from covidedge.engine.autotune import AutotuneOptions, tune_model

    t = time.perf_counter()
    try:
        with _quiet_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            choice = tune_model(graphs["fp32"], work / f"autotune-{case.key}",
                                AutotuneOptions(batches=tuple(args.batches), max_batch=max_batch))
        win = choice.chosen
        variants.append(Variant(f"covidedge autotuned ({win.backend} {win.form})", "covidedge",
                                load(win.engine), win.engine, note=choice.reason))
        log(f"{case.key}: autotuned in {time.perf_counter() - t:.0f} s: {choice.reason}")
    except CovidEdgeError as exc:
        notes.append(f"{case.title}: the autotuner chose no engine: {exc}")
    peer, why_not = openvino_default_variant(graphs["fp32"])
    if peer is not None:
        variants.append(peer)
        # covidedge's OpenVINO backend: the graph's own precision (f32 compute), fp32 and int8 Q/DQ
        for prec in ("fp32", "int8"):
            if prec in graphs:
                variants.append(Variant("covidedge OpenVINO", "covidedge", load(graphs[prec], backend="openvino"),
                                        graphs[prec]))
    elif case.key == "classifier":
        notes.append(why_not)
    return variants


# -- timing -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n: Optional[int]):
    """torch's intra-op thread count set to ``n`` for an informational eager row, then restored."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(variants: List[Variant], batch: int, args) -> Tuple[Dict[int, LatencyStats], Dict[int, str]]:
    """Time every variant that takes ``batch`` images per call: (index -> stats, index -> why not).

    Each variant runs ``Runner.infer`` on one seeded batch (``sample_batch``) under
    covidedge.bench's ``time_callable``. After the warm-up, the variants are timed in interleaved
    rounds, in a new seeded order each round: a round gives a variant as many runs as fit in its
    share of the time cap (max_seconds / rounds), judged by its runs so far (the last warm-up run
    before the first round), at most ceil(iterations / rounds) and at least one. The rounds' runs
    and device stages (h2d / compute / d2h on GPUs) are pooled into one LatencyStats."""
    skipped = {i: why for i, v in enumerate(variants) if (why := batch_skip_reason(v.runner, batch))}
    feeds = {i: sample_batch(v.runner.spec, batch) for i, v in enumerate(variants) if i not in skipped}
    samples: Dict[int, List[float]] = {i: [] for i in feeds}
    stages: Dict[int, Dict[str, List[float]]] = {i: {} for i in feeds}
    run_ms: Dict[int, float] = {}

    def timed(i: int, iterations: int, warmup: int = 0, keep: bool = True) -> LatencyStats:
        runner, x = variants[i].runner, feeds[i]

        def stage_times():
            for key, val in runner.last_timings_ms.items():
                if key != "total":
                    stages[i].setdefault(key, []).append(float(val))
            return runner.last_timings_ms

        with _torch_threads(variants[i].torch_threads):
            return time_callable(lambda: runner.infer(x), batch, warmup=warmup, iterations=iterations,
                                 stage_reader=stage_times if keep else None)

    if args.warmup:
        for i in feeds:
            run_ms[i] = timed(i, 1, warmup=args.warmup - 1, keep=False).median_ms
    per_round = max(1, math.ceil(args.iterations / args.rounds))
    budget_ms = args.max_seconds * 1e3 / args.rounds
    order = np.random.default_rng(0)
    for _ in range(args.rounds):
        # a new (seeded) order each round, so no variant always runs right after the same one
        # (torch's OpenMP threads, for one, spin for a while after a call)
        for i in order.permutation(list(feeds)).tolist():
            ms = run_ms.get(i)
            n = 1 if ms is None else per_round if ms <= 0 else max(1, min(per_round, int(budget_ms // ms)))
            samples[i] += timed(i, n).samples_ms
            run_ms[i] = percentile(samples[i], 50)
    stats = {i: LatencyStats.from_samples(samples[i], batch, warmup=args.warmup, stages=stages[i])
             for i in feeds}
    return stats, skipped


def evaluate_variants(case: ModelCase, variants: List[Variant], args) -> Dict[int, Dict[str, Any]]:
    """Accuracy / Dice per variant on --data (only for trained checkpoints; not for the
    informational rows, which run the baseline's model)."""
    from covidedge.evaluation import evaluate

    out = {}
    for i, v in enumerate(variants):
        if v.role == "info":
            continue
        t = time.perf_counter()
        rep = evaluate(v.runner, args.data, split=args.split, limit_per_class=args.limit_per_class,
                       progress=False)
        out[i] = metric_from_evaluation(rep)
        log(f"{case.key}: {v.name} {out[i]['name']} {out[i]['value']} in {time.perf_counter() - t:.0f} s")
    return out


# -- reporting ----------------------------------------------------------------------------------
def machine_slug(machine: Dict[str, Any]) -> str:
    name = machine.get("gpu") or machine.get("cpu") or "machine"
    name = re.sub(r"\((R|TM)\)", "", name, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not machine.get("gpu"):
        slug += f"-{machine.get('cpu_cores') or '?'}c"
    return slug


def ratio(base: Optional[float], this: Optional[float]) -> Optional[float]:
    return base / this if base and this else None


def _fmt(v, digits=2, suffix=""):
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def _fmt_ratio(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}x" if v >= 10 else f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"


def comparison_markdown(rows: List[Dict[str, Any]]) -> str:
    head = ("| model | batch | runtime | precision | size MB | metric | ms/image | p50 ms | p99 ms | FPS "
            "| vs eager | vs ORT default | vs OV default |")
    lines = [head, "|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        metric = "-" if r["metric"] is None else f"{r['metric']['name']} {r['metric']['value']:.3f}"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['runtime']} | {r['precision']} | {_fmt(r['size_mb'], 1)} "
            f"| {metric} | {_fmt(r['ms_per_image'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
            f"| {_fmt(r['fps'], 1)} | {_fmt_ratio(r['vs_eager'])} | {_fmt_ratio(r['vs_ort_default'])} "
            f"| {_fmt_ratio(r.get('vs_ov_default'))} |")
    return "\n".join(lines)


def check_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The fastest covidedge engine at batch 1 per model against TARGETS."""
    results = []
    for key, wanted in TARGETS.items():
        for model in dict.fromkeys(r["model"] for r in rows if r["task"] == key):
            cands = [r for r in rows if r["model"] == model and r["batch"] == 1 and r["role"] == "covidedge"]
            if not cands:
                continue
            best = min(cands, key=lambda r: r["ms_per_image"])
            for what, target in wanted.items():
                got = best[what]
                results.append({"task": key, "model": model, "best": f"{best['runtime']} {best['precision']}",
                                "measure": what, "target": target, "measured": got,
                                "met": got is not None and got >= target})
    return results


def optimized_op_counts(onnx_path) -> Dict[str, int]:
    """Node types of the graph ONNX Runtime actually runs on this CPU (after ORT_ENABLE_ALL): which
    Q/DQ pairs were fused into integer kernels and which were left as float round trips."""
    import collections

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="covidedge-ops-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def int8_activation_study(rows: List[Dict[str, Any]], machine: Dict[str, Any]) -> Dict[str, Any]:
    """Signed int8 symmetric vs unsigned uint8 asymmetric activations, from the same run, with the
    node types ONNX Runtime runs for each (why one is faster)."""
    pairs = []
    graphs: Dict[str, Dict[str, Dict[str, int]]] = {}
    for r in rows:
        if r["runtime"] != "covidedge ORT" or r["precision"] != "int8":
            continue
        for u in rows:
            if (u["runtime"].startswith("covidedge ORT (u8") and u["model"] == r["model"]
                    and u["batch"] == r["batch"]):
                faster = "s8s8 (int8 activations)" if r["ms_per_image"] < u["ms_per_image"] else "u8s8 (uint8 activations)"
                if r["model"] not in graphs:
                    graphs[r["model"]] = {"s8s8": optimized_op_counts(r["path"]),
                                          "u8s8": optimized_op_counts(u["path"])}
                pairs.append({"model": r["model"], "batch": r["batch"],
                              "s8s8_ms_per_image": r["ms_per_image"], "u8s8_ms_per_image": u["ms_per_image"],
                              "u8s8_speedup_over_s8s8": ratio(r["ms_per_image"], u["ms_per_image"]),
                              "faster": faster})
    isa = machine.get("cpu_isa", "")
    return {"machine": machine_slug(machine), "cpu": machine.get("cpu"), "cpu_isa": isa,
            "onnxruntime": machine.get("onnxruntime"), "pairs": pairs, "optimized_graph_ops": graphs}


def study_markdown(study: Dict[str, Any]) -> str:
    lines = ["# int8 activations: signed symmetric (s8s8) vs unsigned asymmetric (u8s8) on ONNX Runtime CPU", "",
             f"CPU: {study['cpu']} ({study['cpu_isa'] or 'ISA unknown'}); ONNX Runtime {study['onnxruntime']}.",
             "Weights are int8 per-channel symmetric in both; only the activation type differs. "
             "s8s8 is what TensorRT takes; u8s8 graphs are for ONNX Runtime on CPUs only.", "",
             "| model | batch | s8s8 ms/image | u8s8 ms/image | u8s8 speed-up | faster |",
             "|---|---:|---:|---:|---:|---|"]
    for p in study["pairs"]:
        lines.append(f"| {p['model']} | {p['batch']} | {p['s8s8_ms_per_image']:.2f} | {p['u8s8_ms_per_image']:.2f} "
                     f"| {_fmt_ratio(p['u8s8_speedup_over_s8s8'])} | {p['faster']} |")
    if study["pairs"]:
        wins = sum(p["faster"].startswith("u8s8") for p in study["pairs"])
        verdict = ("u8s8 is faster on this CPU" if wins == len(study["pairs"]) else
                   "s8s8 is faster on this CPU" if wins == 0 else "neither wins everywhere on this CPU")
        lines += ["", f"Finding: {verdict} ({wins} of {len(study['pairs'])} cases favour u8s8)."]
    keys = ("QLinearConv", "QLinearAdd", "QuantizeLinear", "DequantizeLinear", "Relu", "Transpose", "Conv", "Add")
    if study.get("optimized_graph_ops"):
        lines += ["", "Nodes ONNX Runtime runs after its CPU graph optimisations (fused integer kernels vs "
                  "float round trips):", "",
                  "| model | activations | " + " | ".join(keys) + " |",
                  "|---|---|" + "---:|" * len(keys)]
        for model, kinds in study["optimized_graph_ops"].items():
            for kind, ops in kinds.items():
                lines.append(f"| {model} | {kind} | " + " | ".join(str(ops.get(k, 0)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS.values()),
                   help=f"model variants to compare, freshly initialised, comma separated (default "
                        f"%(default)s), of: {', '.join(VARIANTS)}")
    p.add_argument("--classifier-ckpt", type=Path,
                   help="trained classifier checkpoint, in place of the classifier variants")
    p.add_argument("--segmenter-ckpt", type=Path,
                   help="trained segmenter checkpoint, in place of the segmenter variants")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma separated (default 1,8)")
    p.add_argument("--iterations", type=int, default=10, help="timed runs per variant and batch (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds the runs are split over (default 3)")
    p.add_argument("--max-seconds", type=float, default=8.0,
                   help="time cap per variant and batch; slow cells stop early (at least one run per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant and batch (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for covidedge's ONNX Runtime engines (default: ONNX Runtime's, "
                        "one per physical core); the baselines always keep their defaults")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="covidedge engine precisions to build")
    p.add_argument("--int8-activations", dest="int8_activations", action="store_true", default=True,
                   help="also build int8 with uint8 asymmetric activations and compare (default on)")
    p.add_argument("--no-int8-activations", dest="int8_activations", action="store_false")
    p.add_argument("--calib-method", default="minmax", choices=CALIBRATION_METHODS,
                   help="int8 calibration (default minmax: fastest; latency does not depend on it)")
    p.add_argument("--calib-count", type=int, default=6, help="calibration images (default 6)")
    p.add_argument("--data", type=Path, help="COVID-QU-Ex folder: calibration from Train, metric on --split")
    p.add_argument("--split", default="Val")
    p.add_argument("--limit-per-class", type=int, default=50, help="images per class for the metric (default 50)")
    p.add_argument("--eager-threads", default="",
                   help="also time PyTorch eager with these torch thread counts, e.g. 1 (informational rows)")
    p.add_argument("--eager-device", default="auto", help="device of the PyTorch eager baseline (auto: cuda if present)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in px of the fresh models (default: each variant's)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    p.add_argument("--work", type=Path, default=None, help="folder for exported graphs and engines (default: temporary)")
    args = p.parse_args(argv)
    args.batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants {', '.join(unknown)}: unknown; known: {', '.join(VARIANTS)}")
    args.variants = [VARIANTS[n] for n in names]
    args.precisions = [m.strip() for m in args.precisions.split(",") if m.strip()]
    args.eager_threads = [int(t) for t in args.eager_threads.split(",") if t.strip()]
    bad = set(args.precisions) - set(PRECISIONS)
    if bad or not args.batches or min(args.batches) < 1 or args.iterations < 1 or args.rounds < 1:
        p.error(f"bad --precisions / --batches / --iterations / --rounds ({sorted(bad)})")
    if not (args.variants or args.classifier_ckpt or args.segmenter_ckpt):
        p.error("no model to compare: name --variants or give a checkpoint")
    if args.image_size is not None and args.image_size < 32:
        p.error(f"--image-size {args.image_size} is below 32 px")
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")
    if "int8" not in args.precisions:
        args.int8_activations = False
    return args


def collect_rows(case: ModelCase, variants: List[Variant], batch: int, stats: Dict[int, LatencyStats],
                 skipped: Dict[int, str], metrics: Dict[int, Dict[str, Any]],
                 report: BenchReport) -> List[Dict[str, Any]]:
    """Table rows of one model at one batch (with the ratios), also added to ``report``."""
    def ms_of(role):
        return next((stats[i].ms_per_image for i, v in enumerate(variants) if v.role == role and i in stats), None)

    eager, ort_default, ov_default = ms_of("baseline"), ms_of("reference"), ms_of("peer")
    rows = []
    for i, v in enumerate(variants):
        if i in skipped:
            report.skip(f"{case.title}: {v.name}", batch, skipped[i])
            continue
        st = stats[i]
        metric = metrics.get(i) if metrics.get(i, {}).get("value") is not None else None
        row = BenchRow(model=case.title, backend=v.label, precision=v.precision, batch=batch, latency=st,
                       task=case.key, path=str(v.path), size_mb=file_size_mb(v.path),
                       settings=v.describe(), note=v.note or None)
        if metric:
            row.metric_name, row.metric_value = metric["name"], metric["value"]
        report.add(row)
        rows.append({"model": case.title, "task": case.key, "batch": batch, "runtime": v.label, "path": str(v.path),
                     "backend": v.backend, "role": v.role, "precision": v.precision,
                     "size_mb": row.size_mb, "metric": metric, "ms_per_image": st.ms_per_image,
                     "p50_ms": st.median_ms, "p99_ms": st.p99_ms, "fps": st.throughput, "n": st.n,
                     "cv": st.cv, "unstable": st.unstable, "vs_eager": ratio(eager, st.ms_per_image),
                     "vs_ort_default": ratio(ort_default, st.ms_per_image),
                     "vs_ov_default": ratio(ov_default, st.ms_per_image)})
    return rows


def run_case(task: str, what, work: Path, args, report: BenchReport, notes: List[str]) -> List[Dict[str, Any]]:
    """Prepare one model's graphs and engines, score them (--data), time them at every batch."""
    case = make_checkpoint(task, what, work, args)
    if not case.trained:
        notes.append(f"{case.title}: freshly initialised weights (latency does not depend on "
                     "training; the metric needs --data and trained checkpoints)")
    graphs = prepare_graphs(case, work, args)
    variants = build_variants(case, graphs, work, args, notes)
    rows: List[Dict[str, Any]] = []
    with contextlib.ExitStack() as active:
        for v in variants:
            active.enter_context(v.runner)
        metrics = evaluate_variants(case, variants, args) if (args.data and case.trained) else {}
        for batch in args.batches:
            t = time.perf_counter()
            stats, skipped = measure(variants, batch, args)
            log(f"{case.key}: batch {batch} timed in {time.perf_counter() - t:.0f} s")
            rows += collect_rows(case, variants, batch, stats, skipped, metrics, report)
    gc.collect()
    return rows


def results_markdown(stem: str, rows, targets, report: BenchReport, args, seconds: float, load_text: str) -> str:
    md = [f"# covidedge backend comparison: {stem}", "",
          f"One run of `benchmarks/compare_backends.py` on the same machine and input batch, "
          f"{seconds / 60:.1f} min; {load_text}. Variants were timed in {args.rounds} interleaved "
          f"rounds, up to {args.iterations} runs or {args.max_seconds:g} s per variant and batch, "
          f"after {args.warmup} warm-up run(s).", "",
          comparison_markdown(rows), "",
          "ms/image = median latency per call / batch; p50 / p99 per call; FPS over all timed calls; "
          "'vs eager' and 'vs ORT default' = their ms/image divided by this row's (higher is faster).", ""]
    if targets:
        md += ["## Targets (batch 1, covidedge's fastest engine)", "",
               "| model | engine | measure | target | measured | met |", "|---|---|---|---:|---:|---|"]
        md += [f"| {t['model']} | {t['best']} | {t['measure']} | {t['target']:g}x | {_fmt_ratio(t['measured'])} "
               f"| {'yes' if t['met'] else 'no'} |" for t in targets]
        md.append("")
    unstable = [r for r in rows if r["unstable"]]
    if report.notes or report.skipped or unstable:
        md += ["## Notes", ""] + [f"- {n}" for n in report.notes]
        md += [f"- skipped: {s['model']} batch {s['batch']}: {s['reason']}" for s in report.skipped]
        if unstable:
            md.append(f"- {len(unstable)} of {len(rows)} cells vary by more than 10 % (coefficient of "
                      "variation); compare within a batch, where the rounds were interleaved.")
        md.append("")
    md += ["## Machine", ""] + [f"- {line}" for line in machine_summary(report.machine)] + [""]
    return "\n".join(md)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    machine = probe_machine_safely()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    log("machine: " + "; ".join(machine_summary(machine)[:3]))
    cores = machine.get("cpu_cores") or os.cpu_count() or 1
    if load_before and load_before[0] > 0.5 * cores:
        log(f"warning: load average {load_before[0]:.2f} on {cores} cores - other programs are running; "
            "every variant is slowed, torch's OpenMP threads most (see benchmarks/README.md)")
    notes: List[str] = []
    report = BenchReport(machine=machine, settings={
        "variants": [v.name for v in args.variants], "image_size": args.image_size,
        "classifier_ckpt": None if args.classifier_ckpt is None else str(args.classifier_ckpt),
        "segmenter_ckpt": None if args.segmenter_ckpt is None else str(args.segmenter_ckpt),
        "batches": args.batches, "iterations": args.iterations, "rounds": args.rounds,
        "max_seconds": args.max_seconds, "warmup": args.warmup, "threads": args.threads,
        "calib_method": args.calib_method, "calib_count": args.calib_count,
        "data": None if args.data is None else str(args.data), "split": args.split,
        "limit_per_class": args.limit_per_class})
    rows: List[Dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidedge-compare-")))
        work.mkdir(parents=True, exist_ok=True)
        for task, what in model_cases(args):
            rows += run_case(task, what, work, args, report, notes)
        load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
        seconds = time.perf_counter() - t_start
        # the study reads the int8 engines, which live in the work folder
        study = int8_activation_study(rows, machine) if args.int8_activations else None
    targets = check_targets(rows)
    report.notes.extend(notes)
    load_text = (f"load average (1 min) {load_before[0]:.2f} at start, {load_after[0]:.2f} at end"
                 if load_before and load_after else "load average unknown")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{machine_slug(machine)}-{dt.date.today().isoformat()}"
    (args.out / f"{stem}.md").write_text(results_markdown(stem, rows, targets, report, args, seconds, load_text))
    payload = {"report": report.to_dict(samples=True), "comparison": rows, "targets": targets,
               "int8_activations": study, "seconds": seconds,
               "load_average": {"start": load_before, "end": load_after}}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    png = report.plot(args.out / f"{stem}.png", title=f"covidedge backend comparison: {stem}")
    if study is not None:
        (args.out / f"{stem}-int8-activations.md").write_text(study_markdown(study))
        (args.out / f"{stem}-int8-activations.json").write_text(json.dumps(study, indent=2) + "\n")

    print(comparison_markdown(rows) + "\n")
    for t in targets:
        print(f"target {t['model']} {t['measure']} >= {t['target']:g}x: {_fmt_ratio(t['measured'])} "
              f"({t['best']}) -> {'met' if t['met'] else 'MISSED'}")
    if study is not None:
        print("\n" + study_markdown(study).split("\n\n", 1)[1])
    for n in report.notes:
        print(f"note: {n}")
    print(f"\nwritten: {args.out / stem}.md, .json" + (", .png" if png else "")
          + (", -int8-activations.md/.json" if study else "") + f" ({seconds / 60:.1f} min, {load_text})")
    return 0


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


if __name__ == "__main__":
    sys.exit(main())
