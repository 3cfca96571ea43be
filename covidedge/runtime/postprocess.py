"""The one rule that turns segmenter probabilities into a mask, used by inference, evaluation,
benchmarks and the Triton models alike.

A pixel is in the mask when its probability is **strictly above** the threshold. When the mask is
wanted at another size than the model's output (the image's own size), the probability map is
first resized bilinearly and then thresholded, so mask edges follow the probabilities rather than
the model's pixel grid.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image


def upsample_probabilities(prob: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``h x w`` probability map to ``size = (H, W)`` (Pillow mode F)."""
    if prob.shape == tuple(size):
        return prob
    img = Image.fromarray(np.ascontiguousarray(prob, dtype=np.float32))
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


#: Output pixels per strip when probabilities are resized to a large image (16 MB of float32).
_STRIP_PIXELS = 1 << 22


def probabilities_to_mask(prob: np.ndarray, threshold: float, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Boolean mask of ``prob > threshold``, at ``size = (H, W)`` when given (probabilities resized
    bilinearly first), else at the probabilities' own size. ``prob`` may carry leading axes
    (e.g. N x C x h x w) when no ``size`` is given.

    A resized mask is made strip by strip of rows (Pillow's resize of the matching source box,
    the same sampling positions as one whole resize): an 8000 x 8000 mask costs its 64 MB, not
    a 256 MB float map and its copy."""
    p = np.asarray(prob, dtype=np.float32)
    if size is not None and tuple(p.shape[-2:]) != tuple(size):
        if p.ndim != 2:
            raise ValueError(f"resizing needs one h x w map, got shape {p.shape}")
        (H, W), (h, w) = (int(v) for v in size), p.shape
        img = Image.fromarray(np.ascontiguousarray(p))
        out = np.empty((H, W), dtype=bool)
        rows = max(1, _STRIP_PIXELS // max(1, W))
        for a in range(0, H, rows):
            b = min(H, a + rows)
            strip = img.resize((W, b - a), Image.Resampling.BILINEAR, box=(0, a * h / H, w, b * h / H))
            np.greater(np.asarray(strip, dtype=np.float32), float(threshold), out=out[a:b])
        return out
    return p > float(threshold)


__all__ = ["probabilities_to_mask", "upsample_probabilities"]
