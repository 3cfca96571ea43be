"""THE backend table: one row per backend, in the order backend "auto" prefers them.

Each row names the module that defines the backend's one :class:`~covidedge.backends.base.Backend`
object (``BACKEND``): its name, what it needs (``available()``), the precisions and targets it
builds, ``build(graph, options)``, its self-check, its runners and its file suffix. Engine
builds, runner selection, manifests, the Triton repository and bench go through this table and
never branch on a backend's name: adding a backend is one module and one row.

Rows are loaded on first use, so asking about ONNX Runtime imports no TensorRT code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional

from covidedge.backends.base import Backend
from covidedge.errors import MissingDependencyError
from covidedge.spec import AUTO, ENGINE_BACKEND_CHOICES, check_choice

#: name -> module holding its BACKEND. The first available row with ``auto`` is what "auto" builds.
TABLE: Dict[str, str] = {
    "tensorrt": "covidedge.backends.tensorrt.backend",
    "onnxruntime": "covidedge.backends.onnxruntime",
    "openvino": "covidedge.backends.openvino",
    "torch": "covidedge.backends.torch",
}
#: Rows backend "auto" builds for, in order of preference (OpenVINO is on request only).
AUTO_ORDER = ("tensorrt", "onnxruntime")
#: The row that runs a plain ONNX graph and the one that runs a checkpoint, unless told otherwise.
ONNX_RUNNER = "onnxruntime"
CHECKPOINT_RUNNER = "torch"


def get(name: str) -> Backend:
    """The Backend object of ``name`` (a BadInputError for a name not in the table)."""
    check_choice("backend", name, tuple(TABLE))
    return importlib.import_module(TABLE[name]).BACKEND


def engine_backends() -> List[Backend]:
    """Every backend that builds engines, in table order."""
    return [b for b in (get(n) for n in TABLE) if b.builds]


def resolve(requested: str, present: Optional[Callable[[str], bool]] = None) -> Backend:
    """The engine backend a build with ``--backend requested`` uses: "auto" -> the first row of
    :data:`AUTO_ORDER` whose modules are all ``present`` (default: installed); an explicit one
    that cannot build here is a MissingDependencyError (never a quiet fallback)."""
    from covidedge.machine import module_present

    present = present or module_present
    check_choice("backend", requested, ENGINE_BACKEND_CHOICES)
    if requested == AUTO:
        for name in AUTO_ORDER:
            row = get(name)
            if all(present(m) for m in row.requires):
                return row
        return get(AUTO_ORDER[-1])
    row = get(requested)
    if not all(present(m) for m in row.build_requires):
        raise MissingDependencyError(f"{row.title} is not installed, so no {row.title} engine can be built here",
                                     hint=row.install_hint)
    return row


def fallback_note(present: Callable[[str], bool], chosen: Backend, version: str, engine_path) -> str:
    """The one line said when "auto" built for ``chosen`` because the preferred backend's
    modules are missing."""
    preferred = get(AUTO_ORDER[0])
    missing = next((m for m in preferred.requires if not present(m)), preferred.requires[0])
    why = (f"{preferred.title} is not installed here" if missing == preferred.requires[0]
           else f"{missing} is not installed here ({preferred.title} engines need it to run)")
    return f"note: {why}; built an {chosen.title} {version} CPU model instead: {engine_path}"


def check_compatible(manifest, machine: Mapping[str, Any]) -> List[str]:
    """What differs between the machine an engine was built for and ``machine`` (a
    :func:`covidedge.machine.probe_machine` dict), as the engine's backend judges it; empty when
    it may run here."""
    return get(manifest.backend).machine_differences(manifest, machine)


def require_compatible(manifest, engine_path, machine: Optional[Mapping[str, Any]] = None) -> None:
    """Raise IncompatibleModelError listing what differs from this machine (probed when not given)
    and the command that rebuilds the engine here."""
    get(manifest.backend).require_compatible(manifest, engine_path, machine)


def load_manifest(engine_path, machine: Optional[Mapping[str, Any]] = None, *, check: bool = True,
                  verify: bool = True):
    """Read ``<engine>.manifest.json``, verify the engine file against it and (``check``) compare
    it with this machine. Raises IncompatibleModelError naming every difference and the command
    that rebuilds the engine here; a missing manifest is an error, never a silent fallback."""
    from covidedge.formats.manifest import read_manifest

    manifest = read_manifest(engine_path, verify=verify)
    if check:
        from pathlib import Path

        from covidedge.formats.manifest import MANIFEST_SUFFIX, engine_path_for

        path = Path(engine_path)
        require_compatible(manifest, engine_path_for(path) if path.name.endswith(MANIFEST_SUFFIX) else path,
                           machine)
    return manifest


__all__ = ["TABLE", "AUTO_ORDER", "ONNX_RUNNER", "CHECKPOINT_RUNNER", "Backend", "get", "engine_backends",
           "resolve", "fallback_note", "check_compatible", "require_compatible", "load_manifest"]
