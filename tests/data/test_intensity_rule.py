"""One intensity rule for every container: the same pixels give the same floats (and the same
model input) as an 8-bit PNG, a 16-bit PNG and a DICOM file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidedge.data.imageio import read_gray, write_png
from covidedge.data.preprocess import preprocess
from tests.data.test_imageio import write_dicom


def chest_like(h=48, w=40) -> np.ndarray:
    """Deterministic 8-bit pixels: a gradient with a dark band and one saturated pixel."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = (xx * 4 + yy * 2) % 230 + 10
    img[h // 3: h // 3 + 4, :] = 3
    img[5, 7] = 255
    return img.astype(np.uint8)


def test_same_8bit_pixels_in_png_16bit_png_and_dicom(tmp_path):
    pytest.importorskip("pydicom")
    a = chest_like()
    files = {
        "png8": write_png(tmp_path / "a8.png", a),
        "png16_full_range": write_png(tmp_path / "a16.png", a.astype(np.uint16) * 257),
        "png16_sbit8": write_png(tmp_path / "a16s.png", a.astype(np.uint16), significant_bits=8),
        "tiff16": tmp_path / "a16.tif",
        "dicom8": write_dicom(tmp_path / "a8.dcm", a, bits_stored=8, bits_allocated=8),
        "dicom16": write_dicom(tmp_path / "a16.dcm", a.astype(np.uint16) * 257, bits_stored=16),
        "dicom_bare": write_dicom(tmp_path / "bare.dcm", a, bits_stored=8, bits_allocated=8,
                                  preamble=False),
    }
    Image.fromarray(a.astype(np.uint16) * 257).save(files["tiff16"])
    expected = (a / 255.0).astype(np.float32)
    for name, path in files.items():
        np.testing.assert_array_equal(read_gray(path), expected, err_msg=name)
    x = preprocess(files["png8"], size=(16, 16))
    for name, path in files.items():
        np.testing.assert_array_equal(preprocess(path, size=(16, 16)), x, err_msg=name)


def test_same_12bit_pixels_in_png_with_sbit_and_dicom(tmp_path):
    pytest.importorskip("pydicom")
    a = (chest_like().astype(np.uint16) * 13)  # 12-bit values, brightest 3315 < 4095
    png = read_gray(write_png(tmp_path / "a12.png", a, significant_bits=12))
    dcm = read_gray(write_dicom(tmp_path / "a12.dcm", a, bits_stored=12))
    np.testing.assert_array_equal(png, (a / 4095.0).astype(np.float32))
    np.testing.assert_allclose(dcm, png, atol=1e-7)


def test_dicom_window_maps_its_output_range_like_any_container(tmp_path):
    pytest.importorskip("pydicom")
    # a window covering the whole 8-bit stored range is the identity on [0, 255]
    a = chest_like()
    dcm = read_gray(write_dicom(tmp_path / "w.dcm", a, bits_stored=8, bits_allocated=8,
                                center=128, width=256))
    png = read_gray(write_png(tmp_path / "w.png", a))
    np.testing.assert_allclose(dcm, png, atol=1e-6)
