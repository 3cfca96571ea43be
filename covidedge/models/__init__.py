"""The networks: an Xception classifier and a residual U-Net segmenter (torch only).

Imported by training and export, never by the runtime.
"""

from covidedge.models.registry import (
    InferenceWrapper,
    build_from_spec,
    create_model,
    list_models,
)

__all__ = ["InferenceWrapper", "build_from_spec", "create_model", "list_models"]
