"""Bad inputs in a batch: each gives one line naming the file, the good images are still done and
written, and the exit code says whether some (1) or all (3) inputs failed."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from covidedge.cli.main import main
from tests.graphs import smooth_xray, xray


# ---------------------------------------------------------------------------------------------
# Bad files, each small on disk
# ---------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path, width=20000, height=20000):
    """A 74-byte PNG whose header claims width x height 8-bit gray pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))


def write_truncated(path, fmt):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])


def write_dicom(path, pixels: np.ndarray, **attrs):
    """A minimal single-frame MONOCHROME2 DICOM; float32 pixels go to FloatPixelData."""
    pydicom = pytest.importorskip("pydicom", reason="pydicom is needed to write DICOM test files")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if pixels.dtype == np.float32:
        ds.BitsAllocated = 32
        ds.FloatPixelData = pixels.tobytes()
    else:
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).Rows == pixels.shape[0]


def make_bad(kind: str, folder) -> Path:
    p = folder / {"zero-byte": "zero.png", "text-as-png": "text.png", "truncated-png": "trunc.png",
                  "truncated-jpeg": "trunc.jpg", "bomb": "bomb.png", "unreadable-dicom": "broken.dcm",
                  "nan-dicom": "nan.dcm"}[kind]
    if kind == "zero-byte":
        p.write_bytes(b"")
    elif kind == "text-as-png":
        p.write_text("this is a text file, not an X-ray\n")
    elif kind == "truncated-png":
        write_truncated(p, "PNG")
    elif kind == "truncated-jpeg":
        write_truncated(p, "JPEG")
    elif kind == "bomb":
        write_bomb_png(p)
    elif kind == "unreadable-dicom":
        p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00" + b"\xff" * 40)
    elif kind == "nan-dicom":
        pixels = np.ones((8, 8), np.float32)
        pixels[2, 2] = np.nan
        write_dicom(p, pixels)
    return p


#: kind -> words the one-line message must hold
BAD = {
    "zero-byte": "empty file (0 bytes)",
    "text-as-png": "not a recognisable image",
    "truncated-png": "truncated or corrupt",
    "truncated-jpeg": "truncated or corrupt",
    "bomb": "decompression bomb",
    "unreadable-dicom": "DICOM",
    "nan-dicom": "NaN or infinite",
}


@pytest.fixture()
def good(tmp_path):
    """Two good images: an 8-bit PNG and a 16-bit DICOM."""
    folder = tmp_path / "good"
    folder.mkdir()
    Image.fromarray(smooth_xray(64, 64)).save(folder / "good.png")
    write_dicom(folder / "good.dcm", xray(48, 40).astype(np.uint16) * 257)
    return [folder / "good.png", folder / "good.dcm"]


def _lines_naming(text: str, name: str):
    return [ln for ln in text.splitlines() if name in ln]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(BAD))
def test_one_bad_file_gives_one_line_and_the_rest_is_done(kind, models, good, tmp_path):
    cls, seg = models
    bad = make_bad(kind, tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(command, [str(good[0]), str(bad), str(good[1]), "-c", str(cls),
                                       "-s", str(seg), "--out", str(out)])
    assert res.exit_code == 1, res.output
    (line,) = _lines_naming(res.stderr, bad.name)
    assert line.startswith(f"skipped: {bad}: ") and BAD[kind] in line
    assert "Traceback" not in res.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["source"], r["status"]) for r in rows] == [
        (str(good[0]), "ok"), (str(bad), "failed"), (str(good[1]), "ok")]
    assert rows[1]["exit_code"] == "3" and BAD[kind] in rows[1]["error"]
    assert rows[2]["height"] == "48" and rows[2]["width"] == "40"  # the DICOM, at its own size
    assert (out / "good_overlay.png").exists() and (out / "good_2_lungs.png").exists()
    assert [ln.split()[0] for ln in res.stdout.splitlines()[1:]] == ["good/good.png", "good/good.dcm"]


def test_all_bad_files_through_the_entry_point(models, good, tmp_path, capsys):
    cls = models[0]
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = [make_bad(kind, folder) for kind in BAD]

    with pytest.raises(SystemExit) as exc:
        main(["infer", str(folder), str(good[0]), "-c", str(cls), "--format", "json"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    for p in bad:
        assert len(_lines_naming(err, p.name)) == 1, (p.name, err)

    with pytest.raises(SystemExit) as exc:
        main(["infer", str(folder), "-c", str(cls)])
    assert exc.value.code == 3
    captured = capsys.readouterr()
    assert captured.out == ""  # no table without a single good image
    assert captured.err.splitlines()[-1] == f"error: all {len(BAD)} input images failed"
    assert sum(ln.startswith("skipped: ") for ln in captured.err.splitlines()) == len(BAD)


def test_real_process_prints_one_line_per_bad_file_and_no_library_warnings(models, good, tmp_path):
    """pydicom warns while reading a broken DICOM; a real run shows only the one 'skipped:' line."""
    import subprocess
    import sys

    bad = make_bad("unreadable-dicom", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "covidedge", "infer", str(bad), str(good[0]),
                           "-c", str(models[0])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.splitlines()
    assert len(err) == 3, proc.stderr
    assert err[0].startswith("backend: ") and err[2].startswith("2 images: 1 ok, 1 failed")
    assert err[1].startswith(f"skipped: {bad}: ") and "DICOM" in err[1]


def test_folder_without_images_is_an_error(models, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(empty), "-c", str(models[0])])
    assert exc.value.code == 3
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == (f"skipped: {empty}: folder has no images (.png, .jpg, .jpeg, .bmp, .tif, "
                       ".tiff, .dcm) in it or its subfolders")
    assert err[-1].startswith("error: no images to process in ")

    res = CliRunner().invoke(command, [str(empty), "-c", str(models[0])])
    assert res.exit_code != 0 and type(res.exception).__name__ == "BadInputError"


def test_missing_path_beside_a_good_image_is_a_partial_failure(models, good, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(good[0]), str(tmp_path / "nope.png"), "-c", str(models[0])])
    assert exc.value.code == 1
    assert f"skipped: {tmp_path / 'nope.png'}: no such file or folder" in capsys.readouterr().err


def test_nan_array_is_a_failure_record_through_the_api(models):
    from covidedge.runtime.pipeline import Pipeline

    nan = np.full((32, 32), np.nan, np.float32)
    with Pipeline(classifier=str(models[0])) as p:
        results = list(p.predict_many([xray(), nan, xray()]))
    assert [r.ok for r in results] == [True, False, True]
    assert "NaN" in results[1].error and results[1].exit_code == 3


def test_engine_built_for_another_gpu_is_refused_before_reading_images(tmp_path, capsys):
    """A TensorRT engine whose manifest names an A100: on any other machine (or one without
    TensorRT) infer stops with exit 4 and one line saying what differs, before any image is read."""
    from covidedge.machine import probe_machine
    from covidedge.formats.manifest import EngineManifest, manifest_path_for
    from covidedge.fileio import sha256_file
    from covidedge.spec import classifier_spec

    if (probe_machine().get("gpu") or "").find("A100") >= 0:
        pytest.skip("this machine has an A100, the GPU the fake engine claims")
    engine = tmp_path / "cls.engine"
    engine.write_bytes(b"not really a plan, never deserialised")
    EngineManifest(
        backend="tensorrt", backend_version="10.3.0", precision="fp16",
        spec=classifier_spec(input_size=(32, 32)).to_dict(), engine_file=engine.name,
        engine_sha256=sha256_file(engine), engine_bytes=engine.stat().st_size, onnx_sha256="0" * 64,
        device={"gpu": "NVIDIA A100-SXM4-80GB", "gpu_compute_capability": "8.0"},
    ).write(manifest_path_for(engine))
    bad = tmp_path / "unread.png"
    bad.write_bytes(b"")  # would give a 'skipped:' line if it were read
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(bad), "--classifier", str(engine)])
    assert exc.value.code == 4
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {engine}: engine was built for another machine: ")
    assert "A100" in line and "rebuild it here with: covidedge build-engine" in line
