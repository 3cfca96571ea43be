"""The checks every image decoder shares, with their one-line messages.

A file that is missing, not a regular file, empty or unreadable, and an image whose header
declares more pixels than the caller allows, are refused here with a
:class:`~covidedge.errors.BadInputError` naming the file, the problem and what to do, before
any decoder looks at the pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from covidedge.errors import BadInputError, one_line

#: The hint of a file that is no readable image.
FORMATS_HINT = "expected a PNG, JPEG, BMP, TIFF or DICOM chest X-ray"
#: Bytes of a file's start that :func:`check_file` returns: enough for the DICOM preamble, its
#: ``DICM`` marker and the first data element.
HEAD_BYTES = 140


def check_file(path: Path) -> Tuple[bytes, int]:
    """Raise BadInputError for a missing, non-regular, empty or unreadable file; return its first
    :data:`HEAD_BYTES` bytes and its size in bytes."""
    if not path.exists():
        raise BadInputError("no such file", path=path, hint="check the path")
    if not path.is_file():
        raise BadInputError("is not a regular file", path=path, hint="pass an image file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadInputError("is an empty file (0 bytes)", path=path,
                                hint=f"{FORMATS_HINT}; re-copy or re-export it")
        with open(path, "rb") as fh:
            return fh.read(HEAD_BYTES), size
    except OSError as exc:
        raise BadInputError(f"cannot be read: {one_line(exc)}", path=path,
                            hint="check the file's permissions") from exc


def check_pixel_count(path: Path, pixels: int, max_pixels: int, what: str) -> None:
    """Raise BadInputError when a header declares more than ``max_pixels`` pixels; ``what``
    starts the message (e.g. ``"image header says 9000x9000, which"``)."""
    if pixels > max_pixels:
        raise BadInputError(
            f"{what} has {pixels} pixels, over the limit of {max_pixels} "
            "(a decompression bomb, or an unexpectedly huge image)",
            path=path, hint="downscale the image, or pass a larger max_pixels if it is genuine")


__all__ = ["FORMATS_HINT", "HEAD_BYTES", "check_file", "check_pixel_count"]
