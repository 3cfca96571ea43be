#!/usr/bin/env python
"""Compare PyTorch eager, default ONNX Runtime, every covidedge engine and peers on this machine.

In ONE run, on the same machine and the same input batch, for the full-size Xception-256 classifier
(width 1.0) and the residual U-Net segmenter (base width 32), at batch 1 and a larger batch:

- PyTorch eager fp32: ``model.eval()`` under ``torch.inference_mode()`` with torch's default
  threads - the baseline a user starts from;
- ONNX Runtime default: a plain ``InferenceSession`` on the fp32 export with default session
  options - what a user gets without covidedge;
- every covidedge engine for this machine (``covidedge.engine.build.build_engine``): ONNX Runtime
  fp32, fp16 and int8 (signed int8 symmetric activations, TensorRT's format) and, for the
  int8-activations study, int8 with unsigned asymmetric activations (ONNX Runtime on CPUs only);
  TensorRT fp32 / fp16 / int8 where TensorRT is present; torch CUDA fp16 on a GPU without TensorRT;
- OpenVINO on the CPU when it is installed (a peer).

The variants are timed in interleaved rounds (each round runs every variant in turn), so that a
change in machine load during the run hits all of them alike. Latency does not depend on the
weights: without --classifier-ckpt / --segmenter-ckpt the models are freshly initialised (the
table says so) and the metric column stays empty; --data with trained checkpoints fills it.
Results go to benchmarks/results/<machine>-<date>.md / .json / .png.

Example (a few minutes on a 2-core CPU):
    python benchmarks/compare_backends.py --batches 1,8 --iterations 10
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
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from covidedge.bench.report import BenchReport, BenchRow, file_size_mb, machine_summary, probe_machine_safely
from covidedge.bench.timing import LatencyStats, sample_batch
from covidedge.errors import CovidEdgeError
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
    """One way of running one model: a label for the table and a factory of timed callables."""

    label: str                 # e.g. "PyTorch eager", "ONNX Runtime default", "covidedge ORT"
    role: str                  # "baseline" | "reference" | "covidedge" | "peer" | "info"
    backend: str               # torch | onnxruntime | tensorrt | openvino
    precision: str
    path: Path                 # the file it runs (its size is the size column)
    make: Callable[[int], Callable[[], Any]]   # batch -> a callable running one batch
    close: Callable[[], None] = lambda: None
    settings: Dict[str, Any] = field(default_factory=dict)
    runner: Any = None         # a covidedge Runner, when there is one (for --data and stage times)
    max_batch: Optional[int] = None
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.label} {self.precision}"


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def eager_variant(ckpt: Path, spec, device: str, threads: Optional[int] = None) -> Variant:
    """The model as a user runs it in PyTorch: eval(), inference_mode, default threads. With
    ``threads`` an informational variant that sets torch's intra-op threads for its own runs."""
    import torch

    from covidedge.models.wrapper import InferenceWrapper
    from covidedge.models.loading import load_checkpoint

    model, _, _ = load_checkpoint(ckpt, device=device)
    net = InferenceWrapper(model, spec.task).to(device).eval()
    cuda = device.startswith("cuda")

    def make(batch):
        x = torch.from_numpy(sample_batch(spec, batch)).to(device)

        def run():
            with torch.inference_mode():
                logits, probs = net(x)
                return logits.cpu().numpy(), probs.cpu().numpy()  # .cpu() waits for the GPU

        if threads is None:
            return run

        def run_with_threads():
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return run()
            finally:
                torch.set_num_threads(before)
        return run_with_threads

    def close():
        nonlocal net
        net = None
        if cuda:
            torch.cuda.empty_cache()

    from covidedge.backends.torch import TorchRunner

    if threads is not None:
        return Variant(f"PyTorch eager ({threads} thread{'s' if threads > 1 else ''})", "info", "torch",
                       "fp32", ckpt, make, close,
                       settings={"device": device, "threads": threads, "version": torch.__version__},
                       note="not the baseline: torch's thread count set for comparison")
    return Variant("PyTorch eager", "baseline", "torch", "fp32", ckpt, make, close,
                   settings={"device": device, "threads": torch.get_num_threads(),
                             "version": torch.__version__},
                   runner=TorchRunner(ckpt, device=device))


def ort_default_variant(onnx_fp32: Path, spec) -> Variant:
    """A plain InferenceSession on the fp32 export with default session options."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(onnx_fp32), providers=providers)

    def make(batch):
        feed = {spec.input_name: sample_batch(spec, batch)}
        return lambda: sess.run(None, feed)

    def close():
        nonlocal sess
        sess = None

    from covidedge.backends.onnxruntime import OrtRunner

    return Variant("ONNX Runtime default", "reference", "onnxruntime", "fp32", onnx_fp32, make, close,
                   settings={"providers": providers, "session_options": "defaults",
                             "version": ort.__version__},
                   runner=OrtRunner(onnx_fp32, providers=[p.replace("ExecutionProvider", "").lower()
                                                          for p in providers if p != "CPUExecutionProvider"]))


def runner_variant(label: str, role: str, path: Path, runner, note: str = "") -> Variant:
    """A covidedge Runner (engine, checkpoint on CUDA) timed through ``infer``."""
    runner.activate()
    spec = runner.spec

    def make(batch):
        x = sample_batch(spec, batch)
        return lambda: runner.infer(x)

    return Variant(label, role, runner.backend, runner.precision, path, make, runner.deactivate,
                   settings=runner.describe(), runner=runner, max_batch=runner.max_batch, note=note)


def openvino_variant(onnx_fp32: Path, spec) -> Optional[Variant]:
    """OpenVINO on the CPU with default settings, when it is installed. The precision column
    says what the CPU plugin really computes in: by default bf16 on CPUs with bf16 units."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_fp32)), "CPU")
    request = compiled.create_infer_request()
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # e.g. "<Type: 'bfloat16'>"
    computes = hint.split("'")[-2] if hint.count("'") >= 2 else hint
    precision = {"bfloat16": "bf16 (default)", "f32": "fp32", "float32": "fp32"}.get(computes, computes)

    def make(batch):
        x = sample_batch(spec, batch)
        return lambda: request.infer({0: x})

    def close():
        nonlocal compiled, request
        compiled = request = None

    return Variant("OpenVINO default", "peer", "openvino", precision, onnx_fp32, make, close,
                   settings={"device": "CPU", "inference_precision": computes, "version": ov.__version__ if hasattr(ov, "__version__")
                             else ov.get_version()})


# -- preparing models and engines ---------------------------------------------------------------
@dataclass
class ModelCase:
    key: str           # "classifier" | "segmenter"
    title: str         # table name
    checkpoint: Path
    trained: bool


def make_checkpoint(key: str, out: Path, args) -> ModelCase:
    """The user's checkpoint, or freshly initialised weights saved as one (seed 0)."""
    given = args.classifier_ckpt if key == "classifier" else args.segmenter_ckpt
    size = args.image_size
    if given:
        from covidedge.formats.checkpoint import read_checkpoint

        spec = read_checkpoint(given)["spec"]
        kw = spec.get("model_kwargs") or {}
        what = (f"width {kw.get('width_mult', 1.0)}" if key == "classifier" else
                f"base {kw.get('base_width', 32)}")
        title = f"{spec['model_name']}-{spec['input_size'][0]} ({what}, trained)"
        return ModelCase(key, title, Path(given), True)
    import torch

    from covidedge.models.registry import create_model
    from covidedge.spec import classifier_spec, segmenter_spec
    from covidedge.formats.checkpoint import save_checkpoint

    torch.manual_seed(0)
    if key == "classifier":
        kw = {"width_mult": args.width_mult}
        spec = classifier_spec("xception", input_size=(size, size), model_kwargs=kw)
        title = f"Xception-{size} (width {args.width_mult:g}, fresh init)"
        name = "xception"
    else:
        kw = {"base_width": args.base_width}
        spec = segmenter_spec("resunet", input_size=(size, size), model_kwargs=kw)
        title = f"ResUNet-{size} (base {args.base_width}, fresh init)"
        name = "resunet"
    path = out / f"{name}.pt"
    save_checkpoint(path, create_model(name, **kw).eval(), spec, extra={"note": "freshly initialised for benchmarks"})
    return ModelCase(key, title, path, False)


def calibration_set(args, work: Path):
    """Calibration images for int8: --data's Train split, or a small synthetic set."""
    from covidedge.export.calibration import make_calibration_set

    root = args.data
    if root is None:
        from covidedge.data.synth import make_synthetic_dataset

        per_class = max(1, math.ceil(args.calib_count / 3))
        root = make_synthetic_dataset(work / "synth", per_class=per_class, splits=("Train",),
                                      size=args.image_size)
    return make_calibration_set(root, args.calib_count, split="Train", out=work / "calibration.json",
                                input_size=(args.image_size, args.image_size))


def prepare_graphs(case: ModelCase, work: Path, calib, args) -> Dict[str, Path]:
    """fp32 export, fp16 graph, int8 Q/DQ graphs (s8 symmetric; u8 asymmetric for the study)."""
    from covidedge.export.onnx import export_onnx
    from covidedge.export.precision import convert_fp16, quantize_int8

    stem = work / case.key
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
    """Every way this machine can run the model, opened and ready to time."""
    from covidedge.engine.build import build_engine
    from covidedge.runtime import load
    from covidedge.backends.available import available_backends
    from covidedge.formats.checkpoint import read_checkpoint

    from covidedge.spec import ModelSpec

    spec = ModelSpec.from_dict(read_checkpoint(case.checkpoint)["spec"])
    max_batch = max(args.batches)
    cuda = _cuda_available()
    eager_device = args.eager_device if args.eager_device != "auto" else ("cuda" if cuda else "cpu")
    variants = [eager_variant(case.checkpoint, spec, eager_device), ort_default_variant(graphs["fp32"], spec)]
    for n in args.eager_threads:
        variants.append(eager_variant(case.checkpoint, spec, eager_device, threads=n))

    threads = {"intra_op_threads": args.threads} if args.threads else {}
    for prec, graph in graphs.items():
        t = time.perf_counter()
        try:
            with _quiet_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                built = build_engine(graph, work / f"{case.key}.{prec}.ort.onnx", backend="onnxruntime",
                                     min_batch=1, opt_batch=1, max_batch=max_batch, progress=False)
        except CovidEdgeError as exc:  # stated in the results; the graph itself is timed instead
            notes.append(f"{case.title}: the ONNX Runtime {prec} engine was not built ({exc}); "
                         f"its {prec} ONNX graph was timed with covidedge's ONNX Runtime runner instead")
            log(f"{case.key}: ONNX Runtime {prec} engine NOT built: {exc}")
            variants.append(runner_variant(f"covidedge ORT (graph{', u8 act' if prec == 'int8-u8' else ''})",
                                           "covidedge", graph, load(graph, **threads)))
            continue
        label = "covidedge ORT" if prec != "int8-u8" else "covidedge ORT (u8 act, CPU only)"
        runner = load(built.engine_path, **threads)
        variants.append(runner_variant(label, "covidedge", built.engine_path, runner))
        log(f"{case.key}: ONNX Runtime {prec} engine built in {time.perf_counter() - t:.0f} s")

    trt = available_backends()["backends"]["tensorrt"]["available"]
    if trt:
        for prec in PRECISIONS:
            if prec not in graphs:
                continue
            t = time.perf_counter()
            try:
                built = build_engine(graphs[prec], work / f"{case.key}.{prec}.engine", backend="tensorrt",
                                     min_batch=1, opt_batch=1, max_batch=max_batch, progress=False)
            except CovidEdgeError as exc:
                notes.append(f"{case.title}: the TensorRT {prec} engine was not built: {exc}")
                log(f"{case.key}: TensorRT {prec} engine NOT built: {exc}")
                continue
            variants.append(runner_variant("covidedge TensorRT", "covidedge", built.engine_path,
                                           load(built.engine_path)))
            log(f"{case.key}: TensorRT {prec} engine built in {time.perf_counter() - t:.0f} s")
    elif cuda:
        from covidedge.backends.torch import TorchRunner

        variants.append(runner_variant("covidedge torch CUDA", "covidedge", case.checkpoint,
                                       TorchRunner(case.checkpoint, device="cuda", half=True)))
        notes.append("TensorRT is not installed: the GPU engine is torch CUDA fp16")
    ov = openvino_variant(graphs["fp32"], spec)
    if ov is not None:
        variants.append(ov)
        # covidedge's OpenVINO backend: the graph's own precision (f32 compute), fp32 and int8 Q/DQ
        for prec in ("fp32", "int8"):
            if prec in graphs:
                variants.append(runner_variant("covidedge OpenVINO", "covidedge", graphs[prec],
                                               load(graphs[prec], backend="openvino")))
    elif case.key == "classifier":
        notes.append("OpenVINO is not installed: no OpenVINO row (pip install openvino to add the peer)")
    return variants


# -- timing -------------------------------------------------------------------------------------
def measure(variants: List[Variant], batch: int, args) -> Dict[int, LatencyStats]:
    """Time every variant at ``batch`` in interleaved rounds; returns index -> stats.

    Each round gives each variant up to ceil(iterations / rounds) runs, stopping early once that
    variant has used max_seconds / rounds in the round (at least one run per round); the order of
    the variants is shuffled (seeded) in every round."""
    fns: Dict[int, Callable] = {}
    for i, v in enumerate(variants):
        if v.max_batch is not None and batch > v.max_batch:
            continue
        fns[i] = v.make(batch)
    for i, fn in fns.items():
        for _ in range(args.warmup):
            fn()
    per_round = max(1, math.ceil(args.iterations / args.rounds))
    budget = args.max_seconds / args.rounds
    samples: Dict[int, List[float]] = {i: [] for i in fns}
    stages: Dict[int, Dict[str, List[float]]] = {i: {} for i in fns}
    gc.collect()
    gc.disable()
    try:
        shuffle = np.random.default_rng(0)
        for _ in range(args.rounds):
            # a new (seeded) order each round, so no variant always runs right after the same one
            # (torch's OpenMP threads, for one, spin for a while after a call)
            for i in shuffle.permutation(list(fns)).tolist():
                fn = fns[i]
                start = time.perf_counter()
                for k in range(per_round):
                    t0 = time.perf_counter()
                    fn()
                    samples[i].append((time.perf_counter() - t0) * 1e3)
                    if variants[i].role == "covidedge":  # timed through its runner: device stages
                        for key, val in (variants[i].runner.last_timings_ms or {}).items():
                            if key != "total":
                                stages[i].setdefault(key, []).append(val)
                    if time.perf_counter() - start >= budget:
                        break
    finally:
        gc.enable()
    return {i: LatencyStats.from_samples(samples[i], batch, warmup=args.warmup, stages=stages[i])
            for i in fns}


def evaluate_variants(case: ModelCase, variants: List[Variant], args) -> Dict[int, Dict[str, Any]]:
    """Accuracy / Dice per variant on --data (only for trained checkpoints)."""
    from covidedge.bench import metric_from_evaluation
    from covidedge.evaluation import evaluate

    out = {}
    for i, v in enumerate(variants):
        if v.runner is None:
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
            "| vs eager | vs ORT default |")
    lines = [head, "|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        metric = "-" if r["metric"] is None else f"{r['metric']['name']} {r['metric']['value']:.3f}"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['runtime']} | {r['precision']} | {_fmt(r['size_mb'], 1)} "
            f"| {metric} | {_fmt(r['ms_per_image'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
            f"| {_fmt(r['fps'], 1)} | {_fmt_ratio(r['vs_eager'])} | {_fmt_ratio(r['vs_ort_default'])} |")
    return "\n".join(lines)


def check_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The fastest covidedge engine at batch 1 per model against TARGETS."""
    results = []
    for key, wanted in TARGETS.items():
        cands = [r for r in rows if r["task"] == key and r["batch"] == 1 and r["role"] == "covidedge"]
        if not cands:
            continue
        best = min(cands, key=lambda r: r["ms_per_image"])
        for what, target in wanted.items():
            got = best[what]
            results.append({"task": key, "model": best["model"], "best": f"{best['runtime']} {best['precision']}",
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
    p.add_argument("--classifier-ckpt", type=Path, help="trained classifier checkpoint (default: fresh Xception)")
    p.add_argument("--segmenter-ckpt", type=Path, help="trained segmenter checkpoint (default: fresh ResUNet)")
    p.add_argument("--models", default="classifier,segmenter", help="which of classifier,segmenter to run")
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
    p.add_argument("--image-size", type=int, default=256, help="input size in px (default 256)")
    p.add_argument("--width-mult", type=float, default=1.0, help="Xception width for a fresh model (default 1.0)")
    p.add_argument("--base-width", type=int, default=32, help="ResUNet base width for a fresh model (default 32)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    p.add_argument("--work", type=Path, default=None, help="folder for exported graphs and engines (default: temporary)")
    args = p.parse_args(argv)
    args.batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.precisions = [m.strip() for m in args.precisions.split(",") if m.strip()]
    args.eager_threads = [int(t) for t in args.eager_threads.split(",") if t.strip()]
    bad = set(args.models) - {"classifier", "segmenter"} or set(args.precisions) - set(PRECISIONS)
    if bad or not args.batches or min(args.batches) < 1 or args.iterations < 1 or args.rounds < 1:
        p.error(f"bad --models / --precisions / --batches / --iterations / --rounds ({sorted(bad)})")
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")
    if "int8" not in args.precisions:
        args.int8_activations = False
    return args


def collect_rows(case: ModelCase, variants: List[Variant], batch: int, stats: Dict[int, LatencyStats],
                 metrics: Dict[int, Dict[str, Any]], report: BenchReport) -> List[Dict[str, Any]]:
    """Table rows of one model at one batch (with the ratios), also added to ``report``."""
    def ms_of(role):
        return next((stats[i].ms_per_image for i, v in enumerate(variants) if v.role == role and i in stats), None)

    eager, ort_default = ms_of("baseline"), ms_of("reference")
    rows = []
    for i, v in enumerate(variants):
        if i not in stats:
            report.skip(f"{case.title}: {v.name}", batch, f"batch above the engine's max {v.max_batch}")
            continue
        st = stats[i]
        metric = metrics.get(i) if metrics.get(i, {}).get("value") is not None else None
        row = BenchRow(model=case.title, backend=v.label, precision=v.precision, batch=batch, latency=st,
                       task=case.key, path=str(v.path), size_mb=file_size_mb(v.path),
                       settings=_jsonable(v.settings), note=v.note or None)
        if metric:
            row.metric_name, row.metric_value = metric["name"], metric["value"]
        report.add(row)
        rows.append({"model": case.title, "task": case.key, "batch": batch, "runtime": v.label, "path": str(v.path),
                     "backend": v.backend, "role": v.role, "precision": v.precision,
                     "size_mb": row.size_mb, "metric": metric, "ms_per_image": st.ms_per_image,
                     "p50_ms": st.median_ms, "p99_ms": st.p99_ms, "fps": st.throughput, "n": st.n,
                     "cv": st.cv, "unstable": st.unstable, "vs_eager": ratio(eager, st.ms_per_image),
                     "vs_ort_default": ratio(ort_default, st.ms_per_image)})
    return rows


def run_case(key: str, work: Path, calib, args, report: BenchReport, notes: List[str]) -> List[Dict[str, Any]]:
    """Prepare one model's graphs and engines, score them (--data), time them at every batch."""
    case = make_checkpoint(key, work, args)
    if not case.trained:
        notes.append(f"{case.title}: freshly initialised weights (latency does not depend on "
                     "training; the metric needs --data and trained checkpoints)")
    graphs = prepare_graphs(case, work, calib, args)
    variants = build_variants(case, graphs, work, args, notes)
    rows: List[Dict[str, Any]] = []
    try:
        metrics = evaluate_variants(case, variants, args) if (args.data and case.trained) else {}
        for batch in args.batches:
            t = time.perf_counter()
            stats = measure(variants, batch, args)
            log(f"{case.key}: batch {batch} timed in {time.perf_counter() - t:.0f} s")
            rows += collect_rows(case, variants, batch, stats, metrics, report)
    finally:
        for v in variants:
            with contextlib.suppress(Exception):
                v.close()
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
               "| task | engine | measure | target | measured | met |", "|---|---|---|---:|---:|---|"]
        md += [f"| {t['task']} | {t['best']} | {t['measure']} | {t['target']:g}x | {_fmt_ratio(t['measured'])} "
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
        "batches": args.batches, "iterations": args.iterations, "rounds": args.rounds,
        "max_seconds": args.max_seconds, "warmup": args.warmup, "threads": args.threads,
        "calib_method": args.calib_method, "calib_count": args.calib_count,
        "data": None if args.data is None else str(args.data), "split": args.split,
        "limit_per_class": args.limit_per_class})
    rows: List[Dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidedge-compare-")))
        work.mkdir(parents=True, exist_ok=True)
        calib = calibration_set(args, work) if "int8" in args.precisions else None
        for key in args.models:
            rows += run_case(key, work, calib, args, report, notes)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    seconds = time.perf_counter() - t_start
    targets = check_targets(rows)
    study = int8_activation_study(rows, machine) if args.int8_activations else None
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
        print(f"target {t['task']} {t['measure']} >= {t['target']:g}x: {_fmt_ratio(t['measured'])} "
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
