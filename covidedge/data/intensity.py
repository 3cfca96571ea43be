"""The intensity rule: decoded samples of any container as float32 gray in [0, 1].

Every reader of :mod:`covidedge.data.imageio` and the preprocessing of arrays and Pillow images
end here, so 0 = black and 1 = white mean the same in every container, whatever the file held:
8-bit or 16-bit grayscale, RGB(A), palette, 1-bit, or DICOM.

**One rule for every container:** a sample is divided by the top of the value range its file
*declares* (or, where it declares none, of its effective bit depth), never by the largest value
it happens to hold, so one hot pixel changes nothing else and the same pixels give the same
floats in any container.

* 8-bit (``L``, and RGB / palette / alpha channels): ``value / 255``.
* 16-bit (``I;16``, ``I;16B``, ``I`` holding at most 16 bits): ``value / (2**b - 1)`` where
  ``b`` is the bit depth the file declares (PNG ``sBIT``, or ``significant_bits`` given with an
  array) when its samples fit in ``b`` bits (a 12-bit detector image stored as is), else 16 (a
  file that scaled its samples up to 16 bits as the PNG standard says). A file that declares no
  depth (a 16-bit PNG without ``sBIT``, a TIFF, a bare ``uint16`` array) gets its **effective
  bit depth**: the smallest of 8, 10, 12, 14, 16 bits that holds its samples, so 12-bit samples
  in a 16-bit container are divided by 4095, not 65535, and an 8-bit image stored as ``x * 257``
  still gives exactly the floats of the 8-bit file. Both decisions ignore a few hot pixels
  (:func:`robust_top`: up to one pixel in 4096 above the rest), so one hot pixel never changes
  the divisor; the hot pixels themselves clip to 1. Samples above 16 bits are refused. An
  image that uses a small part of its declared range is flagged by the quality check
  (``dim``, covidedge.data.quality).
* DICOM: the range its modality LUT (rescale) and VOI LUT (window) declare, mapped to [0, 1]
  (see :mod:`covidedge.data.dicomio`).
* RGB and palette: luminance with the ITU-R 601-2 weights (``0.299 R + 0.587 G + 0.114 B``),
  the same formula as Pillow's ``convert("L")`` but kept in float instead of rounded to 8 bits,
  so a gray RGB image gives exactly the floats of its 8-bit twin.
* Alpha (``RGBA``, ``LA``, ``PA``, palette with transparency): composited on black, i.e. the
  gray value is multiplied by ``alpha / 255``; fully opaque images are unchanged.
* 1-bit: 0 or 1.
* Values outside the declared range (a corrupt file) are clipped to [0, 1].

Memory: samples are converted to float32 block by block (lookup tables for gray, float64 only
inside a block for colour), so an 8000 x 8000 8-bit image costs its 64 MB of samples plus the
256 MB float32 result, never a float64 or second full-size copy.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

from covidedge.data.checks import FORMATS_HINT
from covidedge.errors import BadInputError

#: Luminance weights of ITU-R 601-2 in thousandths: integer sums stay exact, so a gray pixel
#: (v, v, v) gives exactly v.
LUMA_WEIGHTS = (299, 587, 114)
#: Pillow modes of 16-bit (or 32-bit integer) grayscale samples.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_RGB_MODES = ("CMYK", "YCbCr")
_SUPPORTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", *WIDE_MODES, *_TO_RGB_MODES)
# Pixels per block when an image is converted block by block (a few float64 temporaries of
# 8 MB each).
_BLOCK_PIXELS = 1 << 20
_UNIT8 = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=20)
def _unit_lut(top: int) -> np.ndarray:
    """float32 table ``v -> min(v / top, 1)`` for every 16-bit value ``v`` (read-only)."""
    lut = np.minimum(np.arange(65536, dtype=np.float64) / float(top), 1.0).astype(np.float32)
    lut.setflags(write=False)
    return lut


def _row_blocks(src):
    """``(h, w, blocks)``: the size of ``src`` (an array or a Pillow image) and an iterator of
    ``(first row, end row, rows)`` over blocks of at most ``_BLOCK_PIXELS`` samples (a Pillow
    image's rows are copied out block by block: no full-size copy of its samples)."""
    if isinstance(src, Image.Image):
        w, h = src.size

        def block(a: int, b: int) -> np.ndarray:
            return np.asarray(src.crop((0, a, w, b)))
    else:
        h, w = src.shape[:2]

        def block(a: int, b: int) -> np.ndarray:
            return src[a:b]
    rows = max(1, _BLOCK_PIXELS // max(1, w))
    return h, w, ((a, min(h, a + rows), block(a, min(h, a + rows))) for a in range(0, h, rows))


def blockwise(src, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float32 ``H x W`` from ``fn`` applied to blocks of rows of ``src``, an array or a Pillow
    image (whose rows are copied out block by block: no full-size copy of its samples)."""
    h, w, blocks = _row_blocks(src)
    out = np.empty((h, w), dtype=np.float32)
    for a, b, rows in blocks:
        out[a:b] = fn(rows)
    return out


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luminance of an ``H x W x 3`` uint8 array, in [0, 1] (float64)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    wr, wg, wb = LUMA_WEIGHTS
    return (wr * r + wg * g + wb * b) / (1000.0 * 255.0)


def _alpha(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64) / 255.0


#: Bit depths a 16-bit container's samples are taken to have when the file declares none.
EFFECTIVE_DEPTHS = (8, 10, 12, 14, 16)
#: Hot pixels ignored when the bit depth is chosen: one in this many pixels (none in an image
#: under 64 x 64 px, where every pixel counts).
HOT_PIXEL_SHARE = 4096


def _histogram16(src) -> np.ndarray:
    """Counts of every 16-bit value (65536 bins) of an array or a one-band Pillow image, block
    by block (no full-size copy)."""
    counts = np.zeros(65536, dtype=np.int64)
    for _, _, rows in _row_blocks(src)[2]:
        values = rows.ravel()
        counts += np.bincount(values.astype(np.int64) if values.dtype.kind == "i" else values,
                              minlength=65536)[:65536]
    return counts


def robust_top(counts: np.ndarray) -> int:
    """The largest sample of a histogram once up to one pixel in :data:`HOT_PIXEL_SHARE` (the
    brightest) is set aside as hot pixels."""
    n = int(counts.sum())
    allowed = n // HOT_PIXEL_SHARE
    above = np.cumsum(counts[::-1])  # above[i]: pixels >= 65535 - i
    first_over = int(np.argmax(above > allowed))  # brightest value whose tail exceeds the allowance
    return 65535 - first_over


def effective_bits(top: int) -> int:
    """The smallest of :data:`EFFECTIVE_DEPTHS` whose range holds ``top``."""
    for bits in EFFECTIVE_DEPTHS:
        if top <= 2 ** bits - 1:
            return bits
    return 16


def _wide_top(lo: int, hi: int, source: object, significant_bits: Optional[int], src=None) -> int:
    """The divisor of 16-bit samples spanning ``lo..hi`` (``src`` holds them, for the
    histogram): the declared depth's top when the samples fit it, 65535 when they go beyond
    (scaled up as the PNG standard says), the effective bit depth's top when none is declared
    (see the module's intensity rule)."""
    if lo < 0 or hi > 65535:
        raise BadInputError(
            f"integer pixels span {lo}..{hi}, expected unsigned values of at most 16 bits",
            path=source, hint="save the image as an 8- or 16-bit grayscale PNG")
    if significant_bits is not None and int(significant_bits) >= 16:
        return 65535
    top = hi if src is None else robust_top(_histogram16(src))
    if significant_bits is not None and 1 <= int(significant_bits) < 16:
        declared = 2 ** int(significant_bits) - 1
        return declared if top <= declared else 65535
    return 2 ** effective_bits(top) - 1


def _wide_to_unit(values: np.ndarray, source: object, significant_bits: Optional[int] = None) -> np.ndarray:
    """16-bit samples (or 32-bit integers holding 16-bit values) as float32 in [0, 1]."""
    values = np.asarray(values)
    if values.size == 0:
        return values.astype(np.float32)
    if values.dtype.kind not in "iu":
        raise BadInputError(f"has {values.dtype} samples, expected unsigned integers",
                            path=source, hint="save the image as an 8- or 16-bit grayscale PNG")
    top = _wide_top(int(values.min()), int(values.max()), source, significant_bits, values)
    lut = _unit_lut(top)
    return blockwise(values, lambda a: lut[a.astype(np.int64) if a.dtype.kind == "i" else a])


def _extrema(img: Image.Image) -> Tuple[int, int]:
    """Smallest and largest sample of a one-band integer image, without copying it whole."""
    try:
        lo, hi = img.getextrema()
        return int(lo), int(hi)
    except ValueError:  # modes such as I;16B have no native extrema
        w, h = img.size
        rows = max(1, _BLOCK_PIXELS // max(1, w))
        lo, hi = None, None
        for a in range(0, h, rows):
            block = np.asarray(img.crop((0, a, w, min(h, a + rows))))
            b_lo, b_hi = int(block.min()), int(block.max())
            lo = b_lo if lo is None else min(lo, b_lo)
            hi = b_hi if hi is None else max(hi, b_hi)
        return lo, hi


def image_to_gray(img: Image.Image, source: object = None,
                  significant_bits: Optional[int] = None) -> np.ndarray:
    """Convert a decoded Pillow image to float32 ``H x W`` in [0, 1] by the module's rules.

    ``source`` only names the image in error messages; ``significant_bits`` is a 16-bit file's
    declared bit depth (PNG ``sBIT``). EXIF orientation is not applied here (``read_gray``
    does it while decoding a file).
    """
    mode = img.mode
    if mode not in _SUPPORTED_MODES:
        raise BadInputError(
            f"has pixel mode {mode!r}, which cannot be read as a grayscale X-ray",
            path=source,
            hint=f"expected one of {', '.join(_SUPPORTED_MODES)}; "
                 "save it as an 8- or 16-bit grayscale PNG")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in _TO_RGB_MODES:
        img = img.convert("RGB")
    mode = img.mode
    # Converted block by block from the Pillow image: the samples are never copied whole.
    if mode == "1":
        gray = blockwise(img, lambda a: a.astype(np.float32))
    elif mode == "L":
        gray = blockwise(img, lambda a: _UNIT8[a])
    elif mode == "LA":
        gray = blockwise(img, lambda a: a[..., 0] / 255.0 * _alpha(a[..., 1]))
    elif mode == "RGB":
        gray = blockwise(img, _luminance)
    elif mode == "RGBA":
        gray = blockwise(img, lambda a: _luminance(a[..., :3]) * _alpha(a[..., 3]))
    else:  # 16-bit / 32-bit integer grayscale
        lo, hi = _extrema(img)
        lut = _unit_lut(_wide_top(lo, hi, source, significant_bits, img))
        gray = blockwise(img, lambda a: lut[a.astype(np.int64) if a.dtype.kind == "i" else a])
    return finish_gray(gray, source)


def array_to_gray(item: np.ndarray, significant_bits: Optional[int] = None) -> np.ndarray:
    """An image array as float32 ``H x W`` in [0, 1] by the module's rules.

    Accepted: 2-D (or ``H x W x 1`` / ``1 x H x W``) bool, uint8 (/255), uint16 (by
    ``significant_bits`` when given, else by the effective bit depth of its samples, as 16-bit
    files without an ``sBIT`` chunk) or float already in [0, 1], or ``H x W x 3|4`` uint8 RGB(A).
    """
    arr = item
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
        if arr.shape[2] == 4:
            return blockwise(arr, lambda a: _luminance(a[..., :3]) * _alpha(a[..., 3]))
        return blockwise(arr, _luminance)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInputError(f"image array has shape {item.shape}, expected a non-empty H x W "
                            "grayscale (or H x W x 3 uint8 RGB) image")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return _UNIT8[arr]
    if arr.dtype in (np.uint16, np.dtype(">u2")):
        return _wide_to_unit(arr.astype(np.uint16, copy=False), "image array", significant_bits)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise BadInputError("image array contains NaN or infinite values",
                                hint="pass a finite grayscale image in [0, 1]")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise BadInputError(f"float image array spans {lo:.4g}..{hi:.4g}, expected [0, 1]",
                                hint="scale it to [0, 1] first, or pass the uint8/uint16 pixels")
        return arr.astype(np.float32, copy=False)
    raise BadInputError(f"image array has dtype {arr.dtype}, expected bool, uint8, uint16 or "
                        "float in [0, 1]")


def finish_gray(gray: np.ndarray, source: object) -> np.ndarray:
    """Final checks shared by all decoders: 2-D, finite, inside [0, 1]; float32 C-contiguous."""
    if gray.ndim != 2 or gray.shape[0] == 0 or gray.shape[1] == 0:
        raise BadInputError(f"decoded to shape {gray.shape}, expected a non-empty H x W image",
                            path=source, hint=FORMATS_HINT)
    if gray.dtype != np.float32 or not gray.flags.writeable or not gray.flags.c_contiguous:
        gray = np.array(gray, dtype=np.float32, order="C")
    if not np.isfinite(gray.min()) or not np.isfinite(gray.max()):
        raise BadInputError("contains NaN or infinite pixel values after conversion",
                            path=source, hint="check the file's rescale slope/intercept or re-export it")
    np.clip(gray, 0.0, 1.0, out=gray)
    return gray


__all__ = ["LUMA_WEIGHTS", "WIDE_MODES", "EFFECTIVE_DEPTHS", "array_to_gray", "blockwise", "effective_bits",
           "finish_gray", "image_to_gray", "robust_top"]
