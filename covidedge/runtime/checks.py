"""What a pipeline checks before any image is read: that a model is one it can feed for its task,
and that a batch size is one it can hold."""

from __future__ import annotations

import numpy as np

from covidedge.backends.base import Runner
from covidedge.data.preprocess import PREPROCESSING_ID
from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.spec import MASK_CHANNELS, MAX_BATCH


def check_model_spec(runner: Runner, task: str) -> None:
    """Raise IncompatibleModelError unless ``runner`` is a ``task`` model this pipeline can feed
    (one gray channel, covidedge preprocessing, and for a segmenter lungs + infection channels)."""
    spec, src = runner.spec, runner.source
    spec.require_task(task, source=src)
    if spec.preprocessing != PREPROCESSING_ID:
        raise IncompatibleModelError(
            f"expects preprocessing {spec.preprocessing!r}, this runtime provides {PREPROCESSING_ID!r}",
            path=src, hint="re-export the model with this covidedge version")
    if spec.in_chans != 1:
        raise IncompatibleModelError(f"takes {spec.in_chans} input channels, expected 1 (grayscale)",
                                     path=src, hint="train and export a grayscale model")
    if task == "segmenter":
        missing = [c for c in MASK_CHANNELS if c not in spec.labels]
        if missing:
            raise IncompatibleModelError(
                f"segmenter channels are {list(spec.labels)}, expected {list(MASK_CHANNELS)}",
                path=src, hint="export a covidedge lungs + infection segmenter")
    elif len(spec.labels) < 2:
        raise IncompatibleModelError(f"classifier has labels {list(spec.labels)}, expected 2 or more",
                                     path=src)


def check_batch_size(batch_size) -> int:
    """``batch_size`` as an int from 1 to MAX_BATCH images; anything else is a BadInputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BadInputError(f"batch_size={batch_size!r}, expected a positive integer")
    if batch_size > MAX_BATCH:
        raise BadInputError(f"batch size {batch_size} is above {MAX_BATCH} images; a batch is decoded and "
                            "held in memory at once", hint="use a batch of 8-64 images")
    return int(batch_size)


__all__ = ["check_model_spec", "check_batch_size"]
