"""Pick the backend for a model file: engine + manifest, ONNX graph or training checkpoint.

- An engine (any file with ``<file>.manifest.json`` beside it, or a .engine / .plan / .trt file)
  is checked against this machine through its manifest first, then runs on the backend the
  manifest names: TensorRT (TrtRunner) or ONNX Runtime (OrtRunner, for artifacts built where
  TensorRT was absent).
- A .onnx graph runs on ONNX Runtime; ``backend="tensorrt"`` runs it through ONNX Runtime's
  TensorRT execution provider where that provider exists.
- A checkpoint (.pt / .pth) runs on torch.

``backend=`` overrides where the file allows it and is refused where it does not. Options that
the chosen runner does not take are refused by name, never dropped. Which runner opens what,
and what each refuses, is each backend's row of the table in covidedge.backends; nothing here
branches on a backend's name. Nothing here imports torch, TensorRT or pycuda; the runners do,
on activation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

from covidedge import backends
from covidedge.errors import BadInputError
from covidedge.spec import AUTO, RUNNER_BACKEND_CHOICES, check_choice
from covidedge.backends.base import Runner
from covidedge.formats.checkpoint import CHECKPOINT_SUFFIXES

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)

_ZIP_MAGIC = b"PK\x03\x04"


def models_here(build_dir: str = "build") -> str:
    """What exists instead of a missing model file, for its error: the engines recorded for this
    machine and those in ``build_dir`` (files with a manifest), the shipped models, and the
    command that builds engines. Never raises: it only helps an error say more."""
    from covidedge.formats.manifest import MANIFEST_SUFFIX

    engines: List[str] = []
    try:
        from covidedge.runtime.defaults import engines_home, read_record, shown

        for e in read_record(engines_home())["engines"]:
            if Path(e.get("engine", "")).is_file():
                engines.append(shown(e["engine"]))
        if os.path.isdir(build_dir):
            for m in sorted(Path(build_dir).glob("*" + MANIFEST_SUFFIX)):
                engine = str(m)[: -len(MANIFEST_SUFFIX)]
                if os.path.isfile(engine):
                    engines.append(shown(engine))
    except (OSError, ValueError):
        pass
    try:
        from covidedge.pretrained import shipped_models

        shipped = [m.name for m in shipped_models()]
    except Exception:  # an unreadable index has its own error where it is used
        shipped = []
    engines = list(dict.fromkeys(engines))
    parts = [f"engines here: {', '.join(engines[:8])}{' ...' if len(engines) > 8 else ''}" if engines
             else "no engine is built here"]
    if shipped:
        parts.append(f"shipped models: {', '.join(shipped)} (run when no model is given)")
    parts.append("'covidedge build-engine' builds this machine's engines from them, "
                 "'covidedge build-engine MODEL --out FILE' one from a checkpoint or ONNX graph")
    return "; ".join(parts)


def classify(path) -> str:
    """'engine', 'onnx' or 'checkpoint' for a model file; BadInputError for anything else."""
    from covidedge.formats.manifest import MANIFEST_SUFFIX, manifest_path_for

    p = Path(os.fspath(path))
    if p.name.endswith(MANIFEST_SUFFIX):
        return "engine"
    if not p.exists():
        raise BadInputError("model file not found", path=p, hint=models_here())
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


def _note(verbose: bool, runner: Runner) -> None:
    if verbose:
        d = runner.describe()
        dev = d.get("device") or ""
        print(f"covidedge: {runner.source} runs on {d['backend']} {d.get('version', '')} "
              f"({d['compute_precision']}{', ' + str(dev) if dev else ''})".replace("  ", " "), file=sys.stderr)


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


def backend_of(path, backend: str = AUTO) -> str:
    """The backend :func:`load` uses for ``path`` with ``backend`` (read from the manifest for an
    engine, without verifying the engine file)."""
    if backend != AUTO:
        return backend
    kind = classify(path)
    if kind == "engine":
        from covidedge.formats.manifest import read_manifest

        return read_manifest(path, verify=False).backend
    return backends.ONNX_RUNNER if kind == "onnx" else backends.CHECKPOINT_RUNNER


def _load_engine(p: Path, backend: str, options) -> Runner:
    from covidedge.formats.manifest import MANIFEST_SUFFIX, check_embedded_spec, engine_path_for, read_manifest

    if p.name.endswith(MANIFEST_SUFFIX):
        p = engine_path_for(p)
    manifest = read_manifest(p)  # reads it and verifies size + sha256 first
    row = backends.get(manifest.backend)
    if row.embeds_spec:  # ONNX artifacts carry their own spec: it must agree
        from covidedge.formats.onnxfile import read_metadata_props
        from covidedge.spec import METADATA_KEY, ModelSpec

        meta = read_metadata_props(p)
        check_embedded_spec(manifest, ModelSpec.from_json(meta[METADATA_KEY]).to_dict()
                            if METADATA_KEY in meta else None, p)
    if backend not in (AUTO, row.name):
        row.refuse_engine(p, manifest, backend)
    row.require_compatible(manifest, p)  # now compare with this machine
    return row.open_engine(p, manifest, backend, dict(options))


def _load_onnx(p: Path, backend: str, options) -> Runner:
    return backends.get(backends.ONNX_RUNNER if backend == AUTO else backend).open_onnx(p, dict(options))


def _load_checkpoint(p: Path, backend: str, options) -> Runner:
    return backends.get(backends.CHECKPOINT_RUNNER if backend == AUTO else backend).open_checkpoint(p, dict(options))


__all__ = ["load", "classify", "backend_of"]
