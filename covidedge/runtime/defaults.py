"""Which models run when none is given: the default engines for this machine, else the shipped
models' fp32 graphs on ONNX Runtime.

``covidedge build-engine`` with no MODEL builds the shipped models for this machine (see
covidedge.engine.defaults) into a folder (``build/`` unless told otherwise) and registers them
in this machine's engine record, ``defaults.json`` in :func:`engines_home` (``$COVIDEDGE_ENGINES``,
else ``engines/<machine>`` in covidedge's cache folder, beside the restored shipped graphs).
The record names each engine by its absolute path, with the shipped model (its fp32 sha256)
and the precision it came from, so the same call gives the same engines from any working
directory. :func:`default_models` is what ``Pipeline()``, ``run_inference``, ``covidedge infer``,
``bench`` and ``triton-repo`` use with no model; each engine file is hashed against its
manifest once per process (covidedge.formats.manifest remembers verified files).
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from covidedge.errors import BadInputError, CovidEdgeError

RECORD_FILE = "defaults.json"
RECORD_FORMAT = "covidedge-default-engines/1"
#: Environment variable naming the folder of this machine's engine record.
ENGINES_ENV = "COVIDEDGE_ENGINES"
#: Preference among the flavours of one model's engines (int8 first: it was kept only when faithful).
FLAVOUR_ORDER = {"int8-s8": 0, "int8-u8": 1, "fp16": 2, "fp32": 3}


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


def machine_key() -> str:
    """This machine's name in the engine folder: host name and architecture (engines are tied to
    a machine's GPU and runtime; a home folder shared by several machines keeps them apart)."""
    raw = f"{platform.node() or 'host'}-{platform.machine() or 'arch'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


def engines_home() -> Path:
    """The folder of this machine's engine record: ``$COVIDEDGE_ENGINES``, else
    ``engines/<machine_key()>`` in covidedge's cache folder ($COVIDEDGE_CACHE, else
    $XDG_CACHE_HOME/covidedge, else ~/.cache/covidedge)."""
    env = os.environ.get(ENGINES_ENV)
    if env:
        return Path(env)
    from covidedge.pretrained import cache_dir

    return cache_dir().parent / "engines" / machine_key()


def read_record(folder) -> Dict[str, Any]:
    """The engine record in ``folder`` (an empty one when missing or unreadable)."""
    path = Path(os.fspath(folder)) / RECORD_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"format": RECORD_FORMAT, "engines": []}
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT or not isinstance(doc.get("engines"), list):
        return {"format": RECORD_FORMAT, "engines": []}
    return doc


def record_key(entry: Dict[str, Any]):
    """What one record entry stands for: a shipped model in one flavour on one backend."""
    return entry.get("model"), entry.get("flavour"), entry.get("backend")


def usable(entry: Dict[str, Any], machine: Optional[Dict[str, Any]]) -> Optional[str]:
    """None when the recorded engine may run here unchanged, else why not."""
    from covidedge.backends import load_manifest

    engine = Path(entry.get("engine", ""))
    if not engine.is_file():
        return f"{engine} is missing"
    try:
        manifest = load_manifest(engine, machine, check=True, verify=True)
    except CovidEdgeError as exc:
        return str(exc).splitlines()[0]
    # the checks of loading, and what the record says the file is: a swapped file (the segmenter
    # where the classifier was recorded) passes its own manifest but is the wrong model
    task, have = entry.get("task"), (manifest.spec or {}).get("task")
    if task and have != task:
        return (f"{engine} is a {have} engine, but the record names it the {task} "
                f"({entry.get('model')}): the files were swapped or replaced")
    if entry.get("precision") and manifest.precision != entry["precision"]:
        return (f"{engine} is a {manifest.precision} engine, the record says {entry['precision']}: "
                "the files were swapped or replaced")
    return None


def shipped_or_fail():
    """The shipped models; BadInputError when this install ships none."""
    from covidedge.pretrained import shipped_models

    models = shipped_models()
    if not models:
        raise BadInputError("this covidedge install ships no trained model",
                            hint="pass a model file (train one with 'covidedge train', or "
                                 "reinstall covidedge from its repository)")
    return models


def find_default_engines(build_dir=None, machine: Optional[Dict[str, Any]] = None,
                         backend: Optional[str] = None) -> Dict[str, DefaultEngine]:
    """Default engines recorded in ``build_dir`` (default: this machine's record, see
    :func:`engines_home`) that were built from the shipped models of this install and may run on
    this machine, one per task: the one the autotuner chose (covidedge.engine.autotune), else
    int8 before fp16 before fp32. ``backend`` (other than "auto") keeps only its engines."""
    from covidedge.formats.manifest import manifest_path_for
    from covidedge.pretrained import shipped_models

    folder = Path(os.fspath(build_dir)) if build_dir is not None else engines_home()
    record = read_record(folder)
    if machine is None and record["engines"]:  # probed once for every recorded engine
        from covidedge import backends
        from covidedge.machine import probe_machine

        machine = probe_machine(use_backends=any(backends.get(e["backend"]).probe_backends
                                                 for e in record["engines"] if e.get("backend") in backends.TABLE))
    current = {m.name: m for m in shipped_models()}
    found: Dict[str, DefaultEngine] = {}
    for e in sorted(record["engines"], key=lambda e: (not e.get("chosen"), e.get("rank", 99), FLAVOUR_ORDER.get(e.get("flavour"), 9))):
        if backend not in (None, "auto") and e.get("backend") != backend:
            continue
        m = current.get(e.get("model"))
        if m is None or e.get("fp32_sha256") != m.fp32_sha256 or m.task in found:
            continue
        if usable(e, machine) is not None:
            continue
        engine = Path(e["engine"])
        found[m.task] = DefaultEngine(m.name, m.task, e["precision"], e["flavour"], e["backend"],
                                      engine, manifest_path_for(engine), m.fp32_sha256, status="reused")
    return found


@dataclass
class DefaultModels:
    """What runs when no model is given: a path per task and one line saying which."""

    classifier: Optional[Path]
    segmenter: Optional[Path]
    line: str
    source: str  # "engines" or "shipped"

    def paths(self) -> List[Path]:
        return [p for p in (self.classifier, self.segmenter) if p is not None]


def shown(path) -> str:
    """``path`` relative to the working directory when it is inside it, else absolute."""
    p = Path(os.fspath(path))
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def default_models(build_dir=None, backend: Optional[str] = None) -> DefaultModels:
    """The default engines for this machine (recorded in ``build_dir``, default this machine's
    record), else the shipped models' fp32 graphs (restored into the cache folder) on ONNX
    Runtime. ``backend`` (other than "auto": what ``--backend`` asked for) picks that backend's
    engines; a task without one runs its shipped fp32 graph, which every backend opens."""
    engines = (find_default_engines(build_dir) if backend in (None, "auto")
               else find_default_engines(build_dir, backend=backend))
    if engines:
        cls, seg = engines.get("classifier"), engines.get("segmenter")
        where = sorted({shown(e.engine.parent) for e in engines.values()})
        what = ", ".join(f"{shown(e.engine)} ({e.backend} {e.flavour})" for e in engines.values())
        line = f"models: the default engines in {', '.join(w + '/' for w in where)} - {what}"
        paths = {"classifier": cls.engine if cls else None, "segmenter": seg.engine if seg else None}
        # A task without an engine (an interrupted build-engine) runs on its shipped model, and
        # the line says so: infer never drops the masks or the class without a word.
        from covidedge.pretrained import default_model

        for task in ("classifier", "segmenter"):
            shipped = default_model(task) if paths[task] is None else None
            if shipped is not None:
                paths[task] = shipped.fp32_onnx()
                on = "ONNX Runtime" if backend in (None, "auto") else backend
                line += (f"; no {task} engine {'' if on == 'ONNX Runtime' else 'for ' + on + ' '}is built here "
                         f"(an interrupted 'covidedge build-engine'?), so the shipped {shipped.name} runs "
                         f"(fp32, {on})")
        return DefaultModels(paths["classifier"], paths["segmenter"], line, "engines")
    else:
        from covidedge.pretrained import default_model

        shipped_or_fail()
        cls, seg = default_model("classifier"), default_model("segmenter")
        names = ", ".join(m.name for m in (cls, seg) if m is not None)
    on = "ONNX Runtime" if backend in (None, "auto") else backend
    return DefaultModels(cls.fp32_onnx() if cls else None, seg.fp32_onnx() if seg else None,
                         f"models: the shipped {names} (fp32, {on}); 'covidedge build-engine' "
                         "builds faster engines for this machine into build/", "shipped")


__all__ = ["DefaultEngine", "DefaultModels", "RECORD_FILE", "RECORD_FORMAT", "ENGINES_ENV", "engines_home",
           "machine_key", "read_record", "record_key", "usable", "find_default_engines", "default_models",
           "shipped_or_fail", "shown"]
