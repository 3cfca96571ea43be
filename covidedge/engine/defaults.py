"""The default engines: covidedge's shipped models built for this machine.

``covidedge build-engine`` with no MODEL calls :func:`build_default_engines`: for each shipped
model (covidedge.pretrained) it builds, into ``build/`` (or the folder given),

* where the preferred backend (TensorRT) is present: an fp16 plan and an int8 plan (signed
  symmetric Q/DQ from the shipped calibration cache);
* elsewhere: one ONNX Runtime engine in the precision the model card names for CPUs (int8 with
  unsigned activations where that is within a point of the checkpoint on Val, else fp32).

Each engine gets its manifest; ``defaults.json`` in that folder and in this machine's engine
record (covidedge.runtime.defaults.engines_home) records which shipped model (by its fp32
sha256) and precision each engine came from. A second call with nothing changed reuses the
engines; a newer shipped model, another machine or a changed engine file rebuilds them.

Finding them again is the runtime's: :func:`covidedge.runtime.defaults.default_models`
(re-exported here with the other names that moved there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from covidedge.engine.build import say
from covidedge.engine.paths import DEFAULT_BUILD_DIR
from covidedge.errors import MissingDependencyError, UsageError
from covidedge.runtime.defaults import (RECORD_FILE, RECORD_FORMAT, DefaultEngine, DefaultModels, default_models,
                                        engines_home, find_default_engines, read_record, record_key,
                                        shipped_or_fail, usable)


def plan_default_engines(tensorrt: bool) -> List[Tuple[Any, str]]:
    """(shipped model, flavour) pairs to build: fp16 and int8 plans with TensorRT, else the
    card's CPU precision on ONNX Runtime."""
    plan = []
    for m in shipped_or_fail():
        if tensorrt:
            plan += [(m, "fp16"), (m, "int8-s8")]
        else:
            prec = m.summary.get("cpu_engine_precision", "fp32")
            plan.append((m, "int8-u8" if prec == "int8" else "fp32"))
    return plan


def _backend_here():
    """The backend the default engines are built for here: what build-engine's "auto" picks."""
    from covidedge import backends

    return backends.resolve("auto")


def _write_record(folder: Path, record: Dict[str, Any]) -> None:
    from covidedge.fileio import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / RECORD_FILE, (json.dumps(record, indent=1) + "\n").encode())


def _register(entry: DefaultEngine) -> None:
    """Put ``entry`` (absolute paths) in this machine's engine record, replacing the entry of the
    same model, flavour and backend: the record the runtime reads from any working directory."""
    home = engines_home()
    record = read_record(home)
    d = dict(entry.to_dict(), engine=str(Path(entry.engine).resolve()), manifest=str(Path(entry.manifest).resolve()))
    record["engines"] = [e for e in record["engines"] if record_key(e) != record_key(d)] + [d]
    _write_record(home, record)


def _graph_for(model, flavour: str, build_dir: Path, progress: bool) -> Path:
    """The precision-bearing ONNX graph of a shipped model for ``flavour``, in ``build_dir``."""
    from covidedge.export.fp16 import convert_fp16
    from covidedge.export.int8 import quantize_int8

    fp32 = model.fp32_onnx()
    if flavour == "fp32":
        return fp32
    dst = build_dir / f"{model.name}.{flavour}.onnx"
    say(progress, f"making the {flavour} graph of {model.name}: {dst}")
    if flavour == "fp16":
        return convert_fp16(fp32, dst)
    cache = model.calibration_cache_path
    if cache is None or not cache.is_file():
        raise MissingDependencyError(f"shipped model {model.name} has no calibration cache", path=cache,
                                     hint="reinstall covidedge, or build int8 from a checkpoint with --calib-data")
    if flavour == "int8-s8":
        return quantize_int8(fp32, dst, None, ranges=cache, activation_type="int8",
                             symmetric_activations=True, qdq_placement="tensorrt")
    return quantize_int8(fp32, dst, None, ranges=cache, activation_type="uint8", symmetric_activations=False)


def build_default_engines(build_dir=DEFAULT_BUILD_DIR, *, rebuild: bool = False, progress: bool = False,
                          build_options: Optional[Dict[str, Any]] = None) -> List[DefaultEngine]:
    """Build (or reuse) the default engines for this machine into ``build_dir``.

    The default engines are built as their model cards say, so ``build_options`` (options of a
    MODEL build, keyed by the name the caller knows them by: ``precision`` or ``--precision``) are
    refused, never ignored: any given one is a UsageError."""
    given = sorted(k for k, v in (build_options or {}).items() if v is not None)
    if given:
        raise UsageError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to a MODEL build; the "
                         "default engines are built as their model cards say",
                         hint="pass MODEL, e.g. a checkpoint, to choose")
    from covidedge import backends
    from covidedge.engine.build import build_engine
    from covidedge.machine import probe_machine
    from covidedge.formats.manifest import manifest_path_for

    build_dir = Path(os.fspath(build_dir))
    row = _backend_here()
    trt = "gpu" in row.targets  # GPU engines: fp16 and int8 plans; else the card's CPU precision
    backend = row.name
    machine = probe_machine(use_backends=row.probe_backends)
    record = read_record(build_dir)
    kept = {record_key(e): e for e in record["engines"]}
    out: List[DefaultEngine] = []
    for model, flavour in plan_default_engines(trt):
        precision = flavour.split("-")[0]
        engine = build_dir / row.engine_name(model.name, precision if trt else flavour)
        prev = kept.get((model.name, flavour, backend))
        if (not rebuild and prev and prev.get("fp32_sha256") == model.fp32_sha256
                and Path(prev.get("engine", "")) == engine and usable(prev, machine) is None):
            say(progress, f"reusing {engine} ({model.name}, {flavour}): unchanged since it was built")
            out.append(DefaultEngine(model.name, model.task, precision, flavour, backend, engine,
                                     manifest_path_for(engine), model.fp32_sha256, status="reused"))
            _register(out[-1])
            continue
        graph = _graph_for(model, flavour, build_dir, progress)
        say(progress, f"building {engine} ({model.name}, {flavour}, {backend})")
        res = build_engine(graph, engine, backend=backend, progress=progress)
        out.append(DefaultEngine(model.name, model.task, precision, flavour, res.backend,
                                 Path(res.engine_path), Path(res.manifest_path), model.fp32_sha256))
        record["engines"] = [e for e in record["engines"]
                             if record_key(e) != (model.name, flavour, backend)] + [out[-1].to_dict()]
        _write_record(build_dir, record)
        _register(out[-1])
    return out


__all__ = ["DefaultEngine", "DefaultModels", "plan_default_engines", "build_default_engines",
           "find_default_engines", "default_models", "RECORD_FILE", "RECORD_FORMAT"]
