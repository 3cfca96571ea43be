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


#: Pixels per block of rows when an overlay is drawn (its temporaries stay a few MB).
_BLOCK_PIXELS = 1 << 20


def _outline_rows(mask: np.ndarray, a: int, b: int, width: int) -> np.ndarray:
    """Rows ``a:b`` of ``outline(mask, width)``, computed from those rows and ``width`` rows of
    context on each side: an erosion of ``width`` steps sees no farther, so the result equals
    the whole mask's outline there."""
    top, bottom = max(0, a - width), min(mask.shape[0], b + width)
    sub = mask[top:bottom]
    eroded = erode(sub, width)
    # erode() treats the block's cut edges as the image border; that reaches ``width`` rows in,
    # which is the context we added: rows a:b are exact.
    return sub[a - top:b - top] & ~eroded[a - top:b - top]


def draw_overlay(image: np.ndarray, lungs: Optional[np.ndarray] = None,
                 infection: Optional[np.ndarray] = None, *, alpha: float = INFECTION_ALPHA,
                 width: Optional[int] = None, caption: Optional[str] = None) -> np.ndarray:
    """RGB ``H x W x 3`` uint8 picture: the gray X-ray, infection tinted (``alpha``) and
    outlined in red, lungs outlined in green, and an optional caption in the top-left corner.
    ``width`` is the outline width in px (default: :func:`line_width_for` the image).

    Drawn block by block of rows: an 8000 x 8000 image costs its 192 MB RGB result and a few MB
    more, never full-size float or mask temporaries."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise BadInputError(f"image has shape {img.shape}, expected H x W grayscale")
    shape = img.shape
    w = line_width_for(shape) if width is None else max(1, int(width))
    lung = _bool_mask(lungs, shape, "lung mask") if lungs is not None else None
    inf = _bool_mask(infection, shape, "infection mask") if infection is not None else None
    if inf is not None and not inf.any():
        inf = None
    red = np.asarray(INFECTION_COLOR, dtype=np.float32)
    rgb = np.empty((*shape, 3), dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, shape[1]))
    for a in range(0, shape[0], rows):
        b = min(shape[0], a + rows)
        block = rgb[a:b]
        block[...] = gray_to_uint8(img[a:b])[:, :, None]
        if lung is not None:
            block[_outline_rows(lung, a, b, w)] = LUNG_COLOR
        if inf is not None:
            m = inf[a:b]
            tinted = block[m].astype(np.float32) * (1.0 - alpha) + red * alpha
            block[m] = np.round(tinted).astype(np.uint8)
            block[_outline_rows(inf, a, b, w)] = INFECTION_COLOR
    if caption:
        rgb = _draw_caption(rgb, caption)
    return rgb


def _draw_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in white on a dark box in the top-left corner, scaled to the image (drawn
    on that corner only, in place: no copy of the whole picture)."""
    size = max(10, int(min(rgb.shape[:2]) / 20))
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow: fixed bitmap font
        font = None
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    box_w = min(rgb.shape[1], right - left + 2 * pad + 1)
    box_h = min(rgb.shape[0], bottom + 2 * pad + 1)
    corner = Image.fromarray(np.ascontiguousarray(rgb[:box_h, :box_w]))
    _draw_caption_on(corner, text, size)
    rgb[:box_h, :box_w] = np.asarray(corner)
    return rgb


def _draw_caption_on(img: Image.Image, text: str, size: int) -> None:
    draw = ImageDraw.Draw(img)
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow: fixed bitmap font
        font = None
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad), text, fill=(255, 255, 255), font=font)


def _save_atomic(img: Image.Image, path, overwrite: bool) -> Path:
    path = Path(os.fspath(path))
    try:
        with atomic_target(path, overwrite=overwrite) as tmp:
            img.save(tmp, format="PNG", compress_level=3)
    except OSError as exc:
        raise BadInputError(f"cannot be written: {exc.strerror or exc}", path=path,
                            hint="check that the output folder is writable and has space") from exc
    return path


def save_mask_png(path, mask: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a bool mask as an 8-bit PNG (0 = background, 255 = mask), as COVID-QU-Ex stores them.
    An existing file is replaced only with ``overwrite`` (else covidedge.fileio.OutputExistsError)."""
    m = np.ascontiguousarray(_bool_mask(mask, None, "mask"))
    pixels = np.multiply(m, 255, dtype=np.uint8)  # one 8-bit copy, shared with the PNG encoder
    return _save_atomic(Image.frombuffer("L", (m.shape[1], m.shape[0]), pixels, "raw", "L", 0, 1),
                        path, overwrite)


def save_overlay(path, image: np.ndarray, lungs: Optional[np.ndarray] = None,
                 infection: Optional[np.ndarray] = None, *, caption: Optional[str] = None,
                 overwrite: bool = False) -> Path:
    """Draw :func:`draw_overlay` and write it as an RGB PNG; returns the path. An existing file
    is replaced only with ``overwrite`` (else covidedge.fileio.OutputExistsError)."""
    rgb = draw_overlay(image, lungs, infection, caption=caption)
    path = Path(os.fspath(path))
    try:
        with atomic_target(path, overwrite=overwrite) as tmp:
            write_rgb_png(tmp, rgb)
    except OSError as exc:
        raise BadInputError(f"cannot be written: {exc.strerror or exc}", path=path,
                            hint="check that the output folder is writable and has space") from exc
    return path


def write_rgb_png(path, rgb: np.ndarray, level: int = 3) -> Path:
    """Write an ``H x W x 3`` uint8 array as an 8-bit RGB PNG, encoded block by block of rows
    (PNG 'Up' filter, zlib ``level``). Pillow would first copy the picture into its own 4 bytes
    per pixel (256 MB for 8000 x 8000); this costs a few MB beyond the array."""
    import struct
    import zlib

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadInputError(f"picture has shape {rgb.shape} and dtype {rgb.dtype}, expected H x W x 3 uint8")
    h, w = rgb.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(int(level))
    rows = max(1, _BLOCK_PIXELS // max(1, w))
    previous = np.zeros(w * 3, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        for a in range(0, h, rows):
            block = np.ascontiguousarray(rgb[a:min(h, a + rows)]).reshape(-1, w * 3)
            filtered = np.empty((block.shape[0], w * 3 + 1), dtype=np.uint8)
            filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it, modulo 256
            np.subtract(block[:1], previous[None], out=filtered[:1, 1:])
            np.subtract(block[1:], block[:-1], out=filtered[1:, 1:])
            previous = block[-1].copy()
            data = comp.compress(filtered.tobytes())
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", comp.flush()))
        f.write(chunk(b"IEND", b""))
    return Path(path)


__all__ = ["LUNG_COLOR", "INFECTION_COLOR", "INFECTION_ALPHA", "erode", "outline", "line_width_for",
           "gray_to_uint8", "draw_overlay", "save_mask_png", "save_overlay"]
