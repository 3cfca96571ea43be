"""Serving a ``--target gpu`` repository in NVIDIA's Triton container: which container release
ships the engines' TensorRT, and the ``docker run`` command (ports on loopback by default)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

from covidedge.errors import BadInputError

__all__ = ["DEFAULT_PORTS", "TRITON_RELEASE_FOR_TENSORRT", "SUPPORT_MATRIX", "triton_release_for",
           "docker_command"]

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

#: NVIDIA Triton container releases (nvcr.io/nvidia/tritonserver:<release>-py3) by the TensorRT
#: (major, minor) they ship. 22.05, 22.08, 22.11, 24.05 and 24.12 are checked against published
#: container tables; the others follow the monthly release cadence and are worth checking in the
#: support matrix (the printed note links it).
TRITON_RELEASE_FOR_TENSORRT = {
    (8, 2): "22.05", (8, 4): "22.08", (8, 5): "22.11", (8, 6): "24.04",
    (10, 0): "24.05", (10, 1): "24.06", (10, 2): "24.07", (10, 3): "24.08", (10, 4): "24.09",
    (10, 5): "24.10", (10, 6): "24.11", (10, 7): "24.12", (10, 8): "25.02",
}
SUPPORT_MATRIX = "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html"


# ---------------------------------------------------------------------------------------------
# GPU repositories: NVIDIA's container
# ---------------------------------------------------------------------------------------------
def triton_release_for(tensorrt_version: Optional[str]) -> Optional[str]:
    """The NVIDIA Triton container release that ships this TensorRT (major.minor), or None."""
    from covidedge.formats.manifest import parse_version

    v = parse_version(tensorrt_version)
    return TRITON_RELEASE_FOR_TENSORRT.get(v[:2]) if len(v) >= 2 else None


def docker_command(repository, facts: Dict[str, Any], *, http_port: int = DEFAULT_PORTS["http"],
                   grpc_port: int = DEFAULT_PORTS["grpc"], metrics_port: int = DEFAULT_PORTS["metrics"],
                   address: str = "127.0.0.1") -> Dict[str, Any]:
    """How to serve a ``--target gpu`` repository: the ``docker run`` command of the NVIDIA
    Triton container whose TensorRT matches the engines, and notes (image choice, Jetson). The
    ports are published on ``address`` only (loopback by default: the server has no
    authentication)."""
    repo = Path(os.fspath(repository)).resolve()
    trt = sorted({m.get("tensorrt") for m in facts.get("models", {}).values() if m.get("tensorrt")})
    notes: List[str] = []
    if len(trt) > 1:
        raise BadInputError(f"engines were built with different TensorRT versions ({', '.join(trt)}); "
                            "one Triton container carries one", path=repo,
                            hint="rebuild the engines with the same TensorRT")
    if trt:
        release = triton_release_for(trt[0])
        if release:
            image = f"nvcr.io/nvidia/tritonserver:{release}-py3"
            notes.append(f"{image} ships TensorRT {'.'.join(trt[0].split('.')[:2])}, as the engines "
                         f"were built with ({trt[0]}); the support matrix lists each release's: "
                         f"{SUPPORT_MATRIX}")
        else:
            image = "nvcr.io/nvidia/tritonserver:<release>-py3"
            notes.append(f"pick the release whose TensorRT is {trt[0]} in {SUPPORT_MATRIX}")
        if any(m.get("l4t_release") for m in facts.get("models", {}).values()):
            notes.append("the engines were built on Jetson: run Triton's Jetson (JetPack) release there "
                         "with --model-repository, not this container")
    else:
        image = "nvcr.io/nvidia/tritonserver:<release>-py3"
        notes.append("ONNX models run in any release with the onnxruntime backend; pick a recent one")
    notes.append("the preprocess and postprocess steps import covidedge: install it in the container "
                 "(pip install covidedge) before tritonserver starts")
    host = f"[{address}]" if ":" in address else address
    cmd = ["docker", "run", "--rm", "--gpus", "all", "-p", f"{host}:{http_port}:8000",
           "-p", f"{host}:{grpc_port}:8001", "-p", f"{host}:{metrics_port}:8002", "-v", f"{repo}:/models", image,
           "tritonserver", "--model-repository=/models"]
    return {"image": image, "command": " ".join(shlex.quote(c) for c in cmd), "notes": notes}
