"""THE one preprocessing of covidedge, shared by training, calibration, evaluation and runtime.

An image (a file, a Pillow image or an array) becomes a grayscale float in [0, 1] by the rule
of :mod:`covidedge.data.intensity`, is resized to ``size = (H, W)`` pixels with Pillow's
bilinear filter on 32-bit float pixels (mode ``F``; skipped when the image already has that
size), clipped to [0, 1] and returned as a float32 NCHW array. Models record
:data:`PREPROCESSING_ID` in their spec; a golden-image test pins the numbers, so changing this
function means a new id.
"""

from __future__ import annotations

import os
from typing import Iterable, Tuple, Union

import numpy as np
from PIL import Image

from covidedge.data.imageio import read_gray
from covidedge.data.intensity import array_to_gray, image_to_gray
from covidedge.errors import BadInputError
from covidedge.spec import as_size

#: Name of this preprocessing, stored in every model spec (== ModelSpec's default).
PREPROCESSING_ID = "gray-unit-bilinear-v1"
#: Input size (H, W) in pixels of the COVID-QU-Ex models.
DEFAULT_SIZE: Tuple[int, int] = (256, 256)

ImageLike = Union[str, "os.PathLike[str]", np.ndarray, Image.Image]


def as_gray(item: ImageLike, reduce_for=None) -> np.ndarray:
    """Any accepted input as a float32 ``H x W`` array in [0, 1].

    Paths are decoded with :func:`~covidedge.data.imageio.read_gray` (``reduce_for`` is passed
    on: see there); Pillow images by the same rules; arrays may be 2-D (or ``H x W x 1`` /
    ``1 x H x W``) bool, uint8 (/255), uint16 (by the effective bit depth of its samples, as
    16-bit files without an ``sBIT`` chunk: 12-bit samples /4095) or float already in [0, 1],
    or ``H x W x 3|4`` uint8 RGB(A).
    """
    if isinstance(item, (str, os.PathLike)):
        return read_gray(item, reduce_for=reduce_for)
    if isinstance(item, Image.Image):
        return image_to_gray(item, source="<PIL image>")
    if not isinstance(item, np.ndarray):
        raise BadInputError(f"cannot preprocess a {type(item).__name__}",
                            hint="pass a file path, a PIL image or a numpy array")
    return array_to_gray(item)


#: Pixels above which a large image is resized strip by strip of rows (4 MB of float32 each).
_STRIP_PIXELS = 1 << 20


def resize_gray(gray: np.ndarray, size=DEFAULT_SIZE) -> np.ndarray:
    """Bilinear resize of a float ``H x W`` image to ``size = (H, W)``; no-op at that size."""
    h, w = as_size(size)
    gray = np.asarray(gray, dtype=np.float32)
    if gray.shape == (h, w):
        return np.ascontiguousarray(gray)
    gray = np.ascontiguousarray(gray)
    H, W = gray.shape
    if H * W > _STRIP_PIXELS and H >= h and W >= w:
        # Pillow resizes in two passes, rows first; doing that pass on strips of rows gives the
        # same floats without Pillow's full-size copy of the image (256 MB at 8000 x 8000).
        rows = max(1, _STRIP_PIXELS // W)
        narrow = np.empty((H, w), dtype=np.float32)
        for a in range(0, H, rows):
            b = min(H, a + rows)
            narrow[a:b] = np.asarray(Image.fromarray(gray[a:b]).resize((w, b - a), Image.Resampling.BILINEAR))
        gray = narrow
    img = Image.fromarray(gray)  # mode "F"
    out = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    # Bilinear weights are non-negative and sum to 1, so this only removes rounding overshoot.
    return np.clip(out, 0.0, 1.0)


def preprocess(image_or_path: ImageLike, size=DEFAULT_SIZE) -> np.ndarray:
    """One image -> float32 ``(1, 1, H, W)`` in [0, 1], ready for a model of input ``size``."""
    gray = resize_gray(as_gray(image_or_path), size)
    return np.ascontiguousarray(gray[None, None, :, :], dtype=np.float32)


def preprocess_batch(items: Iterable[ImageLike], size=DEFAULT_SIZE) -> np.ndarray:
    """Several images -> float32 ``(N, 1, H, W)``; each one exactly as :func:`preprocess`."""
    h, w = as_size(size)
    items = list(items)
    if not items:
        raise BadInputError("no images to preprocess", hint="pass at least one image")
    out = np.empty((len(items), 1, h, w), dtype=np.float32)
    for i, item in enumerate(items):
        out[i, 0] = resize_gray(as_gray(item), (h, w))
    return out


def resize_mask(mask: np.ndarray, size=DEFAULT_SIZE) -> np.ndarray:
    """Nearest-neighbour resize of a bool ``H x W`` mask to ``size = (H, W)``; returns bool."""
    h, w = as_size(size)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise BadInputError(f"mask has shape {m.shape}, expected H x W")
    m = m.astype(bool)
    if m.shape == (h, w):
        return m.copy()
    img = Image.fromarray(m.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)) > 127


__all__ = [
    "DEFAULT_SIZE",
    "PREPROCESSING_ID",
    "as_gray",
    "preprocess",
    "preprocess_batch",
    "resize_gray",
    "resize_mask",
]
