"""Pick the backend for a model file: engine + manifest, ONNX graph or training checkpoint.

- An engine (any file with ``<file>.manifest.json`` beside it, or a .engine / .plan / .trt file)
  is checked against this machine through its manifest first, then runs on the backend the
  manifest names: TensorRT (TrtRunner) or ONNX Runtime (OrtRunner, for artifacts built where
  TensorRT was absent).
- A .onnx graph runs on ONNX Runtime; ``backend="tensorrt"`` runs it through ONNX Runtime's
  TensorRT execution provider where that provider exists.
- A checkpoint (.pt / .pth) runs on torch.

``backend=`` overrides where the file allows it and is refused where it does not. Options that
the chosen runner does not take are refused by name, never dropped. Nothing here imports torch,
TensorRT or pycuda; the runners do, on activation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict

from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError, UsageError
from covidedge.spec import RUNNER_BACKEND_CHOICES, check_choice
from covidedge.backends.base import Runner
from covidedge.formats.checkpoint import CHECKPOINT_SUFFIXES

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)

#: Options each runner takes (beyond the path); anything else is refused by name.
ORT_OPTIONS = ("providers", "intra_op_threads", "inter_op_threads", "graph_optimization_level",
               "min_batch", "max_batch", "spec", "precision")
TRT_OPTIONS = ("device",)
TORCH_OPTIONS = ("device", "half")
OPENVINO_OPTIONS = ("device", "threads", "performance_hint", "inference_precision")

_ZIP_MAGIC = b"PK\x03\x04"


def classify(path) -> str:
    """'engine', 'onnx' or 'checkpoint' for a model file; BadInputError for anything else."""
    from covidedge.formats.manifest import MANIFEST_SUFFIX, manifest_path_for

    p = Path(os.fspath(path))
    if p.name.endswith(MANIFEST_SUFFIX):
        return "engine"
    if not p.exists():
        raise BadInputError("model file not found", path=p)
    if p.is_dir():
        raise BadInputError("is a folder, expected a model file (.engine, .onnx or .pt)", path=p)
    if manifest_path_for(p).is_file():
        return "engine"
    suffix = p.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BadInputError(f"cannot read the file ({exc})", path=p) from exc
    kind = "a torch checkpoint (zip) with an unexpected suffix" if head == _ZIP_MAGIC else "not a model file covidedge knows"
    raise BadInputError(f"{kind}", path=p,
                        hint="pass an engine with its manifest (.engine), an ONNX graph (.onnx) or a checkpoint (.pt)")


def _take(options: Dict[str, Any], allowed, what: str, source) -> Dict[str, Any]:
    extra = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if extra:
        raise BadInputError(f"option{'s' if len(extra) > 1 else ''} {', '.join(extra)} do"
                            f"{'' if len(extra) > 1 else 'es'} not apply to {what}", path=source,
                            hint=f"{what} takes: {', '.join(allowed) or 'no options'}")
    return {k: v for k, v in options.items() if k in allowed and v is not None}


def _ort_device_providers(opts: Dict[str, Any], source) -> Dict[str, Any]:
    """ONNX Runtime takes ``device`` as 'cpu' / 'auto' (the CPU) or 'cuda' (CUDA provider)."""
    device = opts.pop("device", None)
    if device in (None, "auto", "cpu"):
        return opts
    if str(device).startswith("cuda"):
        if not opts.get("providers"):
            opts["providers"] = ["CUDAExecutionProvider"]
        return opts
    raise UsageError(f"device {device!r} does not apply to ONNX Runtime", path=source,
                     hint="use device 'cpu' or 'cuda'")


def _ort_runner(path, opts, source, **fixed):
    from covidedge.backends.onnxruntime import OrtRunner

    opts = _ort_device_providers(dict(opts), source)
    kw = _take(opts, ORT_OPTIONS, "the ONNX Runtime backend", source)
    kw.update(fixed)
    return OrtRunner(path, **kw)


def _note(verbose: bool, runner: Runner) -> None:
    if verbose:
        d = runner.describe()
        dev = d.get("device") or ""
        print(f"covidedge: {runner.source} runs on {d['backend']} {d.get('version', '')} "
              f"({d['precision']}{', ' + str(dev) if dev else ''})".replace("  ", " "), file=sys.stderr)


def load(path, backend: str = "auto", verbose: bool = False, **options) -> Runner:
    """Open ``path`` with the right backend and return an (inactive) Runner.

    ``backend``: auto | tensorrt | onnxruntime | openvino | torch. ``options`` go to the runner
    (ONNX Runtime: providers, intra_op_threads, inter_op_threads, graph_optimization_level,
    min_batch, max_batch, device 'cpu'/'cuda'; TensorRT: device; OpenVINO (ONNX graphs only):
    device, threads, performance_hint, inference_precision; torch: device, half).
    ``verbose=True`` writes one line on stderr saying which backend was picked; the runner's
    ``describe()`` says the same."""
    check_choice("backend", backend, RUNNER_BACKEND_CHOICES)
    kind = classify(path)
    p = Path(os.fspath(path))
    if kind == "engine":
        runner = _load_engine(p, backend, options)
    elif kind == "onnx":
        runner = _load_onnx(p, backend, options)
    else:
        runner = _load_checkpoint(p, backend, options)
    _note(verbose, runner)
    return runner


def _load_engine(p: Path, backend: str, options) -> Runner:
    from covidedge.formats.manifest import (MANIFEST_SUFFIX, engine_path_for, load_manifest, rebuild_command,
                                           require_compatible)

    if p.name.endswith(MANIFEST_SUFFIX):
        p = engine_path_for(p)
    manifest = load_manifest(p, check=False)  # reads it and verifies size + sha256 first
    if manifest.backend != "tensorrt":  # ONNX artifacts carry their own spec: it must agree
        from covidedge.formats.manifest import check_embedded_spec
        from covidedge.formats.onnxfile import read_metadata_props
        from covidedge.spec import METADATA_KEY, ModelSpec

        meta = read_metadata_props(p)
        check_embedded_spec(manifest, ModelSpec.from_json(meta[METADATA_KEY]).to_dict()
                            if METADATA_KEY in meta else None, p)
    if manifest.backend == "tensorrt":
        if backend not in ("auto", "tensorrt"):
            onnx = (manifest.build_options or {}).get("onnx")
            raise IncompatibleModelError(
                f"is a TensorRT engine; it runs on TensorRT only, not {backend}", path=p,
                hint=f"load its ONNX graph with --backend {backend}" + (f": {onnx}" if onnx else ""))
        require_compatible(manifest, p)  # now compare with this machine
        from covidedge.backends.tensorrt.runner import TrtRunner

        kw = _take(dict(options), TRT_OPTIONS, "the TensorRT backend", p)
        return TrtRunner(p, manifest=manifest, **kw)
    if manifest.backend == "openvino":
        if backend not in ("auto", "openvino"):
            raise IncompatibleModelError(
                f"is an OpenVINO engine (the precision graph), not for {backend}", path=p,
                hint=f"load it with --backend openvino, or build for {backend} with covidedge build-engine")
        require_compatible(manifest, p)
        from covidedge.backends.openvino import OpenVinoRunner

        kw = _take(dict(options), OPENVINO_OPTIONS, "the OpenVINO backend", p)
        return OpenVinoRunner(p, spec=manifest.model_spec, precision=manifest.precision,
                              min_batch=manifest.min_batch, max_batch=manifest.max_batch, **kw)
    # an ONNX Runtime artifact (built where TensorRT was absent)
    if backend not in ("auto", "onnxruntime"):
        cmd = rebuild_command(manifest, p.with_suffix(".engine")).replace(
            "--backend onnxruntime", "--backend tensorrt")
        raise IncompatibleModelError(
            f"was built for ONNX Runtime (TensorRT was absent at build time), not {backend}", path=p,
            hint=f"build a TensorRT engine with: {cmd}" if backend == "tensorrt" else
            f"load its source ONNX graph with --backend openvino: {(manifest.build_options or {}).get('onnx')}"
            if backend == "openvino" else "load its checkpoint to run on torch")
    require_compatible(manifest, p)
    opts = dict(options)
    for k in ("min_batch", "max_batch", "spec", "precision"):
        if opts.get(k) is not None:
            raise BadInputError(f"option {k} is fixed by the engine's manifest", path=p,
                                hint="rebuild the engine to change it")
        opts.pop(k, None)
    return _ort_runner(p, opts, p, spec=manifest.model_spec, precision=manifest.precision,
                       min_batch=manifest.min_batch, max_batch=manifest.max_batch)


def _load_onnx(p: Path, backend: str, options) -> Runner:
    if backend == "openvino":
        from covidedge.backends.openvino import OpenVinoRunner

        kw = _take(dict(options), OPENVINO_OPTIONS, "the OpenVINO backend", p)
        return OpenVinoRunner(p, **kw)
    if backend == "torch":
        raise IncompatibleModelError("is an ONNX graph; torch runs checkpoints only", path=p,
                                     hint="load the .pt checkpoint for torch, or use --backend onnxruntime")
    opts = dict(options)
    if backend == "tensorrt":
        # ONNX on TensorRT without an engine: ONNX Runtime's TensorRT execution provider.
        import onnxruntime

        if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
            raise MissingDependencyError(
                "ONNX Runtime here has no TensorRT execution provider to run this ONNX graph on TensorRT",
                path=p, hint="build an engine with 'covidedge build-engine', or use --backend onnxruntime")
        if opts.get("providers"):
            raise BadInputError("providers cannot be combined with backend 'tensorrt'", path=p)
        if opts.get("device") not in (None, "auto") and not str(opts.get("device")).startswith("cuda"):
            raise UsageError(f"device {opts['device']!r} does not apply to TensorRT", path=p)
        opts.pop("device", None)
        opts["providers"] = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    return _ort_runner(p, opts, p)


def _load_checkpoint(p: Path, backend: str, options) -> Runner:
    if backend not in ("auto", "torch"):
        raise IncompatibleModelError(
            f"is a training checkpoint; it runs on torch, not {backend}", path=p,
            hint=f"build an engine first: covidedge build-engine {p}"
                 + (" --backend onnxruntime" if backend == "onnxruntime" else ""))
    from covidedge.backends.torch import TorchRunner

    kw = _take(dict(options), TORCH_OPTIONS, "the torch backend", p)
    return TorchRunner(p, **kw)


__all__ = ["load", "classify"]
