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


def _write_record(folder: Path, record: Dict[str, Any]) -> None:
    from covidedge.fileio import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / RECORD_FILE, (json.dumps(record, indent=1) + "\n").encode())


def _graph_for(model, flavour: str, build_dir: Path, progress: bool) -> Path:
    """The precision-bearing ONNX graph of a shipped model for ``flavour``, in ``build_dir``."""
    from covidedge.engine.autotune import shipped_graph

    return shipped_graph(model, flavour, build_dir, lambda text: say(progress, text))


#: Options of ``covidedge build-engine`` (by flag) that the default engines take: the autotuner's.
AUTOTUNE_FLAGS = {"--opt-batch": "batches", "--max-batch": "max_batch", "--budget": "budget_s",
                  "--backend": "backend"}


def _register_choice(build_dir: Path, model, kept: List[DefaultEngine], chosen: Optional[DefaultEngine]) -> None:
    """Record ``kept`` (every faithful engine built for ``model``, the chosen one marked) in
    ``build_dir``'s record and this machine's, replacing what they held for ``model``."""
    for folder in (build_dir, engines_home()):
        record = read_record(folder)
        entries = []
        for e in kept:
            d = e.to_dict()
            if folder != build_dir:
                d.update(engine=str(Path(e.engine).resolve()), manifest=str(Path(e.manifest).resolve()))
            d["chosen"] = e is chosen
            d["rank"] = len(entries)  # fastest first: what --backend NAME picks among its engines
            entries.append(d)
        record["engines"] = [e for e in record["engines"] if e.get("model") != model.name] + entries
        _write_record(folder, record)


def build_default_engines(build_dir=DEFAULT_BUILD_DIR, *, rebuild: bool = False, progress: bool = False,
                          build_options: Optional[Dict[str, Any]] = None, autotune=None,
                          backend: str = "auto") -> List[DefaultEngine]:
    """Build (or reuse) the default engines for this machine into ``build_dir``, autotuned
    (covidedge.engine.autotune): every candidate the machine supports is built, the faithful
    ones are timed against each other at ``autotune.batches`` and the fastest is kept per model.
    ``backend`` other than "auto" limits the candidates to that backend. A second call with
    nothing changed reuses the choice (``autotune.json`` beside the engines) without timing.

    The precision is chosen, not given, so ``build_options`` (options of a MODEL build, keyed by
    the name the caller knows them by: ``precision`` or ``--precision``) are refused, never
    ignored: any given one is a UsageError."""
    given = sorted(k for k, v in (build_options or {}).items() if v is not None)
    if given:
        raise UsageError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to a MODEL build; the "
                         "default engines are autotuned (--opt-batch, --max-batch, --budget and --backend apply)",
                         hint="pass MODEL, e.g. a checkpoint, to choose")
    import time

    from covidedge import backends
    from covidedge.engine import autotune as at
    from covidedge.formats.manifest import manifest_path_for
    from covidedge.machine import module_present, probe_machine
    from covidedge.spec import AUTO

    options = at.AutotuneOptions.of(autotune, **({"rebuild": True} if rebuild else {}))
    build_dir = Path(os.fspath(build_dir))
    row = backends.resolve(backend) if backend != AUTO else None  # an explicit one must build here

    def present(module: str) -> bool:
        return module_present(module)

    def allowed(name: str) -> bool:
        return row is None or name == row.name

    probe = any(r.probe_backends for r, _ in at.plan_candidates(present) if allowed(r.name))
    machine = probe_machine(use_backends=probe)
    facts = at.machine_facts(machine)
    choices = at.read_choices(build_dir)["models"]
    t0 = time.perf_counter()
    out: List[DefaultEngine] = []
    for model in shipped_or_fail():
        key = model.name
        prev = choices.get(key) or {}
        chosen_prev = prev.get("chosen") or {}
        if (not options.rebuild and prev.get("fp32_sha256") == model.fp32_sha256 and prev.get("machine") == facts
                and tuple(prev.get("batches") or ()) == tuple(options.batches) and prev.get("backend") == backend
                and prev.get("max_batch") == options.max_batch and chosen_prev.get("engine")):
            engine = Path(chosen_prev["engine"])
            entry = {"engine": str(engine), "task": model.task}
            try:
                precision = read_manifest_precision(engine)
            except Exception:  # noqa: BLE001 - a missing or broken manifest means: rebuild
                precision = None
            entry["precision"] = precision
            if precision and usable(entry, machine) is None:
                say(progress, f"reusing {engine} ({model.name}, {chosen_prev['backend']} {chosen_prev['form']}): "
                              f"chosen when built - {prev.get('reason', '')}")
                d = DefaultEngine(model.name, model.task, precision, chosen_prev["form"], chosen_prev["backend"],
                                  engine, manifest_path_for(engine), model.fp32_sha256, status="reused")
                kept = [d]
                for c in sorted(prev.get("candidates") or [], key=lambda c: sum((c.get("ms") or {}).values()) or 1e9):
                    # the faithful losers stay on record, fastest first (--backend NAME)
                    path = Path(c.get("engine") or "")
                    if c.get("status") == "faithful" and path.is_file():
                        try:
                            kept.append(DefaultEngine(model.name, model.task, read_manifest_precision(path),
                                                      c["form"], c["backend"], path, manifest_path_for(path),
                                                      model.fp32_sha256, status="reused"))
                        except Exception:  # noqa: BLE001 - an unreadable manifest: not on record
                            continue
                _register_choice(build_dir, model, kept, d)
                out.append(d)
                continue

        def engine_path(r, form, _m=model):
            return build_dir / r.engine_name(_m.name, form, version=machine.get(r.name),
                                             compute_capability=machine.get("gpu_compute_capability"))

        def graph_for(flavour, _m=model):
            return _graph_for(_m, flavour, build_dir, progress)

        say(progress, f"autotuning {model.name} ({model.task}) at batch {', '.join(map(str, options.batches))}")
        choice = at.tune(model.name, model.task, graph_for, model.summary.get("val") or [], engine_path, options,
                         lambda text: say(progress, text), t0=t0,
                         present=present, only=allowed)
        for line in choice.table():
            say(progress, line)
        if choice.chosen is None:
            from covidedge.errors import RuntimeFailure

            raise RuntimeFailure(f"no engine of {model.name} could be built here: {choice.reason}",
                                 hint="see the table above; 'covidedge build-engine MODEL --backend onnxruntime' "
                                      "builds one backend's engine")
        at.stamp_manifest(choice.chosen.engine, choice)
        kept = []
        winner = None
        for c in sorted(choice.candidates, key=lambda c: c.ms_per_image(choice.batches)
                        if all(b in c.ms for b in choice.batches) else float("inf")):
            if c.status in ("chosen", "faithful"):
                precision = read_manifest_precision(c.engine)
                d = DefaultEngine(model.name, model.task, precision, c.form, c.backend, c.engine,
                                  manifest_path_for(c.engine), model.fp32_sha256)
                kept.append(d)
                if c is choice.chosen:
                    winner = d
        _register_choice(build_dir, model, kept, winner)
        at.write_choice(build_dir, key, dict(choice.to_dict(), fp32_sha256=model.fp32_sha256, machine=facts,
                                             backend=backend, max_batch=options.max_batch))
        out.append(winner)
    return out


def read_manifest_precision(engine) -> str:
    from covidedge.formats.manifest import read_manifest

    return read_manifest(engine, verify=False).precision


__all__ = ["DefaultEngine", "DefaultModels", "plan_default_engines", "build_default_engines", "AUTOTUNE_FLAGS",
           "find_default_engines", "default_models", "RECORD_FILE", "RECORD_FORMAT"]
