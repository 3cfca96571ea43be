"""Samples whose file does not say (or says wrongly) how many bits they use decode to what the
file shows: 12-bit samples in 16-bit containers (PNG without sBIT, sBIT 12 with a hot pixel, a
bare uint16 array), a VOI LUT of more than 256 entries with 8-bit output, and an image that uses
a small part of its declared range is flagged (issue 22, items 14 and 15)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from covidedge.data.imageio import read_gray, write_png
from covidedge.data.quality import check_quality
from covidedge.runtime.pipeline import Pipeline
from tests.graphs import smooth_xray, tiny_models

SIDE = 96


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def eight_bit() -> np.ndarray:
    return smooth_xray(SIDE, SIDE)


def with_sbit(path, bits: int):
    """Add an sBIT chunk after IHDR by hand (what some detector software writes)."""
    data = path.read_bytes()
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:33] + chunk + data[33:])
    return path


def test_12bit_png_without_sbit_reads_like_its_8bit_source(tmp_path):
    a = eight_bit()
    twelve = a.astype(np.uint16) * 16  # 0..4080: 12 bits used in a 16-bit PNG, no sBIT
    got = read_gray(write_png(tmp_path / "a12.png", twelve))
    np.testing.assert_array_equal(got, (twelve / 4095.0).astype(np.float32))
    np.testing.assert_allclose(got, a / 255.0, atol=0.005)
    assert check_quality(got) == []


def test_one_hot_pixel_changes_no_divisor(tmp_path):
    a = eight_bit().astype(np.uint16) * 16
    plain = read_gray(write_png(tmp_path / "plain.png", a))
    hot = a.copy()
    hot[5, 7] = 4200  # just beyond 12 bits
    for name, bits in (("nosbit.png", None), ("sbit12.png", 12)):
        p = write_png(tmp_path / name, hot)
        if bits:
            with_sbit(p, bits)
        got = read_gray(p)
        mask = np.ones_like(got, bool)
        mask[5, 7] = False
        np.testing.assert_array_equal(got[mask], plain[mask])
        assert got[5, 7] == 1.0
    # the same through the hottest possible pixel
    hot[5, 7] = 65535
    np.testing.assert_array_equal(read_gray(write_png(tmp_path / "h.png", hot))[mask], plain[mask])


def test_uint16_array_to_predict_gives_the_8bit_result(models):
    a = eight_bit()
    with Pipeline(classifier=models[0], segmenter=models[1]) as pipe:
        ref = pipe.predict(a)
        got = pipe.predict(a.astype(np.uint16) * 16)
    for k, v in ref.probabilities.items():
        assert got.probabilities[k] == pytest.approx(v, abs=0.01)
    assert got.lung_fraction == pytest.approx(ref.lung_fraction, abs=0.01)
    assert got.quality_flags == []


def test_an_image_using_a_sixteenth_of_its_declared_range_is_flagged(tmp_path, models):
    twelve = eight_bit().astype(np.uint16) * 16
    p = write_png(tmp_path / "declared16.png", twelve, significant_bits=16)  # says 16, uses 12
    gray = read_gray(p)
    assert gray.max() < 1 / 8
    assert check_quality(gray) == ["dim"]
    with Pipeline(classifier=models[0]) as pipe:
        assert pipe.predict(p).quality_flags == ["dim"]


# -- VOI LUT ------------------------------------------------------------------------------------------
def _dicom_with_voi_lut(path, stored: np.ndarray, table: np.ndarray, lut_bits: int, vr: str):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    item = Dataset()
    item.add_new(0x00283002, "US", [len(table), 0, lut_bits])  # LUTDescriptor
    if vr == "OW":
        item.add_new(0x00283006, "OW", table.astype("<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(v) for v in table])
    ds.VOILUTSequence = [item]
    ds.save_as(str(path), enforce_file_format=True)
    assert len(pydicom.dcmread(str(path)).VOILUTSequence[0].LUTData) > 0
    return path


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_8bit_voi_lut_of_4096_entries_is_applied_with_a_wide_index(tmp_path, vr):
    a = eight_bit()
    stored = a.astype(np.uint16) * 16 + 8
    table = (np.arange(4096) // 16).astype(np.uint16)  # 12 bits in, 8 bits out: the 8-bit image
    got = read_gray(_dicom_with_voi_lut(tmp_path / "voi.dcm", stored, table, 8, vr))
    np.testing.assert_array_equal(got, (a / 255.0).astype(np.float32))
    assert check_quality(got) == []


def test_16bit_voi_lut_still_applies(tmp_path):
    a = eight_bit()
    stored = a.astype(np.uint16) * 16
    table = (np.arange(4096) * 16).astype(np.uint16)  # 12 bits in, 16 bits out
    got = read_gray(_dicom_with_voi_lut(tmp_path / "voi16.dcm", stored, table, 16, "US"))
    np.testing.assert_allclose(got, stored * 16 / 65535.0, atol=1e-6)
