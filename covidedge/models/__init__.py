"""The networks: an Xception classifier and a residual U-Net segmenter (torch only), their
registry and named variants.

Imported by training and export, never by the runtime. Names are loaded on first use, so the
registry's tables can be read without importing torch.
"""

_LAZY = {
    "InferenceWrapper": "covidedge.models.wrapper",
    "build_from_spec": "covidedge.models.registry",
    "create_model": "covidedge.models.registry",
    "list_models": "covidedge.models.registry",
    "load_checkpoint": "covidedge.models.loading",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'covidedge.models' has no attribute {name!r}")


__all__ = list(_LAZY)
