"""Fuzzing the decoders: mutated PNG, JPEG, TIFF and DICOM bytes either decode to a valid gray
image or fail with covidedge's own one-line error; never another exception.

The seeded mutation loop runs for ``COVIDEDGE_FUZZ_SECONDS`` (default 3) in the suite; set it
higher for a longer search (e.g. ``COVIDEDGE_FUZZ_SECONDS=600``). The same budget drives the
coverage-guided atheris run when atheris is installed. A failure names the seed and iteration
and saves the input so that it can be replayed with ``read_gray``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidedge.data.imageio import image_shape, read_gray
from covidedge.errors import CovidEdgeError

BUDGET_S = float(os.environ.get("COVIDEDGE_FUZZ_SECONDS", "3"))
#: Small enough that a mutated header can never make one case slow.
MAX_PIXELS = 1 << 18
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _dicom_bytes(pixels: np.ndarray, bits: int, window: bool, photometric: str,
                 voi_lut_bits: int = 0) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(bits), photometric])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("fuzz.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2" if bits > 8 else "u1").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 2 ** (bits - 1), 2 ** bits
    if voi_lut_bits:  # a VOI LUT over every stored value, with 8- or 16-bit entries
        from pydicom.dataset import Dataset

        item = Dataset()
        item.add_new(0x00283002, "US", [2 ** bits, 0, voi_lut_bits])
        table = (np.arange(2 ** bits) * (2 ** voi_lut_bits - 1) // (2 ** bits - 1)).astype("<u2")
        item.add_new(0x00283006, "OW", table.tobytes())
        ds.VOILUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _with_sbit(png: bytes, bits: int) -> bytes:
    """``png`` with an sBIT chunk after IHDR (a declared bit depth)."""
    import struct
    import zlib

    body = b"sBIT" + bytes([bits])
    return png[:33] + struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


def seed_files() -> dict:
    """Small valid files of every container, named by their suffix."""
    yy, xx = np.mgrid[0:24, 0:20]
    g8 = ((xx * 9 + yy * 5) % 256).astype(np.uint8)
    g16 = g8.astype(np.uint16) * 257
    rgb = np.dstack([g8, 255 - g8, g8 // 2])
    seeds = {
        "gray8.png": _encode(Image.fromarray(g8), "PNG"),
        "gray16.png": _encode(Image.fromarray(g16), "PNG"),
        "gray12.png": _encode(Image.fromarray(g16 >> 4), "PNG"),  # 12 bits used, none declared
        "gray12_sbit.png": _with_sbit(_encode(Image.fromarray(g16 >> 4), "PNG"), 12),
        "rgba.png": _encode(Image.fromarray(np.dstack([rgb, g8])), "PNG"),
        "palette.png": _encode(Image.fromarray(rgb).quantize(8), "PNG"),
        "gray.jpg": _encode(Image.fromarray(g8), "JPEG", quality=80),
        "rgb.jpg": _encode(Image.fromarray(rgb), "JPEG", quality=80),
        "gray8.tif": _encode(Image.fromarray(g8), "TIFF"),
        "gray16.tif": _encode(Image.fromarray(g16), "TIFF", compression="tiff_deflate"),
        "rgb_lzw.tif": _encode(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"),
        "gray.bmp": _encode(Image.fromarray(g8), "BMP"),
    }
    try:
        import pydicom  # noqa: F401

        seeds["mono2_12.dcm"] = _dicom_bytes(g16 >> 4, 12, True, "MONOCHROME2")
        seeds["mono1_8.dcm"] = _dicom_bytes(g8, 8, False, "MONOCHROME1")
        seeds["voi_lut8_12.dcm"] = _dicom_bytes(g16 >> 4, 12, False, "MONOCHROME2", voi_lut_bits=8)
        seeds["voi_lut16_12.dcm"] = _dicom_bytes(g16 >> 4, 12, True, "MONOCHROME2", voi_lut_bits=16)
    except ImportError:
        pass
    return seeds


def mutate(data: bytes, rng: np.random.Generator, seeds: list) -> bytes:
    """One to four random edits: bit flips, byte overwrites, interesting integers, inserted or
    deleted spans, truncation, or a splice with another seed."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if not b:
            b = bytearray(b"\0")
        kind = int(rng.integers(0, 7))
        i = int(rng.integers(0, len(b)))
        if kind == 0:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            n = int(rng.integers(1, 9))
            b[i:i + n] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        elif kind == 2:
            v = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
            width = int(rng.choice([1, 2, 4]))
            order = "big" if rng.integers(0, 2) else "little"
            b[i:i + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, order)
        elif kind == 3:
            n = int(rng.integers(1, 64))
            b[i:i] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        elif kind == 4:
            del b[i:i + int(rng.integers(1, 64))]
        elif kind == 5:
            del b[i:]
        else:
            other = seeds[int(rng.integers(0, len(seeds)))]
            j = int(rng.integers(0, len(other)))
            b[i:] = other[j:]
    return bytes(b)


def check_one(path: Path) -> None:
    """Decode ``path``; only a valid image or a CovidEdgeError is acceptable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            shape = image_shape(path, max_pixels=MAX_PIXELS)
        except CovidEdgeError:
            shape = None
        try:
            gray = read_gray(path, max_pixels=MAX_PIXELS)
        except CovidEdgeError as exc:
            text = str(exc)
            assert text and "\n" not in text and str(path) in text, text
            return
    assert gray.dtype == np.float32 and gray.ndim == 2 and gray.size > 0
    assert np.isfinite(gray).all() and gray.min() >= 0.0 and gray.max() <= 1.0
    assert shape is None or shape == gray.shape, (shape, gray.shape)


def test_seed_files_decode(tmp_path):
    for name, data in seed_files().items():
        p = tmp_path / name
        p.write_bytes(data)
        gray = read_gray(p)
        assert gray.shape == (24, 20), name


def test_seeded_mutation_loop(tmp_path):
    seeds = seed_files()
    names = sorted(seeds)
    blobs = [seeds[n] for n in names]
    rng = np.random.default_rng(20240607)
    deadline = time.perf_counter() + BUDGET_S
    cases = 0
    while time.perf_counter() < deadline or cases < len(names):
        k = cases % len(names)
        data = mutate(blobs[k], rng, blobs)
        path = tmp_path / f"case{cases % 8}{Path(names[k]).suffix}"
        path.write_bytes(data)
        try:
            check_one(path)
        except BaseException as exc:  # report how to replay it, then fail
            keep = tmp_path / f"crash_{cases}{path.suffix}"
            keep.write_bytes(data)
            raise AssertionError(f"case {cases} (mutated {names[k]}, saved as {keep}) raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        cases += 1
    assert cases >= len(names)


ATHERIS_TARGET = r'''
import sys, warnings, tempfile, os
import atheris
with atheris.instrument_imports(include=["covidedge", "PIL", "pydicom"]):
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401
    import pydicom.pixels  # noqa: F401
    from covidedge.data.imageio import read_gray
    from covidedge.errors import CovidEdgeError
SUFFIXES = (".png", ".jpg", ".tif", ".dcm")
tmp = tempfile.mkdtemp()

def one(data):
    if not data:
        return
    path = os.path.join(tmp, "case" + SUFFIXES[data[0] % len(SUFFIXES)])
    with open(path, "wb") as fh:
        fh.write(data[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_gray(path, max_pixels=1 << 18)
        except CovidEdgeError:
            pass

atheris.Setup(sys.argv, one)
atheris.Fuzz()
'''


def test_atheris_coverage_guided_fuzz(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    prefix = {".png": 0, ".jpg": 1, ".tif": 2, ".dcm": 3, ".bmp": 0}
    for name, data in seed_files().items():
        (corpus / name).write_bytes(bytes([prefix[Path(name).suffix]]) + data)
    target = tmp_path / "target.py"
    target.write_text(ATHERIS_TARGET)
    seconds = max(1, int(round(BUDGET_S)))
    # -timeout: one input decoding for more than 30 s is reported (as a failure) with its bytes
    proc = subprocess.run(
        [sys.executable, str(target), f"-max_total_time={seconds}", "-timeout=30", "-seed=1",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=2 * seconds + 300, cwd=tmp_path)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"atheris found a crash:\n{tail}"
