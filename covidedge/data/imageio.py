"""Safe decoding of chest X-rays into grayscale float images in [0, 1], and PNG writing.

Every reader returns a float32 ``H x W`` array with 0 = black and 1 = white, whatever the file
held: 8-bit or 16-bit grayscale, RGB(A), palette, 1-bit, or DICOM. Anything that cannot be
decoded safely (empty, not an image, truncated, too many pixels, unsupported pixel mode,
unreadable DICOM, non-finite values) raises :class:`~covidedge.errors.BadInputError` with one
line naming the file, the problem and what to do.

Conversion rules, so that the same picture gives the same floats whatever its container:

* 8-bit (``L``): ``value / 255``.
* 16-bit (``I;16``, ``I;16B``, ``I``): divided by ``2**bits - 1`` where
  ``bits = max(8, ceil(log2(max + 1)))``, capped at 16; values are never clipped to 255. An
  8-bit image stored as 16-bit, either as ``x * 257`` (full-range) or as plain ``x``, therefore
  gives exactly the same floats as the 8-bit file; a 12-bit detector image is divided by 4095.
* RGB and palette: luminance with the ITU-R 601-2 weights (``0.299 R + 0.587 G + 0.114 B``),
  the same formula as Pillow's ``convert("L")`` but kept in float instead of rounded to 8 bits,
  so a gray RGB image gives exactly the floats of its 8-bit twin.
* Alpha (``RGBA``, ``LA``, ``PA``, palette with transparency): composited on black, i.e. the
  gray value is multiplied by ``alpha / 255``; fully opaque images are unchanged.
* 1-bit: 0 or 1.
* The EXIF orientation tag is applied (``ImageOps.exif_transpose``).
* Multi-frame files (TIFF stacks): the first frame.
* DICOM (``.dcm`` or the ``DICM`` magic at byte 128), through pydicom imported lazily: modality
  LUT (rescale slope / intercept), VOI LUT or window centre / width, ``MONOCHROME1`` inverted,
  then min-max scaled to [0, 1] (a constant image gives all zeros).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from covidedge.errors import BadInputError, require

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes the readers accept (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
#: Default limit on the pixel count of one image (64 megapixels), checked from the header
#: before any decoding so that a decompression bomb never allocates its pixels.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

#: Pillow formats the reader opens; anything else is reported as not an image.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_DICOM_MAGIC = b"DICM"
_DICOM_SUFFIXES = (".dcm", ".dicom")

_GRAY_MODES = ("L",)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_RGB_MODES = ("CMYK", "YCbCr")
_SUPPORTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", *_WIDE_MODES, *_TO_RGB_MODES)

# Luminance weights of ITU-R 601-2 in thousandths: integer sums stay exact, so a gray pixel
# (v, v, v) gives exactly v.
_LUMA_WEIGHTS = (299, 587, 114)
_HINT_FORMATS = "expected a PNG, JPEG, BMP, TIFF or DICOM chest X-ray"


def is_image_path(path: PathLike) -> bool:
    """True when the file name ends in one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Pillow images -> gray float
# ---------------------------------------------------------------------------------------------
def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luminance of an ``H x W x 3`` uint8 array, in [0, 1] (float64)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    wr, wg, wb = _LUMA_WEIGHTS
    return (wr * r + wg * g + wb * b) / (1000.0 * 255.0)


def _wide_to_unit(values: np.ndarray, source: object) -> np.ndarray:
    """Scale 16-bit (or 32-bit integer holding 16-bit) samples by their real bit depth."""
    values = values.astype(np.int64, copy=False)
    if values.size == 0:
        return values.astype(np.float64)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > 65535:
        raise BadInputError(
            f"integer pixels span {lo}..{hi}, expected unsigned values of at most 16 bits",
            path=source, hint="save the image as an 8- or 16-bit grayscale PNG")
    bits = min(16, max(8, hi.bit_length()))  # == ceil(log2(hi + 1)) for integers
    return values.astype(np.float64) / float(2 ** bits - 1)


def image_to_gray(img: Image.Image, source: object = None) -> np.ndarray:
    """Convert a decoded Pillow image to float32 ``H x W`` in [0, 1] by the module's rules.

    ``source`` only names the image in error messages. EXIF orientation is not applied here
    (``read_gray`` does it while decoding a file).
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
    arr = np.asarray(img)

    if mode == "1":
        gray = arr.astype(np.float64)
    elif mode == "L":
        gray = arr.astype(np.float64) / 255.0
    elif mode == "LA":
        gray = arr[..., 0].astype(np.float64) / 255.0 * (arr[..., 1].astype(np.float64) / 255.0)
    elif mode == "RGB":
        gray = _luminance(arr)
    elif mode == "RGBA":
        gray = _luminance(arr[..., :3]) * (arr[..., 3].astype(np.float64) / 255.0)
    else:  # 16-bit / 32-bit integer grayscale
        gray = _wide_to_unit(arr, source)
    return _finish(gray, source)


def _finish(gray: np.ndarray, source: object) -> np.ndarray:
    """Final checks shared by all decoders: 2-D, finite, inside [0, 1]; float32 C-contiguous."""
    if gray.ndim != 2 or gray.shape[0] == 0 or gray.shape[1] == 0:
        raise BadInputError(f"decoded to shape {gray.shape}, expected a non-empty H x W image",
                            path=source, hint=_HINT_FORMATS)
    if not np.isfinite(gray).all():
        raise BadInputError("contains NaN or infinite pixel values after conversion",
                            path=source, hint="check the file's rescale slope/intercept or re-export it")
    gray = np.clip(gray, 0.0, 1.0)
    return np.ascontiguousarray(gray, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------
def _check_file(path: Path) -> bytes:
    """Raise BadInputError for a missing, non-regular or empty file; return its first 132 bytes."""
    if not path.exists():
        raise BadInputError("no such file", path=path, hint="check the path")
    if not path.is_file():
        raise BadInputError("is not a regular file", path=path, hint="pass an image file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadInputError("is an empty file (0 bytes)", path=path,
                                hint=f"{_HINT_FORMATS}; re-copy or re-export it")
        with open(path, "rb") as fh:
            return fh.read(132)
    except OSError as exc:
        raise BadInputError(f"cannot be read: {_one_line(exc)}", path=path,
                            hint="check the file's permissions") from exc


def _bomb_error(path: Path, pixels: int, max_pixels: int, what: str) -> BadInputError:
    return BadInputError(
        f"{what} has {pixels} pixels, over the limit of {max_pixels} "
        "(a decompression bomb, or an unexpectedly huge image)",
        path=path, hint="downscale the image, or pass a larger max_pixels if it is genuine")


def _open_pillow(fh, path: Path) -> Image.Image:
    """Open (header only) with Pillow, turning its failures into BadInputError."""
    with warnings.catch_warnings():
        # Pillow warns above its own global limit (Image.MAX_IMAGE_PIXELS) and refuses twice
        # that; the max_pixels check in _read_pillow is the one that decides, so the warning
        # is muted.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fh, formats=PILLOW_FORMATS)
        except Image.DecompressionBombError as exc:
            raise BadInputError(f"is a decompression bomb: {_one_line(exc)}", path=path,
                                hint="downscale the image if it is genuine") from exc
        except UnidentifiedImageError as exc:
            raise BadInputError("is not a recognisable image", path=path,
                                hint=f"{_HINT_FORMATS}; check that the file is not damaged "
                                     "or misnamed") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadInputError(f"cannot be opened as an image: {_one_line(exc)}", path=path,
                                hint=_HINT_FORMATS) from exc


def _read_pillow(path: Path, max_pixels: int) -> np.ndarray:
    # Decoding from an open file object, not a file name, keeps Pillow off its memory-mapped
    # path, which mis-decodes uncompressed TIFFs whose orientation swaps width and height.
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise BadInputError(f"cannot be read: {_one_line(exc)}", path=path,
                            hint="check the file's permissions") from exc
    with fh, _open_pillow(fh, path) as img:
        width, height = img.size
        pixels = int(width) * int(height)
        if pixels > max_pixels:
            raise _bomb_error(path, pixels, max_pixels, f"image header says {width}x{height}, which")
        if pixels == 0:
            raise BadInputError(f"has size {width}x{height}", path=path,
                                hint="expected a non-empty image")
        try:
            # Full decode now: a truncated or corrupt stream fails here, not later.
            # ImageFile.LOAD_TRUNCATED_IMAGES is left False so missing data is an error.
            img.load()
        except Image.DecompressionBombError as exc:
            raise BadInputError(f"is a decompression bomb: {_one_line(exc)}", path=path,
                                hint="downscale the image if it is genuine") from exc
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise BadInputError(f"is truncated or corrupt ({img.format}): {_one_line(exc)}",
                                path=path, hint="re-copy or re-export the image") from exc
        try:
            # TIFF applies its orientation tag while loading; this handles EXIF elsewhere.
            oriented = ImageOps.exif_transpose(img)
        except Exception as exc:  # malformed EXIF blocks raise assorted errors
            raise BadInputError(f"has unreadable EXIF orientation data: {_one_line(exc)}",
                                path=path, hint="re-save the image without EXIF metadata") from exc
        return image_to_gray(oriented if oriented is not None else img, source=path)


def _read_dicom(path: Path, max_pixels: int, has_magic: bool) -> np.ndarray:
    pydicom = require("pydicom", extra="dicom", purpose=f"reading DICOM file {path}")
    try:
        ds = pydicom.dcmread(str(path), force=not has_magic)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct/Value errors
        raise BadInputError(f"is not a readable DICOM file: {_one_line(exc)}", path=path,
                            hint="re-export the study, or convert it to a 16-bit PNG") from exc

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BadInputError("is a DICOM file without pixel data", path=path,
                            hint="pass the image instance of the study, not a report or SR")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except Exception as exc:
        raise BadInputError(f"has an unreadable image header: {_one_line(exc)}", path=path,
                            hint="re-export the DICOM file") from exc
    pixels = rows * cols * frames
    if pixels > max_pixels:
        raise _bomb_error(path, pixels, max_pixels, f"DICOM header says {frames}x{rows}x{cols}, which")
    if frames != 1:
        raise BadInputError(f"has {frames} frames, expected a single-frame radiograph",
                            path=path, hint="extract the frame to read into its own file")
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith("YBR"):
        raise BadInputError(f"has photometric interpretation {photometric!r}", path=path,
                            hint="expected MONOCHROME1, MONOCHROME2 or RGB")

    _set_missing_transfer_syntax(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise BadInputError(
            f"DICOM pixel data cannot be decoded ({syntax_name}): {_one_line(exc)}", path=path,
            hint="compressed DICOM needs a pydicom decoder plugin (e.g. pylibjpeg) "
                 "or convert the file to uncompressed DICOM or PNG") from exc

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            lut = _dicom_luts()
            with np.errstate(over="ignore", invalid="ignore"):  # checked for NaN/inf below
                arr = lut.apply_modality_lut(arr, ds)
                arr = lut.apply_voi_lut(arr, ds)
        except Exception as exc:
            raise BadInputError(f"has an invalid modality or VOI LUT / window: {_one_line(exc)}",
                                path=path, hint="fix RescaleSlope/Intercept, WindowCenter/Width "
                                                "or the LUT sequences") from exc
        gray = np.asarray(arr, dtype=np.float64)
        if gray.ndim != 2:
            raise BadInputError(f"DICOM pixel array has shape {gray.shape}, expected rows x columns",
                                path=path, hint="expected a single-frame grayscale radiograph")
        if photometric == "MONOCHROME1":  # low values are white
            gray = -gray
    else:  # colour DICOM; pydicom returns RGB
        rgb = np.asarray(arr)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise BadInputError(f"colour DICOM pixel array has shape {rgb.shape}, expected rows x "
                                "columns x 3", path=path, hint="convert it to grayscale")
        wr, wg, wb = _LUMA_WEIGHTS
        rgb = rgb.astype(np.float64)
        gray = (wr * rgb[..., 0] + wg * rgb[..., 1] + wb * rgb[..., 2]) / 1000.0

    if not np.isfinite(gray).all():
        raise BadInputError("contains NaN or infinite pixel values after the modality/VOI LUT",
                            path=path, hint="check RescaleSlope/RescaleIntercept and the pixel data")
    lo, hi = float(gray.min()), float(gray.max())
    gray = (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)
    return _finish(gray, path)


def _set_missing_transfer_syntax(ds) -> None:
    """A bare dataset (no file meta) is uncompressed; name the encoding pydicom detected so
    that its pixel data can be decoded."""
    from pydicom.dataset import FileMetaDataset
    from pydicom import uid

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    encoding = getattr(ds, "original_encoding", None)
    if encoding is None or None in tuple(encoding):  # pydicom 2.x
        encoding = (getattr(ds, "is_implicit_VR", True), getattr(ds, "is_little_endian", True))
    implicit, little = bool(encoding[0]), bool(encoding[1])
    syntax = (uid.ImplicitVRLittleEndian if implicit else
              uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    meta.TransferSyntaxUID = syntax


def _dicom_luts():
    """The module holding ``apply_modality_lut`` / ``apply_voi_lut`` (pydicom 3 or 2)."""
    try:
        import pydicom.pixels as lut  # pydicom >= 3

        if hasattr(lut, "apply_voi_lut"):
            return lut
    except ImportError:  # pragma: no cover - pydicom 2.x
        pass
    from pydicom.pixel_data_handlers import util as lut  # pragma: no cover

    return lut  # pragma: no cover


def read_gray(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into a float32 ``H x W`` array in [0, 1] (see the module rules).

    ``max_pixels`` bounds the pixel count read from the header before decoding.
    Raises BadInputError for anything that cannot be decoded safely, and
    MissingDependencyError for DICOM when pydicom is not installed.
    """
    if not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise BadInputError(f"max_pixels={max_pixels!r}, expected a positive integer")
    p = Path(os.fspath(path))
    head = _check_file(p)
    has_magic = len(head) >= 132 and head[128:132] == _DICOM_MAGIC
    if has_magic or p.suffix.lower() in _DICOM_SUFFIXES:
        return _read_dicom(p, int(max_pixels), has_magic)
    return _read_pillow(p, int(max_pixels))


def read_mask(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a mask image as a bool ``H x W`` array: any nonzero pixel is True."""
    return read_gray(path, max_pixels=max_pixels) > 0


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_png(path: PathLike, array: np.ndarray, *, compress_level: int = 6) -> Path:
    """Write a 2-D gray, ``H x W x 3`` RGB or ``H x W x 4`` RGBA array as a PNG; returns the path.

    Accepted: bool (a mask, written 0/255), uint8 (as is), uint16 2-D (16-bit gray), float in
    [0, 1] (rounded to 8 bits). The parent folder is created when missing.
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
    img = Image.fromarray(np.ascontiguousarray(arr))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, format="PNG", compress_level=int(compress_level))
    except OSError as exc:
        raise BadInputError(f"cannot be written: {_one_line(exc)}", path=p,
                            hint="check that the folder is writable") from exc
    return p


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "PILLOW_FORMATS",
    "image_to_gray",
    "is_image_path",
    "read_gray",
    "read_mask",
    "write_png",
]
