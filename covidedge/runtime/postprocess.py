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


def probabilities_to_mask(prob: np.ndarray, threshold: float, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Boolean mask of ``prob > threshold``, at ``size = (H, W)`` when given (probabilities resized
    bilinearly first), else at the probabilities' own size. ``prob`` may carry leading axes
    (e.g. N x C x h x w) when no ``size`` is given."""
    p = np.asarray(prob, dtype=np.float32)
    if size is not None and tuple(p.shape[-2:]) != tuple(size):
        if p.ndim != 2:
            raise ValueError(f"resizing needs one h x w map, got shape {p.shape}")
        p = upsample_probabilities(p, size)
    return p > float(threshold)


__all__ = ["probabilities_to_mask", "upsample_probabilities"]
