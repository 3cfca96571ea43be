"""Mask PNGs and overlay pictures for a look at what the segmenter found (numpy + Pillow only).

An overlay is the X-ray in gray with the infection tinted and outlined in red and the lungs
outlined in green. Outlines are the mask minus its binary erosion (a 3 x 3 cross, repeated for
thicker lines), so no scipy or OpenCV is needed. Files are written through a temporary name and
renamed, so an interrupted run never leaves half a PNG behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from covidedge.errors import BadInputError
from covidedge.fileio import atomic_target

#: RGB colours of the overlay (0-255).
LUNG_COLOR: Tuple[int, int, int] = (0, 220, 0)
INFECTION_COLOR: Tuple[int, int, int] = (255, 32, 32)
#: Opacity of the red tint over infected pixels (0 = none, 1 = opaque).
INFECTION_ALPHA = 0.35


def _bool_mask(mask, shape: Optional[Tuple[int, int]], what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise BadInputError(f"{what} has shape {m.shape}, expected H x W")
    if shape is not None and m.shape != tuple(shape):
        raise BadInputError(f"{what} has shape {m.shape}, the image has {tuple(shape)}",
                            hint="masks must be at the image's size")
    return m.astype(bool, copy=False)


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion with a 3 x 3 cross, ``iterations`` times; pixels outside the image count
    as background, so a mask touching the border keeps an outline along it."""
    m = _bool_mask(mask, None, "mask").copy()
    for _ in range(max(0, int(iterations))):
        if not m.any():
            break
        e = m.copy()
        e[1:, :] &= m[:-1, :]
        e[:-1, :] &= m[1:, :]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        m = e
    return m


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` px of its edge: ``mask & ~erode(mask, width)``."""
    m = _bool_mask(mask, None, "mask")
    return m & ~erode(m, width)


def line_width_for(shape: Tuple[int, int]) -> int:
    """Outline width in px that stays visible at any size: 1 px per 256 px of the short side."""
    return max(1, int(round(min(shape) / 256)))


def gray_to_uint8(image: np.ndarray) -> np.ndarray:
    """A float gray image in [0, 1] (or uint8) as uint8 0-255."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise BadInputError(f"image has shape {img.shape}, expected H x W grayscale")
    if img.dtype == np.uint8:
        return img
    if not np.issubdtype(img.dtype, np.floating):
        raise BadInputError(f"image has dtype {img.dtype}, expected float in [0, 1] or uint8")
    return np.round(np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def draw_overlay(image: np.ndarray, lungs: Optional[np.ndarray] = None,
                 infection: Optional[np.ndarray] = None, *, alpha: float = INFECTION_ALPHA,
                 width: Optional[int] = None, caption: Optional[str] = None) -> np.ndarray:
    """RGB ``H x W x 3`` uint8 picture: the gray X-ray, infection tinted (``alpha``) and
    outlined in red, lungs outlined in green, and an optional caption in the top-left corner.
    ``width`` is the outline width in px (default: :func:`line_width_for` the image)."""
    gray = gray_to_uint8(image)
    shape = gray.shape
    w = line_width_for(shape) if width is None else max(1, int(width))
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if lungs is not None:
        rgb[outline(_bool_mask(lungs, shape, "lung mask"), w)] = LUNG_COLOR
    if infection is not None:
        inf = _bool_mask(infection, shape, "infection mask")
        if inf.any():
            red = np.asarray(INFECTION_COLOR, dtype=np.float32)
            tinted = rgb[inf].astype(np.float32) * (1.0 - alpha) + red * alpha
            rgb[inf] = np.round(tinted).astype(np.uint8)
            rgb[outline(inf, w)] = INFECTION_COLOR
    if caption:
        rgb = _draw_caption(rgb, caption)
    return rgb


def _draw_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in white on a dark box in the top-left corner, scaled to the image."""
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    size = max(10, int(min(rgb.shape[:2]) / 20))
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow: fixed bitmap font
        font = None
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def _save_atomic(img: Image.Image, path, overwrite: bool = True) -> Path:
    path = Path(os.fspath(path))
    try:
        with atomic_target(path, overwrite=overwrite) as tmp:
            img.save(tmp, format="PNG", compress_level=3)
    except OSError as exc:
        raise BadInputError(f"cannot be written: {exc.strerror or exc}", path=path,
                            hint="check that the output folder is writable and has space") from exc
    return path


def save_mask_png(path, mask: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a bool mask as an 8-bit PNG (0 = background, 255 = mask), as COVID-QU-Ex stores them.
    With ``overwrite=False`` an existing file is never replaced (covidedge.fileio.OutputExistsError)."""
    m = _bool_mask(mask, None, "mask")
    return _save_atomic(Image.fromarray(m.astype(np.uint8) * 255), path, overwrite)


def save_overlay(path, image: np.ndarray, lungs: Optional[np.ndarray] = None,
                 infection: Optional[np.ndarray] = None, *, caption: Optional[str] = None,
                 overwrite: bool = True) -> Path:
    """Draw :func:`draw_overlay` and write it as an RGB PNG; returns the path."""
    rgb = draw_overlay(image, lungs, infection, caption=caption)
    return _save_atomic(Image.fromarray(np.ascontiguousarray(rgb)), path, overwrite)


__all__ = ["LUNG_COLOR", "INFECTION_COLOR", "INFECTION_ALPHA", "erode", "outline", "line_width_for",
           "gray_to_uint8", "draw_overlay", "save_mask_png", "save_overlay"]
