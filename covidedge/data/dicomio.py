"""Decoding of DICOM radiographs with pydicom (imported lazily), safely.

A file read as DICOM (a ``.dcm`` / ``.dicom`` name or the ``DICM`` magic at byte 128) must start
like one: the ``DICM`` marker followed by a data element, or a data element at byte 0 for a bare
dataset; anything else is refused from its first bytes, before pydicom parses it. The header
is then checked (pixel data present, rows x columns x frames under the caller's limit, a single
frame, a monochrome or RGB/YBR photometric interpretation) before the pixels are decoded.

Intensity (the DICOM case of :mod:`covidedge.data.intensity`): the modality LUT (rescale
slope / intercept), then the VOI LUT or window centre / width, as pydicom applies them; then
the range those declare is mapped to [0, 1]: the window's or LUT's output range when one is
applied, else the stored range of ``BitsStored`` (signed when ``PixelRepresentation`` is 1)
through the rescale or modality LUT. ``MONOCHROME1`` is inverted (``1 - value``). Integer
pixels of at most 16 bits go through a table of every possible stored value, so no full-size
float64 array is made.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np

from covidedge.data.checks import check_pixel_count
from covidedge.data.intensity import LUMA_WEIGHTS, blockwise, finish_gray
from covidedge.errors import BadInputError, require, one_line

#: The marker at byte 128 of a DICOM file (after the 128-byte preamble).
DICOM_MAGIC = b"DICM"
#: File suffixes read as DICOM even without the marker (lower case).
DICOM_SUFFIXES = (".dcm", ".dicom")


def has_dicom_magic(head: bytes) -> bool:
    """True when a file's first bytes ``head`` hold :data:`DICOM_MAGIC` at byte 128."""
    return len(head) >= 132 and head[128:132] == DICOM_MAGIC


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


def starts_like_dicom(head: bytes, size: int, has_magic: bool) -> bool:
    """True when the file's first 140 bytes ``head`` hold a data element where DICOM puts one:
    after the ``DICM`` marker, or at byte 0 for a bare dataset."""
    return (_plausible_dicom_element(head[132:140], size) if has_magic
            else _plausible_dicom_element(head[:8], size))


def check_dicom_header(path: Path, head: bytes, size: int, has_magic: bool) -> None:
    """Refuse from its first bytes a file named .dcm that does not start like DICOM, so that a
    large non-DICOM file is rejected at once instead of parsed element by element."""
    if not starts_like_dicom(head, size, has_magic):
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


def read_dicom(path: Path, max_pixels: int, has_magic: bool, header_only: bool = False):
    """Float32 ``H x W`` gray in [0, 1] of a single-frame DICOM image (see the module), or with
    ``header_only`` its ``(H, W)`` from the header alone.

    ``has_magic``: the file has the ``DICM`` marker (else it is parsed as a bare dataset).
    Raises BadInputError, and MissingDependencyError when pydicom is not installed.
    """
    pydicom = require("pydicom", extra="dicom", purpose=f"reading DICOM file {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of a header
            ds = pydicom.dcmread(str(path), force=not has_magic, stop_before_pixels=header_only)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct/Value errors
        raise BadInputError(f"is not a readable DICOM file: {one_line(exc)}", path=path,
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
        raise BadInputError(f"has an unreadable image header: {one_line(exc)}", path=path,
                            hint="re-export the DICOM file") from exc
    if rows <= 0 or cols <= 0:
        raise BadInputError(f"DICOM header says {rows}x{cols} pixels", path=path,
                            hint="expected a non-empty radiograph; re-export the DICOM file")
    pixels = rows * cols * frames
    check_pixel_count(path, pixels, max_pixels, f"DICOM header says {frames}x{rows}x{cols}, which")
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
            f"DICOM pixel data cannot be decoded ({syntax_name}): {one_line(exc)}", path=path,
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
                gray = _apply_voi(gray, ds, lut)
                lo, hi = _dicom_declared_range(ds)
        except Exception as exc:
            raise BadInputError(f"has an invalid modality or VOI LUT / window: {one_line(exc)}",
                                path=path, hint="fix RescaleSlope/Intercept, WindowCenter/Width, "
                                                "BitsStored or the LUT sequences") from exc
        gray = np.asarray(gray)
    else:  # colour DICOM; pydicom returns RGB
        rgb = np.asarray(arr)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise BadInputError(f"colour DICOM pixel array has shape {rgb.shape}, expected rows x "
                                "columns x 3", path=path, hint="convert it to grayscale")
        wr, wg, wb = LUMA_WEIGHTS
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
        gray = blockwise(index, lambda a: table[a])
    return finish_gray(gray, path)


def _voi_lut_table(item, ds) -> Tuple[np.ndarray, int]:
    """``(entries, first_map)`` of a VOI LUT item: its LUTData as int64 (OW bytes or US values,
    as pydicom reads them) and the first stored value it maps."""
    descriptor = [int(v) for v in list(item.LUTDescriptor)]
    if len(descriptor) != 3:
        raise ValueError(f"LUTDescriptor has {len(descriptor)} values, expected 3")
    entries, first_map, bits = descriptor
    entries = entries or 2 ** 16
    if not (bits == 8 or 10 <= bits <= 16):
        raise ValueError(f"VOI LUT entries of {bits} bits; expected 8 or 10..16")
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        meta = getattr(ds, "file_meta", None)
        little = True
        try:
            little = bool(meta._tsyntax_encoding[1]) if meta is not None else bool(ds.original_encoding[1])
        except Exception:
            pass
        words = np.frombuffer(bytes(raw), dtype="<u2" if little else ">u2")
        data = words[:entries].astype(np.int64)
    else:
        data = np.asarray(list(raw) if not isinstance(raw, (int, float)) else [raw], dtype=np.int64)
    if data.size < entries:
        raise ValueError(f"VOI LUT has {data.size} entries, its descriptor says {entries}")
    return data[:entries], first_map


def _apply_voi(values: np.ndarray, ds, lut) -> np.ndarray:
    """The VOI LUT of ``ds`` applied to ``values`` (after the modality LUT) with a wide index:
    pydicom's ``apply_voi`` indexes an 8-bit LUT with uint8, so a LUT of more than 256 entries
    wraps and an image decodes near-black. Without a VOI LUT, the window (pydicom's)."""
    voi = ds.get("VOILUTSequence")
    if not voi or voi[0].get("LUTDescriptor") is None or voi[0].get("LUTData") is None:
        return lut.apply_voi_lut(values, ds)
    table, first_map = _voi_lut_table(voi[0], ds)
    index = np.asarray(values)
    index = np.floor(index).astype(np.int64) if index.dtype.kind == "f" else index.astype(np.int64)
    index -= first_map
    np.clip(index, 0, table.size - 1, out=index)
    return table[index]


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


__all__ = ["DICOM_MAGIC", "DICOM_SUFFIXES", "check_dicom_header", "has_dicom_magic", "read_dicom",
           "starts_like_dicom"]
