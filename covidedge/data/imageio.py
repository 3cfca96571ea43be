"""Safe decoding of chest X-rays into grayscale float images in [0, 1], and PNG writing.

Every reader returns a float32 ``H x W`` array with 0 = black and 1 = white, whatever the file
held: 8-bit or 16-bit grayscale, RGB(A), palette, 1-bit, or DICOM. Anything that cannot be
decoded safely (empty, not an image, truncated, too many pixels, unsupported pixel mode,
unreadable DICOM, non-finite values) raises :class:`~covidedge.errors.BadInputError` with one
line naming the file, the problem and what to do.

**The intensity rule, one for every container:** a sample is divided by the top of the value
range its file *declares*, never by the values it happens to hold, so one hot pixel changes
nothing else and the same pixels give the same floats in any container.

* 8-bit (``L``, and RGB / palette / alpha channels): ``value / 255``.
* 16-bit (``I;16``, ``I;16B``, ``I`` holding at most 16 bits): ``value / (2**b - 1)`` where
  ``b`` is the PNG ``sBIT`` significant-bit count when the file has one and every sample fits
  in ``b`` bits (a 12-bit detector image stored as is), else 16 (the dtype's range; this
  includes a file that scaled its samples up to 16 bits as the PNG standard says). An 8-bit
  image stored as 16-bit as ``x * 257`` therefore gives exactly the floats of the 8-bit file.
  Samples above 16 bits are refused.
* DICOM (``.dcm`` or the ``DICM`` magic at byte 128), through pydicom imported lazily: modality
  LUT (rescale slope / intercept), VOI LUT or window centre / width, then the range those
  declare is mapped to [0, 1]: the window's or LUT's output range when one is applied, else the
  stored range of ``BitsStored`` (signed when ``PixelRepresentation`` is 1) through the
  rescale or modality LUT. ``MONOCHROME1`` is inverted (``1 - value``). A file read as DICOM
  must start like one (the ``DICM`` marker followed by a data element, or a data element at
  byte 0): anything else is refused from its first bytes, before pydicom parses it.
* RGB and palette: luminance with the ITU-R 601-2 weights (``0.299 R + 0.587 G + 0.114 B``),
  the same formula as Pillow's ``convert("L")`` but kept in float instead of rounded to 8 bits,
  so a gray RGB image gives exactly the floats of its 8-bit twin.
* Alpha (``RGBA``, ``LA``, ``PA``, palette with transparency): composited on black, i.e. the
  gray value is multiplied by ``alpha / 255``; fully opaque images are unchanged.
* 1-bit: 0 or 1.
* Values outside the declared range (a corrupt file) are clipped to [0, 1].
* The EXIF orientation tag is applied (``ImageOps.exif_transpose``).
* Multi-frame files (TIFF stacks): the first frame.

Memory: a decoded image is held as the file's own 8- or 16-bit samples and converted to float32
block by block (lookup tables for gray, float64 only inside a block for colour), so an
8000 x 8000 8-bit image costs its 64 MB of samples plus the 256 MB float32 result, never a
float64 or second full-size copy. ``reduce_for`` lets a caller
that only needs a model-sized input decode a large JPEG at a reduced DCT scale (Pillow
``draft``) or box-reduce other 8-bit images right after decoding (Pillow ``reduce``).
"""

from __future__ import annotations

import functools
import os
import struct
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from covidedge.errors import BadInputError, DatasetError, require

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

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_RGB_MODES = ("CMYK", "YCbCr")
_SUPPORTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", *_WIDE_MODES, *_TO_RGB_MODES)

# Luminance weights of ITU-R 601-2 in thousandths: integer sums stay exact, so a gray pixel
# (v, v, v) gives exactly v.
_LUMA_WEIGHTS = (299, 587, 114)
_HINT_FORMATS = "expected a PNG, JPEG, BMP, TIFF or DICOM chest X-ray"
# Pixels per block when an image is converted block by block (a few float64 temporaries of
# 8 MB each).
_BLOCK_PIXELS = 1 << 20


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
            head = fh.read(140)
    except OSError:
        return False
    has_magic = len(head) >= 132 and head[128:132] == _DICOM_MAGIC
    if not has_magic and p.suffix.lower() not in _DICOM_SUFFIXES:
        return False
    return _starts_like_dicom(head, size, has_magic)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Samples -> float32 in [0, 1] by the declared range
# ---------------------------------------------------------------------------------------------
_UNIT8 = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=20)
def _unit_lut(top: int) -> np.ndarray:
    """float32 table ``v -> min(v / top, 1)`` for every 16-bit value ``v`` (read-only)."""
    lut = np.minimum(np.arange(65536, dtype=np.float64) / float(top), 1.0).astype(np.float32)
    lut.setflags(write=False)
    return lut


def _blockwise(src, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float32 ``H x W`` from ``fn`` applied to blocks of rows of ``src``, an array or a Pillow
    image (whose rows are copied out block by block: no full-size copy of its samples)."""
    if isinstance(src, Image.Image):
        w, h = src.size

        def block(a: int, b: int) -> np.ndarray:
            return np.asarray(src.crop((0, a, w, b)))
    else:
        h, w = src.shape[:2]

        def block(a: int, b: int) -> np.ndarray:
            return src[a:b]
    out = np.empty((h, w), dtype=np.float32)
    rows = max(1, _BLOCK_PIXELS // max(1, w))
    for a in range(0, h, rows):
        b = min(h, a + rows)
        out[a:b] = fn(block(a, b))
    return out


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luminance of an ``H x W x 3`` uint8 array, in [0, 1] (float64)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    wr, wg, wb = _LUMA_WEIGHTS
    return (wr * r + wg * g + wb * b) / (1000.0 * 255.0)


def _alpha(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64) / 255.0


def _wide_top(lo: int, hi: int, source: object, significant_bits: Optional[int]) -> int:
    """The divisor of 16-bit samples spanning ``lo..hi``: ``2**significant_bits - 1`` when
    declared and every sample fits, else 65535 (see the module's intensity rule)."""
    if lo < 0 or hi > 65535:
        raise BadInputError(
            f"integer pixels span {lo}..{hi}, expected unsigned values of at most 16 bits",
            path=source, hint="save the image as an 8- or 16-bit grayscale PNG")
    if significant_bits is not None and 1 <= int(significant_bits) < 16:
        declared = 2 ** int(significant_bits) - 1
        if hi <= declared:
            return declared
    return 65535


def _wide_to_unit(values: np.ndarray, source: object, significant_bits: Optional[int] = None) -> np.ndarray:
    """16-bit samples (or 32-bit integers holding 16-bit values) as float32 in [0, 1]."""
    values = np.asarray(values)
    if values.size == 0:
        return values.astype(np.float32)
    if values.dtype.kind not in "iu":
        raise BadInputError(f"has {values.dtype} samples, expected unsigned integers",
                            path=source, hint="save the image as an 8- or 16-bit grayscale PNG")
    top = _wide_top(int(values.min()), int(values.max()), source, significant_bits)
    lut = _unit_lut(top)
    return _blockwise(values, lambda a: lut[a.astype(np.int64) if a.dtype.kind == "i" else a])


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
        gray = _blockwise(img, lambda a: a.astype(np.float32))
    elif mode == "L":
        gray = _blockwise(img, lambda a: _UNIT8[a])
    elif mode == "LA":
        gray = _blockwise(img, lambda a: a[..., 0] / 255.0 * _alpha(a[..., 1]))
    elif mode == "RGB":
        gray = _blockwise(img, _luminance)
    elif mode == "RGBA":
        gray = _blockwise(img, lambda a: _luminance(a[..., :3]) * _alpha(a[..., 3]))
    else:  # 16-bit / 32-bit integer grayscale
        lo, hi = _extrema(img)
        lut = _unit_lut(_wide_top(lo, hi, source, significant_bits))
        gray = _blockwise(img, lambda a: lut[a.astype(np.int64) if a.dtype.kind == "i" else a])
    return _finish(gray, source)


def _finish(gray: np.ndarray, source: object) -> np.ndarray:
    """Final checks shared by all decoders: 2-D, finite, inside [0, 1]; float32 C-contiguous."""
    if gray.ndim != 2 or gray.shape[0] == 0 or gray.shape[1] == 0:
        raise BadInputError(f"decoded to shape {gray.shape}, expected a non-empty H x W image",
                            path=source, hint=_HINT_FORMATS)
    if gray.dtype != np.float32 or not gray.flags.writeable or not gray.flags.c_contiguous:
        gray = np.array(gray, dtype=np.float32, order="C")
    if not np.isfinite(gray.min()) or not np.isfinite(gray.max()):
        raise BadInputError("contains NaN or infinite pixel values after conversion",
                            path=source, hint="check the file's rescale slope/intercept or re-export it")
    np.clip(gray, 0.0, 1.0, out=gray)
    return gray


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------
def _check_file(path: Path) -> Tuple[bytes, int]:
    """Raise BadInputError for a missing, non-regular or empty file; return its first 140 bytes
    and its size in bytes."""
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
            return fh.read(140), size
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
        except Exception as exc:  # damaged headers raise assorted errors inside Pillow's plugins
            raise BadInputError(f"cannot be opened as an image: {_one_line(exc)}", path=path,
                                hint=_HINT_FORMATS) from exc


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


def _as_size(size) -> Tuple[int, int]:
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise BadInputError(f"reduce_for={tuple(size)!r}, expected (height, width) in positive pixels")
    return h, w


def _reduction(width: int, height: int, reduce_for: Optional[Tuple[int, int]]) -> int:
    """Integer factor by which a ``width x height`` image may shrink and still be at least
    twice ``reduce_for = (H, W)`` on both sides; 1 when it may not."""
    if reduce_for is None:
        return 1
    h, w = reduce_for
    return max(1, min(width // (2 * w), height // (2 * h)))


def _read_pillow(path: Path, max_pixels: int, reduce_for: Optional[Tuple[int, int]] = None,
                 header_only: bool = False):
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
            raise BadInputError(f"is a decompression bomb: {_one_line(exc)}", path=path,
                                hint="downscale the image if it is genuine") from exc
        except BadInputError:
            raise
        except Exception as exc:  # truncated or corrupt data raise assorted errors in Pillow
            raise BadInputError(f"is truncated or corrupt ({img.format}): {_one_line(exc)}",
                                path=path, hint="re-copy or re-export the image") from exc
        bits = _png_significant_bits(path) if img.format == "PNG" and out.mode in _WIDE_MODES else None
        try:
            return image_to_gray(out, source=path, significant_bits=bits)
        except BadInputError:
            raise
        except Exception as exc:  # a damaged palette or mode conversion
            raise BadInputError(f"has pixel data that cannot be converted: {_one_line(exc)}",
                                path=path, hint="re-save it as an 8- or 16-bit grayscale PNG") from exc


# DICOM ----------------------------------------------------------------------------------------
def _plausible_dicom_element(data: bytes, file_size: int) -> bool:
    """True when ``data`` starts like a DICOM data element (little endian): an even group
    from 0002 to 7FE0, then either a two-letter VR (explicit) or a length that fits the file
    (implicit). A file of zeros, text or another image format fails this."""
    if len(data) < 8:
        return False
    group, _element = struct.unpack("<HH", data[:4])
    if group < 0x0002 or group > 0x7FE0 or group % 2:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    (length,) = struct.unpack("<I", data[4:8])
    return length == 0xFFFFFFFF or length <= file_size


def _starts_like_dicom(head: bytes, size: int, has_magic: bool) -> bool:
    """True when the file's first 140 bytes ``head`` hold a data element where DICOM puts one:
    after the ``DICM`` marker, or at byte 0 for a bare dataset."""
    return (_plausible_dicom_element(head[132:140], size) if has_magic
            else _plausible_dicom_element(head[:8], size))


def _check_dicom_header(path: Path, head: bytes, size: int, has_magic: bool) -> None:
    """Refuse from its first bytes a file named .dcm that does not start like DICOM, so that a
    large non-DICOM file is rejected at once instead of parsed element by element."""
    if not _starts_like_dicom(head, size, has_magic):
        where = ("has the 'DICM' marker at byte 128 but no DICOM element after it" if has_magic
                 else "does not start like a DICOM file (no 'DICM' marker at byte 128 and no "
                      "DICOM element at byte 0)")
        raise BadInputError(where, path=path,
                            hint="re-export the study as DICOM, or if it is a PNG/JPEG give it "
                                 "that suffix")


def _lut_bits(item) -> int:
    return int(list(item.LUTDescriptor)[2])


def _dicom_declared_range(ds) -> Tuple[float, float]:
    """``(lo, hi)``: the value range the header declares for the pixels after the modality LUT
    (or rescale) and the VOI LUT (or window), as pydicom applies them."""
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        return 0.0, float(2 ** _lut_bits(voi[0]) - 1)
    # A window keeps the modality output range (PS3.3 C.11.2.1.2), so both cases end here.
    modality = ds.get("ModalityLUTSequence")
    if modality:
        return 0.0, float(2 ** _lut_bits(modality[0]) - 1)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if not 1 <= bits <= 32:
        raise ValueError(f"BitsStored={bits} is outside 1..32")
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0 ** bits - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _read_dicom(path: Path, max_pixels: int, has_magic: bool, header_only: bool = False):
    pydicom = require("pydicom", extra="dicom", purpose=f"reading DICOM file {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of a header
            ds = pydicom.dcmread(str(path), force=not has_magic, stop_before_pixels=header_only)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct/Value errors
        raise BadInputError(f"is not a readable DICOM file: {_one_line(exc)}", path=path,
                            hint="re-export the study, or convert it to a 16-bit PNG") from exc

    if not header_only and not any(
            k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BadInputError("is a DICOM file without pixel data", path=path,
                            hint="pass the image instance of the study, not a report or SR")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except Exception as exc:
        raise BadInputError(f"has an unreadable image header: {_one_line(exc)}", path=path,
                            hint="re-export the DICOM file") from exc
    if rows <= 0 or cols <= 0:
        raise BadInputError(f"DICOM header says {rows}x{cols} pixels", path=path,
                            hint="expected a non-empty radiograph; re-export the DICOM file")
    pixels = rows * cols * frames
    if pixels > max_pixels:
        raise _bomb_error(path, pixels, max_pixels, f"DICOM header says {frames}x{rows}x{cols}, which")
    if frames != 1:
        raise BadInputError(f"has {frames} frames, expected a single-frame radiograph",
                            path=path, hint="extract the frame to read into its own file")
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith("YBR"):
        raise BadInputError(f"has photometric interpretation {photometric!r}", path=path,
                            hint="expected MONOCHROME1, MONOCHROME2 or RGB")
    if header_only:
        return rows, cols

    _set_missing_transfer_syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise BadInputError(
            f"DICOM pixel data cannot be decoded ({syntax_name}): {_one_line(exc)}", path=path,
            hint="compressed DICOM needs a pydicom decoder plugin (e.g. pylibjpeg) "
                 "or convert the file to uncompressed DICOM or PNG") from exc

    index = None  # stored values as table indices, when the LUTs are applied through a table
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        arr = np.asarray(arr)
        if arr.ndim != 2:
            raise BadInputError(f"DICOM pixel array has shape {arr.shape}, expected rows x columns",
                                path=path, hint="expected a single-frame grayscale radiograph")
        source = arr
        if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
            # Integer pixels of at most 16 bits: the modality and VOI LUTs are applied by the
            # same pydicom functions to every possible stored value once, and the pixels look
            # their result up: the same numbers without full-size float64 arrays.
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            unsigned = np.dtype(f"u{arr.dtype.itemsize}")
            source = np.arange(2 ** (8 * arr.dtype.itemsize), dtype=np.int64).astype(unsigned)
            source = source.view(arr.dtype)  # entry i holds the value whose bits are i
            index = arr.view(unsigned)
        try:
            lut = _dicom_luts()
            with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NaN/inf are checked below
                gray = lut.apply_modality_lut(source, ds)
                gray = lut.apply_voi_lut(gray, ds)
                lo, hi = _dicom_declared_range(ds)
        except Exception as exc:
            raise BadInputError(f"has an invalid modality or VOI LUT / window: {_one_line(exc)}",
                                path=path, hint="fix RescaleSlope/Intercept, WindowCenter/Width, "
                                                "BitsStored or the LUT sequences") from exc
        gray = np.asarray(gray)
    else:  # colour DICOM; pydicom returns RGB
        rgb = np.asarray(arr)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise BadInputError(f"colour DICOM pixel array has shape {rgb.shape}, expected rows x "
                                "columns x 3", path=path, hint="convert it to grayscale")
        wr, wg, wb = _LUMA_WEIGHTS
        rgb = rgb.astype(np.float64)
        gray = (wr * rgb[..., 0] + wg * rgb[..., 1] + wb * rgb[..., 2]) / 1000.0
        bits = int(ds.get("BitsStored") or 8)
        lo, hi = 0.0, float(2 ** min(max(bits, 1), 32) - 1)

    with np.errstate(over="ignore", invalid="ignore"):
        gray = gray.astype(np.float64, copy=False)
        finite = np.isfinite(gray)
        if not finite.all() and (index is None or not finite[index].all()):
            raise BadInputError("contains NaN or infinite pixel values after the modality/VOI LUT",
                                path=path, hint="check RescaleSlope/RescaleIntercept and the pixel data")
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            raise BadInputError(f"declares the pixel value range {lo:g}..{hi:g}, which is empty "
                                "or not finite", path=path,
                                hint="check RescaleSlope/RescaleIntercept and BitsStored")
        gray = (gray - lo) / (hi - lo)
        if photometric == "MONOCHROME1":  # low values are white
            gray = 1.0 - gray
    if index is not None:
        table = np.where(finite, gray, 0.0).astype(np.float32)  # unused entries may be inf
        gray = _blockwise(index, lambda a: table[a])
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


def _dispatch(path: PathLike, max_pixels, reduce_for=None, header_only: bool = False):
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise BadInputError(f"max_pixels={max_pixels!r}, expected a positive integer")
    p = Path(os.fspath(path))
    head, size = _check_file(p)
    has_magic = len(head) >= 132 and head[128:132] == _DICOM_MAGIC
    if has_magic or p.suffix.lower() in _DICOM_SUFFIXES:
        _check_dicom_header(p, head, size, has_magic)
        return _read_dicom(p, int(max_pixels), has_magic, header_only=header_only)
    return _read_pillow(p, int(max_pixels), reduce_for, header_only=header_only)


def read_gray(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              reduce_for: Optional[Sequence[int]] = None) -> np.ndarray:
    """Decode an image file into a float32 ``H x W`` array in [0, 1] (see the module rules).

    ``max_pixels`` bounds the pixel count read from the header before decoding.
    ``reduce_for = (H, W)``: the caller only needs an input of that size, so an image at least
    four times larger on both sides may be returned reduced by an integer factor (JPEG: Pillow
    ``draft``; other 8-bit images: ``reduce``), never below twice ``(H, W)``; DICOM is always
    read at full size. Raises BadInputError for anything that cannot be decoded safely, and
    MissingDependencyError for DICOM when pydicom is not installed.
    """
    target = None if reduce_for is None else _as_size(reduce_for)
    return _dispatch(path, max_pixels, target)


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
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, format="PNG", compress_level=int(compress_level), pnginfo=pnginfo)
    except OSError as exc:
        raise BadInputError(f"cannot be written: {_one_line(exc)}", path=p,
                            hint="check that the folder is writable") from exc
    return p


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "PILLOW_FORMATS",
    "image_to_gray",
    "is_dicom_path",
    "is_image_path",
    "read_gray",
    "read_mask",
    "write_png",
]
