"""One runtime over TensorRT, ONNX Runtime and torch.

``load(path)`` opens an engine (with its manifest), an ONNX model or a checkpoint and returns a
Runner. Importing this package imports none of torch, TensorRT or pycuda.
"""

from covidedge.backends.base import Runner


def load(path, backend: str = "auto", **options) -> Runner:
    """Open ``path`` with the backend its file and this machine call for (see runtime.select)."""
    from covidedge.runtime.select import load as _load

    return _load(path, backend=backend, **options)


__all__ = ["Runner", "load"]
