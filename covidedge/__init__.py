"""covidedge: COVID-19 chest X-ray classification and infection segmentation for the edge.

Train an Xception classifier and a residual U-Net segmenter, export them to ONNX with the
precision in the graph (fp32 / fp16 / calibrated int8), build TensorRT or ONNX Runtime engines,
and run them through one small runtime API and the ``covidedge`` command.

Importing this package is cheap: heavy modules (torch, TensorRT, pycuda, ONNX Runtime) load
only when used.
"""

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "covidedge.runtime.pipeline",
    "Classifier": "covidedge.runtime.pipeline",
    "Segmenter": "covidedge.runtime.pipeline",
    "load": "covidedge.runtime",
    "run_inference": "covidedge.runtime.run",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'covidedge' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
