"""Safe decoding of chest X-ray files into grayscale float images in [0, 1], and PNG writing.

Every reader returns a float32 ``H x W`` array with 0 = black and 1 = white, whatever the file
held, by the one intensity rule of :mod:`covidedge.data.intensity` (a sample divided by the top
of the value range its file declares). Anything that cannot be decoded safely (empty, not an
image, truncated, too many pixels, unsupported pixel mode, unreadable DICOM, non-finite values)
raises :class:`~covidedge.errors.BadInputError` with one line naming the file, the problem and
what to do.

This module decides how a file is read: the file checks of :mod:`covidedge.data.checks`, then
DICOM (a ``.dcm`` / ``.dicom`` name or the ``DICM`` magic at byte 128) through
:mod:`covidedge.data.dicomio`, anything else (PNG, JPEG, BMP, TIFF) through
:mod:`covidedge.data.rasterio`. The pixel count declared by the header is bounded before any
decoding, so a decompression bomb never allocates its pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from covidedge.data.checks import HEAD_BYTES, check_file
from covidedge.data.dicomio import (DICOM_SUFFIXES, check_dicom_header, has_dicom_magic, read_dicom,
                                    starts_like_dicom)
from covidedge.data.rasterio import read_raster
from covidedge.errors import BadInputError, DatasetError, one_line
from covidedge.fileio import atomic_target
from covidedge.spec import as_size

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes the readers accept (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
#: Default limit on the pixel count of one image (64 megapixels), checked from the header
#: before any decoding so that a decompression bomb never allocates its pixels.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def is_image_path(path: PathLike) -> bool:
    """True when the file name ends in one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_dicom_path(path: PathLike) -> bool:
    """True when the file is read as DICOM: a ``.dcm`` / ``.dicom`` name or the ``DICM`` magic at
    byte 128, and its first bytes start like DICOM (False for a file that cannot be opened).

    A file named ``.dcm`` that does not start like DICOM (e.g. 300 MB of zeros) is False, so
    that callers never hand it to a DICOM parser; :func:`read_gray` refuses it at once.
    """
    p = Path(os.fspath(path))
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return False
    has_magic = has_dicom_magic(head)
    if not has_magic and p.suffix.lower() not in DICOM_SUFFIXES:
        return False
    return starts_like_dicom(head, size, has_magic)


def _dispatch(path: PathLike, max_pixels, reduce_for=None, header_only: bool = False, dicom: bool = False):
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise BadInputError(f"max_pixels={max_pixels!r}, expected a positive integer")
    p = Path(os.fspath(path))
    head, size = check_file(p)
    has_magic = has_dicom_magic(head)
    if has_magic or dicom or p.suffix.lower() in DICOM_SUFFIXES:
        check_dicom_header(p, head, size, has_magic)
        return read_dicom(p, int(max_pixels), has_magic, header_only=header_only)
    return read_raster(p, int(max_pixels), reduce_for, header_only=header_only)


def read_gray(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              reduce_for: Optional[Sequence[int]] = None, dicom: bool = False) -> np.ndarray:
    """Decode an image file into a float32 ``H x W`` array in [0, 1] by the intensity rule.

    ``max_pixels`` bounds the pixel count read from the header before decoding.
    ``reduce_for = (H, W)``: the caller only needs an input of that size, so an image at least
    four times larger on both sides may be returned reduced by an integer factor (JPEG: Pillow
    ``draft``; other 8-bit images: ``reduce``), never below twice ``(H, W)``; DICOM is always
    read at full size. ``dicom=True`` reads the file as DICOM whatever its name (a DICOM
    without preamble in a file without a ``.dcm`` suffix, such as bytes received by the server).
    Raises BadInputError for anything that cannot be decoded safely, and MissingDependencyError
    for DICOM when pydicom is not installed.
    """
    target = None if reduce_for is None else as_size(reduce_for, "reduce_for")
    return _dispatch(path, max_pixels, target, dicom=dicom)


#: First bytes of the raster formats covidedge reads (PNG, JPEG, BMP, TIFF both byte orders).
RASTER_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_bare_dicom(head: bytes, size: int) -> bool:
    """True when bytes without a name are a DICOM dataset without preamble: no raster format's
    signature, and a DICOM data element at byte 0."""
    return not head.startswith(RASTER_MAGIC) and starts_like_dicom(head, size, False)


def image_shape(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """``(H, W)`` that :func:`read_gray` returns for ``path``, from the header only (EXIF
    orientation included)."""
    return tuple(int(v) for v in _dispatch(path, max_pixels, header_only=True))


def read_mask(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              image: Optional[PathLike] = None) -> np.ndarray:
    """Read a mask image as a bool ``H x W`` array: any nonzero pixel is True.

    With ``image`` (the X-ray the mask belongs to), a mask whose size differs from the image's
    is refused with a DatasetError naming both files: resizing it would misplace the outline.
    """
    mask = read_gray(path, max_pixels=max_pixels) > 0
    if image is not None:
        check_mask_shape(mask.shape, path, image_shape(image, max_pixels=max_pixels), image)
    return mask


def check_mask_shape(mask_shape, mask_path: PathLike, image_shape_hw, image_path: PathLike) -> None:
    """Raise DatasetError (naming the mask and its image) when the sizes ``(H, W)`` differ."""
    mh, mw = (int(v) for v in mask_shape)
    ih, iw = (int(v) for v in image_shape_hw)
    if (mh, mw) != (ih, iw):
        raise DatasetError(
            f"mask is {mw}x{mh} px (width x height) but its image {os.fspath(image_path)} is "
            f"{iw}x{ih} px", path=mask_path,
            hint="re-export the mask at the image's size, or remove it")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_png(path: PathLike, array: np.ndarray, *, compress_level: int = 6,
              significant_bits: Optional[int] = None) -> Path:
    """Write a 2-D gray, ``H x W x 3`` RGB or ``H x W x 4`` RGBA array as a PNG; returns the path.

    Accepted: bool (a mask, written 0/255), uint8 (as is), uint16 2-D (16-bit gray), float in
    [0, 1] (rounded to 8 bits). ``significant_bits`` (uint16 only, 1..16) is written as the
    PNG ``sBIT`` chunk, so a 12-bit image stored as is reads back divided by 4095. The parent
    folder is created when missing.
    """
    arr = np.asarray(array)
    p = Path(os.fspath(path))
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise BadInputError(f"array to write has shape {arr.shape}, expected H x W, H x W x 3 "
                            "or H x W x 4", path=p)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise BadInputError("float array to write has values outside [0, 1] or non-finite",
                                path=p, hint="scale it to [0, 1] or pass uint8")
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise BadInputError("uint16 arrays can only be written as 2-D grayscale", path=p)
    elif arr.dtype != np.uint8:
        raise BadInputError(f"array to write has dtype {arr.dtype}, expected bool, uint8, "
                            "uint16 or float in [0, 1]", path=p)
    pnginfo = None
    if significant_bits is not None:
        bits = int(significant_bits)
        if arr.dtype != np.uint16 or not 1 <= bits <= 16 or int(arr.max(initial=0)) >= 2 ** bits:
            raise BadInputError(f"significant_bits={significant_bits!r} needs a uint16 array whose "
                                "values fit in that many bits (1..16)", path=p)
        from PIL import PngImagePlugin

        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add(b"sBIT", bytes([bits]))
    img = Image.fromarray(np.ascontiguousarray(arr))
    try:
        with atomic_target(p) as tmp:
            img.save(tmp, format="PNG", compress_level=int(compress_level), pnginfo=pnginfo)
    except OSError as exc:
        raise BadInputError(f"cannot be written: {one_line(exc)}", path=p,
                            hint="check that the folder is writable") from exc
    return p


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "check_mask_shape",
    "image_shape",
    "is_dicom_path",
    "is_image_path",
    "read_gray",
    "read_mask",
    "write_png",
]
