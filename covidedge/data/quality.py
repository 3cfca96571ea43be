"""Input quality check: flags for images no chest X-ray model should be trusted on.

A decoded gray image (float in [0, 1], as :func:`covidedge.data.imageio.read_gray` returns) is
checked for five things, each a flag named in :data:`QUALITY_FLAGS`:

* ``constant``: the brightest and darkest pixels differ by less than ``min_range`` (default
  1/255, one 8-bit level): a blank, black or white image carries no anatomy.
* ``tiny``: the shorter side is under ``min_side`` px (default 64): upsampled to the model's
  input it is mostly interpolation.
* ``extreme_aspect_ratio``: the longer side is more than ``max_aspect`` (default 4) times the
  shorter one: a strip, not a chest radiograph (which is close to square).
* ``dim``: all but the brightest 0.1 % of pixels are below ``min_top`` (default 1/8) of the
  range: the image uses a small part of the range its file declares (12-bit samples declared as
  16-bit, a window far above the anatomy), so the model sees a nearly black picture.
* ``out_of_distribution``: the image does not look like a frontal chest X-ray (a CT or MR
  slice, a photograph, a document, a pattern): its appearance score
  (:mod:`covidedge.data.appearance`) is above the threshold set on COVID-QU-Ex Val, where 3 % of
  real X-rays score higher. The models answer confidently on such images; the flag says not to
  trust them.

The check only reports; callers decide whether a flagged image is a warning on its result or a
refusal (``--strict``).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from covidedge.errors import BadInputError

#: The flags, in the order :func:`check_quality` reports them.
QUALITY_FLAGS: Tuple[str, ...] = ("constant", "tiny", "extreme_aspect_ratio", "dim",
                                  "out_of_distribution")
#: Default thresholds: one 8-bit gray level, 64 px, 4:1, 1/8 of the range.
MIN_RANGE = 1.0 / 255.0
MIN_SIDE_PX = 64
MAX_ASPECT = 4.0
MIN_TOP = 1.0 / 8.0
#: Pixels sampled (at most) for the ``dim`` check's percentile.
_SAMPLE_PIXELS = 1 << 18

#: What each flag means, for human-readable output.
FLAG_MEANINGS: Dict[str, str] = {
    "constant": "the image is blank (all pixels within one gray level)",
    "tiny": "the image is too small to show a chest",
    "extreme_aspect_ratio": "the image is a strip, far from a chest radiograph's proportions",
    "dim": "the image uses under 1/8 of its intensity range (a bit depth or window that does not "
           "fit its samples?)",
    "out_of_distribution": "the image does not look like a frontal chest X-ray (CT, MR, photo, "
                           "document?); do not trust the result",
}


def check_quality(gray, *, min_range: float = MIN_RANGE, min_side: int = MIN_SIDE_PX,
                  max_aspect: float = MAX_ASPECT, min_top: float = MIN_TOP,
                  appearance: bool = True) -> List[str]:
    """Flags (a sublist of :data:`QUALITY_FLAGS`, in that order) for a 2-D gray image.

    ``gray`` is an ``H x W`` array (float in [0, 1], or integer samples: only its range
    relative to ``min_range`` in the same units matters; ``dim`` applies to float images in
    [0, 1] only). An empty list means no concern.
    """
    arr = np.asarray(gray)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInputError(f"image for the quality check has shape {arr.shape}, expected a "
                            "non-empty H x W gray image")
    if not (min_range >= 0 and min_side >= 1 and max_aspect >= 1):
        raise BadInputError(f"quality thresholds min_range={min_range}, min_side={min_side}, "
                            f"max_aspect={max_aspect} are invalid; expected min_range >= 0, "
                            "min_side >= 1, max_aspect >= 1")
    flags: List[str] = []
    if float(arr.max()) - float(arr.min()) < min_range:
        flags.append("constant")
    h, w = arr.shape
    short, long = min(h, w), max(h, w)
    if short < min_side:
        flags.append("tiny")
    if long > max_aspect * short:
        flags.append("extreme_aspect_ratio")
    if arr.dtype.kind == "f" and "constant" not in flags:
        step = max(1, int(np.sqrt(arr.size / _SAMPLE_PIXELS)))
        if float(np.percentile(arr[::step, ::step], 99.9)) < min_top:
            flags.append("dim")
    if appearance and "constant" not in flags and "tiny" not in flags:
        from covidedge.data.appearance import default_profile

        profile = default_profile()
        if profile is not None and profile.is_foreign(arr):
            flags.append("out_of_distribution")
    return flags


#: What can be wrong with a ground-truth mask, in the order :func:`check_ground_truth_mask` reports.
MASK_PROBLEMS: Tuple[str, ...] = ("empty", "full", "lossy")
_JPEG_MAGIC = b"\xff\xd8\xff"


def check_ground_truth_mask(gray, path=None, *, may_be_empty: bool = False) -> List[str]:
    """Problems of a ground-truth mask decoded to gray ``[0, 1]`` (before it is thresholded),
    each a line ``"<flag>: <why>"`` with a flag of :data:`MASK_PROBLEMS`:

    * ``empty``: no pixel set (a lung mask must hold lungs; ``may_be_empty`` for infection masks);
    * ``full``: every pixel set, the mask marks the whole image;
    * ``lossy``: JPEG bytes under another suffix, or gray levels between the mask's two values
      (lossy compression or anti-aliasing): thresholded at > 0, its outline grows.

    An empty list means the mask looks like a mask. Scores are still computed; callers warn."""
    arr = np.asarray(gray)
    problems: List[str] = []
    if arr.size == 0:
        return ["empty: the mask has no pixels"]
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= 0.0 and not may_be_empty:
        problems.append("empty: no pixel is set")
    if lo > 0.0:
        problems.append("full: every pixel is set")
    head = b""
    if path is not None:
        try:
            with open(path, "rb") as f:
                head = f.read(3)
        except OSError:
            pass
    suffix = str(path).lower().rsplit(".", 1)[-1] if path is not None else ""
    if head == _JPEG_MAGIC and suffix not in ("jpg", "jpeg"):
        problems.append(f"lossy: the file holds JPEG bytes under .{suffix}")
    elif head == _JPEG_MAGIC or (hi > lo and bool(((arr > lo) & (arr < hi)).any())):
        between = int(((arr > lo) & (arr < hi)).sum())
        problems.append(f"lossy: {between} pixels lie between the mask's two values (lossy "
                        "compression or anti-aliasing)")
    return problems


def describe_flags(flags) -> str:
    """One line for human output, e.g. ``"constant: the image is blank (...); tiny: ..."``."""
    return "; ".join(f"{f}: {FLAG_MEANINGS.get(f, f)}" for f in flags)


__all__ = ["FLAG_MEANINGS", "MASK_PROBLEMS", "MAX_ASPECT", "MIN_RANGE", "MIN_SIDE_PX", "QUALITY_FLAGS",
           "check_ground_truth_mask", "check_quality", "describe_flags"]
