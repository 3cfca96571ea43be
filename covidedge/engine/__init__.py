"""Engines: build a TensorRT plan (or, without TensorRT, an ONNX Runtime model; OpenVINO on
request) from a precision-bearing ONNX graph or a checkpoint, with the manifest that says what
it was built from and for. ``build`` holds the options and the orchestration, ``paths`` where
engines go, ``defaults`` the shipped models' engines; each backend's own build is in
covidedge.backends.

Importing this package is cheap: TensorRT, ONNX Runtime and torch load only when a build runs.
"""

_LAZY = {
    "build_engine": "covidedge.engine.build",
    "BuildResult": "covidedge.engine.build",
    "EngineManifest": "covidedge.formats.manifest",
    "BuildOptions": "covidedge.engine.build",
    "load_manifest": "covidedge.backends",
    "check_compatible": "covidedge.backends",
    "manifest_path_for": "covidedge.formats.manifest",
    "probe_machine": "covidedge.machine",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'covidedge.engine' has no attribute {name!r}")


__all__ = list(_LAZY)
