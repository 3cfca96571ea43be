"""The default engines: covidedge's shipped models built for this machine, and finding them again.

``covidedge build-engine`` with no MODEL calls :func:`build_default_engines`: for each shipped
model (covidedge.pretrained) it builds, into ``build/``,

* where TensorRT is present: an fp16 plan and an int8 plan (signed symmetric Q/DQ from the
  shipped calibration cache);
* elsewhere: one ONNX Runtime engine in the precision the model card names for CPUs (int8 with
  unsigned activations where that is within a point of the checkpoint on Val, else fp32).

Each engine gets its manifest, and ``build/defaults.json`` records which shipped model (by its
fp32 sha256) and precision each engine came from. A second call with nothing changed reuses
the engines; a newer shipped model, another machine or a changed engine file rebuilds them.

``covidedge infer`` and ``covidedge bench`` with no model call :func:`default_models`: the
engines that :func:`find_default_engines` accepts for this machine, else the shipped fp32
graphs on ONNX Runtime, with one line saying which.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from covidedge.engine.build import say
from covidedge.engine.paths import DEFAULT_BUILD_DIR
from covidedge.errors import BadInputError, CovidEdgeError, MissingDependencyError, UsageError

RECORD_FILE = "defaults.json"
RECORD_FORMAT = "covidedge-default-engines/1"


@dataclass
class DefaultEngine:
    """One default engine: which shipped model, how it was built, where it is."""

    model: str
    task: str
    precision: str
    flavour: str  # "fp32", "fp16", "int8-s8" (TensorRT form) or "int8-u8" (ONNX Runtime CPU form)
    backend: str
    engine: Path
    manifest: Path
    fp32_sha256: str
    status: str = "built"  # "built" or "reused"

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "task": self.task, "precision": self.precision,
                "flavour": self.flavour, "backend": self.backend, "engine": str(self.engine),
                "manifest": str(self.manifest), "fp32_sha256": self.fp32_sha256,
                "status": self.status}


def _shipped_or_fail():
    from covidedge.pretrained import shipped_models

    models = shipped_models()
    if not models:
        raise BadInputError("this covidedge install ships no trained model",
                            hint="pass a model file (train one with 'covidedge train', or "
                                 "reinstall covidedge from its repository)")
    return models


def plan_default_engines(tensorrt: bool) -> List[Tuple[Any, str]]:
    """(shipped model, flavour) pairs to build: fp16 and int8 plans with TensorRT, else the
    card's CPU precision on ONNX Runtime."""
    plan = []
    for m in _shipped_or_fail():
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


def _read_record(build_dir: Path) -> Dict[str, Any]:
    path = build_dir / RECORD_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"format": RECORD_FORMAT, "engines": []}
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT or not isinstance(doc.get("engines"), list):
        return {"format": RECORD_FORMAT, "engines": []}
    return doc


def _usable(entry: Dict[str, Any], machine: Optional[Dict[str, Any]]) -> Optional[str]:
    """None when the recorded engine may run here unchanged, else why not."""
    from covidedge.backends import load_manifest

    engine = Path(entry.get("engine", ""))
    if not engine.is_file():
        return f"{engine} is missing"
    try:
        load_manifest(engine, machine, check=True, verify=True)
    except CovidEdgeError as exc:
        return str(exc).splitlines()[0]
    return None


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


def build_default_engines(build_dir=DEFAULT_BUILD_DIR, *, rebuild: bool = False, progress: bool = True,
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
    from covidedge.fileio import write_atomic

    build_dir = Path(os.fspath(build_dir))
    row = _backend_here()
    trt = "gpu" in row.targets  # GPU engines: fp16 and int8 plans; else the card's CPU precision
    backend = row.name
    machine = probe_machine(use_backends=row.probe_backends)
    record = _read_record(build_dir)
    kept = {(e.get("model"), e.get("flavour"), e.get("backend")): e for e in record["engines"]}
    out: List[DefaultEngine] = []
    for model, flavour in plan_default_engines(trt):
        precision = flavour.split("-")[0]
        suffix = f"{precision}.trt.engine" if trt else (f"{flavour}.ort.onnx")
        engine = build_dir / f"{model.name}.{suffix}"
        prev = kept.get((model.name, flavour, backend))
        if (not rebuild and prev and prev.get("fp32_sha256") == model.fp32_sha256
                and Path(prev.get("engine", "")) == engine and _usable(prev, machine) is None):
            say(progress, f"reusing {engine} ({model.name}, {flavour}): unchanged since it was built")
            out.append(DefaultEngine(model.name, model.task, precision, flavour, backend, engine,
                                     manifest_path_for(engine), model.fp32_sha256, status="reused"))
            continue
        graph = _graph_for(model, flavour, build_dir, progress)
        say(progress, f"building {engine} ({model.name}, {flavour}, {backend})")
        res = build_engine(graph, engine, backend=backend, progress=progress)
        out.append(DefaultEngine(model.name, model.task, precision, flavour, res.backend,
                                 Path(res.engine_path), Path(res.manifest_path), model.fp32_sha256))
        entries = [e for e in record["engines"]
                   if (e.get("model"), e.get("flavour"), e.get("backend")) != (model.name, flavour, backend)]
        record["engines"] = entries + [out[-1].to_dict()]
        write_atomic(build_dir / RECORD_FILE, (json.dumps(record, indent=1) + "\n").encode())
    return out


def find_default_engines(build_dir=DEFAULT_BUILD_DIR, machine: Optional[Dict[str, Any]] = None
                         ) -> Dict[str, DefaultEngine]:
    """Default engines in ``build_dir`` that were built from the shipped models of this install
    and may run on this machine, one per task (TensorRT int8 before fp16; ONNX Runtime otherwise)."""
    from covidedge.formats.manifest import manifest_path_for
    from covidedge.pretrained import shipped_models

    build_dir = Path(os.fspath(build_dir))
    record = _read_record(build_dir)
    if machine is None and record["engines"]:  # probed once for every recorded engine
        from covidedge.machine import probe_machine

        from covidedge import backends

        machine = probe_machine(use_backends=any(backends.get(e["backend"]).probe_backends
                                                 for e in record["engines"] if e.get("backend") in backends.TABLE))
    current = {m.name: m for m in shipped_models()}
    found: Dict[str, DefaultEngine] = {}
    order = {"int8-s8": 0, "int8-u8": 1, "fp16": 2, "fp32": 3}
    for e in sorted(record["engines"], key=lambda e: order.get(e.get("flavour"), 9)):
        m = current.get(e.get("model"))
        if m is None or e.get("fp32_sha256") != m.fp32_sha256 or m.task in found:
            continue
        if _usable(e, machine) is not None:
            continue
        engine = Path(e["engine"])
        found[m.task] = DefaultEngine(m.name, m.task, e["precision"], e["flavour"], e["backend"],
                                      engine, manifest_path_for(engine), m.fp32_sha256, status="reused")
    return found


@dataclass
class DefaultModels:
    """What ``infer`` / ``bench`` run when given no model: a path per task and one line saying why."""

    classifier: Optional[Path]
    segmenter: Optional[Path]
    line: str
    source: str  # "engines" or "shipped"

    def paths(self) -> List[Path]:
        return [p for p in (self.classifier, self.segmenter) if p is not None]


def default_models(build_dir=DEFAULT_BUILD_DIR) -> DefaultModels:
    """The engines in ``build_dir`` built from the shipped models for this machine, else the
    shipped models' fp32 graphs (restored into the cache folder) on ONNX Runtime."""
    engines = find_default_engines(build_dir)
    if engines:
        cls, seg = engines.get("classifier"), engines.get("segmenter")
        what = ", ".join(f"{e.engine} ({e.backend} {e.flavour})" for e in engines.values())
        return DefaultModels(cls.engine if cls else None, seg.engine if seg else None,
                             f"models: the default engines in {build_dir}/ - {what}", "engines")
    from covidedge.pretrained import default_model

    _shipped_or_fail()
    cls, seg = default_model("classifier"), default_model("segmenter")
    names = ", ".join(m.name for m in (cls, seg) if m is not None)
    return DefaultModels(cls.fp32_onnx() if cls else None, seg.fp32_onnx() if seg else None,
                         f"models: the shipped {names} (fp32, ONNX Runtime); 'covidedge build-engine' "
                         f"builds faster engines for this machine into {build_dir}/", "shipped")


__all__ = ["DefaultEngine", "DefaultModels", "plan_default_engines", "build_default_engines",
           "find_default_engines", "default_models", "RECORD_FILE"]
