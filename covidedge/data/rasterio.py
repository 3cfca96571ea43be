"""Decoding of PNG, JPEG, BMP and TIFF files with Pillow, safely.

The header is read first: a file Pillow does not recognise as one of :data:`PILLOW_FORMATS` is
not an image, and a pixel count over the caller's limit is refused before any pixel is
allocated (a decompression bomb). Then the file is decoded in full, so a truncated or corrupt
stream fails here with a one-line :class:`~covidedge.errors.BadInputError`, and its samples
become gray floats by :mod:`covidedge.data.intensity` (with a 16-bit PNG's ``sBIT`` bit depth).
The EXIF orientation tag is applied (``ImageOps.exif_transpose``); a multi-frame file (a TIFF
stack) gives its first frame. ``reduce_for`` lets a caller that only needs a model-sized input
decode a large JPEG at a reduced DCT scale (Pillow ``draft``) or box-reduce other 8-bit images
right after decoding (Pillow ``reduce``).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Optional, Tuple

from PIL import Image, ImageOps, UnidentifiedImageError

from covidedge.data.checks import FORMATS_HINT, check_pixel_count
from covidedge.data.intensity import WIDE_MODES, image_to_gray
from covidedge.errors import BadInputError, one_line

#: Pillow formats the reader opens; anything else is reported as not an image.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")


def _open_pillow(fh, path: Path) -> Image.Image:
    """Open (header only) with Pillow, turning its failures into BadInputError."""
    with warnings.catch_warnings():
        # Pillow warns above its own global limit (Image.MAX_IMAGE_PIXELS) and refuses twice
        # that; the max_pixels check in read_raster is the one that decides, so the warning
        # is muted.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fh, formats=PILLOW_FORMATS)
        except Image.DecompressionBombError as exc:
            raise BadInputError(f"is a decompression bomb: {one_line(exc)}", path=path,
                                hint="downscale the image if it is genuine") from exc
        except UnidentifiedImageError as exc:
            raise BadInputError("is not a recognisable image", path=path,
                                hint=f"{FORMATS_HINT}; check that the file is not damaged "
                                     "or misnamed") from exc
        except Exception as exc:  # damaged headers raise assorted errors inside Pillow's plugins
            raise BadInputError(f"cannot be opened as an image: {one_line(exc)}", path=path,
                                hint=FORMATS_HINT) from exc


def _png_significant_bits(path: Path) -> Optional[int]:
    """The gray (first) value of a PNG's ``sBIT`` chunk, or None; reads chunk headers only."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(4096):
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = fh.read(min(length, 4))
                    return int(data[0]) if data else None
                if kind in (b"IDAT", b"IEND", b"PLTE"):  # sBIT must come before these
                    return None
                fh.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None
    return None


def _reduction(width: int, height: int, reduce_for: Optional[Tuple[int, int]]) -> int:
    """Integer factor by which a ``width x height`` image may shrink and still be at least
    twice ``reduce_for = (H, W)`` on both sides; 1 when it may not."""
    if reduce_for is None:
        return 1
    h, w = reduce_for
    return max(1, min(width // (2 * w), height // (2 * h)))


def read_raster(path: Path, max_pixels: int, reduce_for: Optional[Tuple[int, int]] = None,
                header_only: bool = False):
    """Float32 ``H x W`` gray in [0, 1] of a PNG, JPEG, BMP or TIFF file, or with
    ``header_only`` its ``(H, W)`` after the EXIF orientation, from the header alone.

    ``max_pixels`` bounds the header's pixel count; ``reduce_for = (H, W)`` allows an integer
    reduction that keeps the image at least twice that size. Raises BadInputError.
    """
    # Decoding from an open file object, not a file name, keeps Pillow off its memory-mapped
    # path, which mis-decodes uncompressed TIFFs whose orientation swaps width and height.
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise BadInputError(f"cannot be read: {one_line(exc)}", path=path,
                            hint="check the file's permissions") from exc
    with fh, _open_pillow(fh, path) as img:
        width, height = img.size
        pixels = int(width) * int(height)
        check_pixel_count(path, pixels, max_pixels, f"image header says {width}x{height}, which")
        if pixels == 0:
            raise BadInputError(f"has size {width}x{height}", path=path,
                                hint="expected a non-empty image")
        if header_only:
            try:  # a TIFF's header size already has its orientation applied
                orientation = None if img.format == "TIFF" else img.getexif().get(0x0112)
            except Exception:
                orientation = None
            return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
        factor = _reduction(width, height, reduce_for)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # damaged metadata warns; data errors raise
                if factor > 1 and img.format == "JPEG":
                    # DCT-domain scaling (1/2, 1/4, 1/8): decodes far fewer pixels.
                    img.draft(img.mode, (width // factor, height // factor))
                # Full decode now: a truncated or corrupt stream fails here, not later.
                # ImageFile.LOAD_TRUNCATED_IMAGES is left False so missing data is an error.
                img.load()
                out = img
                factor = _reduction(out.size[0], out.size[1], reduce_for)
                if factor > 1 and out.mode in ("L", "LA", "RGB", "RGBA"):
                    out = out.reduce(factor)  # box average of the 8-bit samples
                # TIFF applies its orientation tag while loading; this handles EXIF elsewhere.
                # In place: without an orientation tag nothing is copied.
                ImageOps.exif_transpose(out, in_place=True)
        except Image.DecompressionBombError as exc:
            raise BadInputError(f"is a decompression bomb: {one_line(exc)}", path=path,
                                hint="downscale the image if it is genuine") from exc
        except BadInputError:
            raise
        except Exception as exc:  # truncated or corrupt data raise assorted errors in Pillow
            raise BadInputError(f"is truncated or corrupt ({img.format}): {one_line(exc)}",
                                path=path, hint="re-copy or re-export the image") from exc
        bits = _png_significant_bits(path) if img.format == "PNG" and out.mode in WIDE_MODES else None
        try:
            return image_to_gray(out, source=path, significant_bits=bits)
        except BadInputError:
            raise
        except Exception as exc:  # a damaged palette or mode conversion
            raise BadInputError(f"has pixel data that cannot be converted: {one_line(exc)}",
                                path=path, hint="re-save it as an 8- or 16-bit grayscale PNG") from exc


__all__ = ["PILLOW_FORMATS", "read_raster"]
