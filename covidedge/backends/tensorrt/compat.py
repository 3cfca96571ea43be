"""Whether a TensorRT plan may run on this machine: the TensorRT release (exact, or along the
version-compatible steps), the GPU and its compute capability, and the Jetson L4T release."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from covidedge.backends.base import refuse_differences
from covidedge.formats.manifest import tensorrt_version_difference


def _norm(text) -> str:
    return " ".join(str(text or "").split()).lower()


def machine_differences(manifest, machine: Mapping[str, Any]) -> List[str]:
    """What differs between the machine a plan was built for and ``machine`` (a
    :func:`covidedge.machine.probe_machine` dict); empty when it may run here."""
    diffs: List[str] = []
    built = manifest.backend_version
    here = machine.get("tensorrt")
    if not here:
        diffs.append(f"TensorRT: engine built with {built}, TensorRT is not installed here")
    elif here == "unknown":
        diffs.append(f"TensorRT: engine built with {built}, the installed TensorRT's version "
                     "cannot be read")
    else:
        why = tensorrt_version_difference(built, here, manifest.version_compatible)
        if why:
            diffs.append(why)
    dev = manifest.device or {}
    if not machine.get("gpu"):
        diffs.append(f"GPU: engine built for {dev.get('gpu') or 'an NVIDIA GPU'}, no NVIDIA GPU "
                     "found here")
    else:
        if dev.get("gpu") and _norm(dev.get("gpu")) != _norm(machine.get("gpu")):
            diffs.append(f"GPU: engine {dev.get('gpu')!r}, here {machine.get('gpu')!r}")
        cc_built, cc_here = dev.get("gpu_compute_capability"), machine.get("gpu_compute_capability")
        if cc_built and cc_here and str(cc_built) != str(cc_here):
            diffs.append(f"compute capability: engine {cc_built}, here {cc_here}")
    l4t_built, l4t_here = manifest.l4t_release, machine.get("l4t_release")
    if (l4t_built or l4t_here) and l4t_built != l4t_here:
        diffs.append(f"Jetson L4T release: engine {l4t_built or 'none (not a Jetson)'}, "
                     f"here {l4t_here or 'none (not a Jetson)'}")
    return diffs


def require_compatible(manifest, engine_path, machine: Optional[Mapping[str, Any]] = None) -> None:
    """Raise IncompatibleModelError listing what differs from this machine (probed, TensorRT
    imported for its exact version, when not given) and the command that rebuilds the plan."""
    if machine is None:
        from covidedge.machine import probe_machine

        machine = probe_machine(use_backends=True)
    refuse_differences(manifest, engine_path, machine_differences(manifest, machine))


__all__ = ["machine_differences", "require_compatible"]
