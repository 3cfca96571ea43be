"""Decoding of every supported kind of X-ray file, and a clear one-line error for every bad one."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from covidedge.data.imageio import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, is_image_path, read_gray,
                                    read_mask, write_png)
from covidedge.errors import BadInputError, MissingDependencyError


def ramp(h=6, w=9, hi=255) -> np.ndarray:
    """A deterministic uint8 image using the full 0..hi range."""
    return np.linspace(0, hi, h * w).round().astype(np.uint8).reshape(h, w)


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def check_error(exc_info, path, *words):
    """The message is one line, names the file, and says what was wrong."""
    text = str(exc_info.value)
    assert "\n" not in text
    assert str(path) in text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


# ---------------------------------------------------------------------------------------------
# Pillow formats and modes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_8bit_gray_lossless_formats(tmp_path, suffix):
    a = ramp()
    out = read_gray(save(Image.fromarray(a), tmp_path / f"a{suffix}"))
    assert out.dtype == np.float32 and out.shape == a.shape and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, (a / 255.0).astype(np.float32))
    assert out.min() == 0.0 and out.max() == 1.0


def test_8bit_gray_jpeg_matches_pillow_decode(tmp_path):
    a = ramp(32, 32)
    p = save(Image.fromarray(a), tmp_path / "a.jpg", quality=90)
    expected = np.asarray(Image.open(p).convert("L")) / 255.0
    np.testing.assert_array_equal(read_gray(p), expected.astype(np.float32))


def test_16bit_png_scaled_to_full_range_equals_8bit(tmp_path):
    a = ramp()
    p8 = save(Image.fromarray(a), tmp_path / "a8.png")
    p16 = save(Image.fromarray(a.astype(np.uint16) * 257), tmp_path / "a16.png")
    assert Image.open(p16).mode.startswith("I")
    np.testing.assert_array_equal(read_gray(p16), read_gray(p8))


def test_16bit_png_holding_8bit_values_with_sbit_8_equals_8bit(tmp_path):
    a = ramp()
    p8 = save(Image.fromarray(a), tmp_path / "a8.png")
    p16 = write_png(tmp_path / "a16.png", a.astype(np.uint16), significant_bits=8)
    np.testing.assert_array_equal(read_gray(p16), read_gray(p8))
    # without sBIT the effective bit depth of the samples applies: 8 bits here, the same floats
    plain = write_png(tmp_path / "plain16.png", a.astype(np.uint16))
    np.testing.assert_array_equal(read_gray(plain), read_gray(p8))


def test_16bit_scaled_by_declared_bit_depth_not_by_the_hottest_pixel(tmp_path):
    # 12-bit detector values with sBIT=12 are divided by 4095, nothing clipped at 255.
    a = np.array([[0, 256, 1000], [2000, 3000, 4000]], dtype=np.uint16)
    out = read_gray(write_png(tmp_path / "a12.png", a, significant_bits=12))
    np.testing.assert_array_equal(out, (a / 4095.0).astype(np.float32))
    assert len(np.unique(out)) == 6
    # one hot pixel changes no other pixel (it used to halve the whole image's brightness), with
    # a declared bit depth (12) or without one (the effective depth: 10 bits for 100..1000)
    dim = np.tile(np.linspace(100, 1000, 64).astype(np.uint16), (64, 1))
    hot = dim.copy()
    hot[0, 0] = 65535
    for bits, top in ((None, 1023.0), (12, 4095.0)):
        a_dim = read_gray(write_png(tmp_path / f"dim{bits}.png", dim, significant_bits=bits))
        a_hot = read_gray(write_png(tmp_path / f"hot{bits}.png", hot))
        if bits is not None:
            a_hot = read_gray(write_png(tmp_path / f"hot{bits}.png", np.minimum(hot, 4095), significant_bits=bits))
        np.testing.assert_array_equal(a_dim, (dim / top).astype(np.float32))
        np.testing.assert_array_equal(a_hot.ravel()[1:], a_dim.ravel()[1:])
        assert a_hot[0, 0] == 1.0
    # sBIT=12 but samples beyond 12 bits: scaled up as the PNG standard says -> 16-bit range
    up = np.array([[0, 65535, 300 * 16]], dtype=np.uint16)
    p = write_png(tmp_path / "up.png", up)
    data = p.read_bytes()  # add sBIT=12 after IHDR by hand
    chunk = struct.pack(">I", 1) + b"sBIT" + bytes([12]) + struct.pack(">I", zlib.crc32(b"sBIT\x0c"))
    p.write_bytes(data[:33] + chunk + data[33:])
    np.testing.assert_array_equal(read_gray(p), (up / 65535.0).astype(np.float32))


def test_16bit_big_endian_tiff(tmp_path):
    a = np.array([[0, 1000, 4095]], dtype=np.uint16)
    img = Image.fromarray(a.astype(">u2"))
    assert img.mode == "I;16B"
    p = save(img, tmp_path / "be.tif")
    np.testing.assert_array_equal(read_gray(p), (a / 4095.0).astype(np.float32))  # 12 bits effective


def test_32bit_int_mode_i(tmp_path):
    a = np.array([[0, 1000, 4095]], dtype=np.int32)
    img = Image.fromarray(a)
    assert img.mode == "I"
    np.testing.assert_array_equal(read_gray(save(img, tmp_path / "i.tif")),
                                  (a / 4095.0).astype(np.float32))


def test_mode_i_beyond_16_bits_is_rejected(tmp_path):
    p = save(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), tmp_path / "big.tif")
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "0..70000", "at most 16 bits")


def test_rgb_gray_equals_8bit_and_colour_is_unrounded_luminance(tmp_path):
    a = ramp()
    gray_rgb = np.stack([a, a, a], axis=-1)
    p_rgb = save(Image.fromarray(gray_rgb), tmp_path / "g.png")
    np.testing.assert_array_equal(read_gray(p_rgb), a / np.float32(255.0))

    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, 0] = (10, 20, 30)
    rgb[1, 1] = (201, 13, 77)
    out = read_gray(save(Image.fromarray(rgb), tmp_path / "c.png"))
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-7)
    # Same as Pillow's convert("L") up to its 8-bit rounding.
    pil = np.asarray(Image.fromarray(rgb).convert("L")) / 255.0
    assert np.abs(out - pil).max() <= 0.5 / 255 + 1e-7
    assert not np.array_equal(out, pil.astype(np.float32))  # really not quantised


def test_rgba_is_composited_on_black(tmp_path):
    rgb = np.full((1, 3, 3), 200, dtype=np.uint8)
    alpha = np.array([[255, 0, 128]], dtype=np.uint8)
    p = save(Image.fromarray(np.dstack([rgb, alpha])), tmp_path / "a.png")
    np.testing.assert_allclose(read_gray(p), [[200 / 255, 0.0, 200 / 255 * 128 / 255]], atol=1e-7)


def test_la_is_composited_on_black(tmp_path):
    la = np.dstack([np.full((1, 2), 100, np.uint8), np.array([[255, 51]], np.uint8)])
    img = Image.fromarray(la)
    assert img.mode == "LA"
    np.testing.assert_allclose(read_gray(save(img, tmp_path / "la.png")),
                               [[100 / 255, 100 / 255 * 51 / 255]], atol=1e-7)


def test_palette_image_equals_its_colours(tmp_path):
    a = ramp(4, 4, hi=240)
    p_gray = save(Image.fromarray(a).convert("P"), tmp_path / "p.png")
    assert Image.open(p_gray).mode == "P"
    expected = read_gray(save(Image.fromarray(a), tmp_path / "l.png"))
    np.testing.assert_allclose(read_gray(p_gray), expected, atol=1e-7)

    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    p_col = save(Image.fromarray(rgb).quantize(colors=4), tmp_path / "pc.png")
    assert read_gray(p_col)[0, 0] == pytest.approx(0.299, abs=1e-6)


def test_palette_with_transparency_is_composited(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 255, 255, 0, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 0)
    img.info["transparency"] = 0
    p = save(img, tmp_path / "pt.png", transparency=0)
    np.testing.assert_array_equal(read_gray(p), [[0.0, 0.0]])


def test_one_bit_image(tmp_path):
    bits = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    p = save(Image.fromarray(bits), tmp_path / "b.png")
    assert Image.open(p).mode == "1"
    np.testing.assert_array_equal(read_gray(p), bits.astype(np.float32))


def test_cmyk_jpeg_is_read(tmp_path):
    p = save(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), tmp_path / "cmyk.jpg")
    out = read_gray(p)
    assert out.shape == (8, 8) and out.min() > 0.95  # no ink = white


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    a = ramp(3, 5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = save(Image.fromarray(a), tmp_path / f"e{suffix}", exif=exif)
    out = read_gray(p)
    assert out.shape == (5, 3)
    np.testing.assert_array_equal(out, np.rot90(a, k=-1) / np.float32(255.0))


def test_first_frame_of_a_multi_page_tiff(tmp_path):
    a, b = ramp(), 255 - ramp()
    p = tmp_path / "stack.tif"
    Image.fromarray(a).save(p, save_all=True, append_images=[Image.fromarray(b)])
    np.testing.assert_array_equal(read_gray(p), a / np.float32(255.0))


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------
def write_dicom(path: Path, pixels: np.ndarray, *, photometric="MONOCHROME2", slope=None,
                intercept=None, center=None, width=None, preamble=True, bits_stored=12,
                frames=None, bits_allocated=16) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2" if bits_allocated == 16 else "u1").tobytes()
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    ds.save_as(str(path), enforce_file_format=True)
    if not preamble:  # a bare dataset: no preamble, no "DICM" magic, no file meta
        bare = pydicom.dcmread(path)
        bare.file_meta = FileMetaDataset()
        bare.preamble = None
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, bare, implicit_vr=True, little_endian=True)
        path.write_bytes(buf.getvalue())
    return path


PIX = np.array([[0, 100, 200, 300], [400, 500, 600, 4095]], dtype=np.uint16)


def test_dicom_monochrome2_rescale_and_window(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", PIX, slope=2, intercept=-100, center=500, width=1000)
    hu = PIX * 2.0 - 100.0
    # DICOM LINEAR window (PS3.3 C.11.2.1.2.1), output range = rescaled stored range.
    c, w = 500 - 0.5, 1000 - 1.0
    y_min, y_max = -100.0, 4095 * 2.0 - 100.0
    win = np.where(hu <= c - w / 2, y_min,
                   np.where(hu > c + w / 2, y_max, ((hu - c) / w + 0.5) * (y_max - y_min) + y_min))
    # the window's declared output range maps to [0, 1], whatever values are present
    expected = (win - y_min) / (y_max - y_min)
    np.testing.assert_allclose(read_gray(p), expected, atol=1e-6)


def test_dicom_monochrome1_with_rescale_and_window_is_the_inverse(tmp_path):
    kw = dict(slope=2, intercept=-100, center=500, width=1000)
    m1 = read_gray(write_dicom(tmp_path / "m1.dcm", PIX, photometric="MONOCHROME1", **kw))
    m2 = read_gray(write_dicom(tmp_path / "m2.dcm", PIX, photometric="MONOCHROME2", **kw))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == 1.0 and m1[1, 3] == 0.0 and 0.0 < m1[0, 2] < 1.0


def test_dicom_without_window_is_the_rescaled_stored_range(tmp_path):
    pix = PIX.copy()
    pix[1, 3] = 3000  # no sample at the top of the 12-bit range
    p = write_dicom(tmp_path / "b.dcm", pix, slope=0.5, intercept=10)
    v = pix * 0.5 + 10
    lo, hi = 10.0, 4095 * 0.5 + 10
    np.testing.assert_allclose(read_gray(p), (v - lo) / (hi - lo), atol=1e-6)


def test_dicom_scaled_by_bits_stored_not_by_its_values(tmp_path):
    dim = np.array([[100, 900], [1000, 50]], dtype=np.uint16)
    hot = dim.copy()
    hot[1, 1] = 4095
    a_dim = read_gray(write_dicom(tmp_path / "dim.dcm", dim))
    a_hot = read_gray(write_dicom(tmp_path / "hot.dcm", hot))
    np.testing.assert_allclose(a_dim, dim / 4095.0, atol=1e-7)
    np.testing.assert_array_equal(a_hot.ravel()[:3], a_dim.ravel()[:3])
    a14 = read_gray(write_dicom(tmp_path / "b14.dcm", dim, bits_stored=14))
    np.testing.assert_allclose(a14, dim / 16383.0, atol=1e-7)


def test_dicom_monochrome1_is_inverted(tmp_path):
    p1 = write_dicom(tmp_path / "m1.dcm", PIX, photometric="MONOCHROME1")
    p2 = write_dicom(tmp_path / "m2.dcm", PIX, photometric="MONOCHROME2")
    a1, a2 = read_gray(p1), read_gray(p2)
    np.testing.assert_allclose(a1, 1.0 - a2, atol=1e-6)
    assert a1[0, 0] == 1.0 and a1[1, 3] == 0.0  # stored 0 is white in MONOCHROME1


def test_dicom_found_by_magic_whatever_its_name(tmp_path):
    p = write_dicom(tmp_path / "scan.dcm", PIX)
    renamed = p.rename(tmp_path / "IM000001")
    np.testing.assert_allclose(read_gray(renamed), PIX / 4095.0, atol=1e-6)


def test_dicom_without_preamble_read_by_suffix(tmp_path):
    p = write_dicom(tmp_path / "raw.dcm", PIX, preamble=False)
    assert p.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_gray(p), PIX / 4095.0, atol=1e-6)


def test_constant_dicom_keeps_its_level(tmp_path):
    p = write_dicom(tmp_path / "flat.dcm", np.full((3, 3), 2000, np.uint16))
    np.testing.assert_array_equal(read_gray(p), np.full((3, 3), 2000 / 4095.0, np.float32))


def test_dicom_overflow_to_inf_is_rejected(tmp_path):
    p = write_dicom(tmp_path / "inf.dcm", PIX, slope="1e308", intercept=0)
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "NaN or infinite", "RescaleSlope")


def test_unreadable_dicom(tmp_path):
    pytest.importorskip("pydicom")
    p = tmp_path / "junk.dcm"
    p.write_text("this is a radiology report, not an image\n" * 5)
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "DICOM")


def test_truncated_dicom_pixel_data(tmp_path):
    p = write_dicom(tmp_path / "cut.dcm", np.zeros((64, 64), np.uint16))
    p.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p)


def test_multiframe_dicom_is_rejected(tmp_path):
    p = write_dicom(tmp_path / "mf.dcm", np.zeros((2, 3, 3), np.uint16), frames=2)
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "2 frames", "single-frame")


def test_dicom_needs_pydicom(tmp_path, monkeypatch):
    p = tmp_path / "a.dcm"
    # a file meta group length element after the marker: plausible DICOM to the header check
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(MissingDependencyError) as info:
        read_gray(p)
    assert "pydicom" in str(info.value) and "covidedge[dicom]" in str(info.value)
    assert info.value.exit_code == 6


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height 8-bit gray, with a valid CRC and tiny data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BadInputError) as info:
        read_gray(tmp_path / "nope.png")
    check_error(info, tmp_path / "nope.png", "no such file")
    with pytest.raises(BadInputError) as info:
        read_gray(tmp_path)
    check_error(info, tmp_path, "not a regular file")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "empty file (0 bytes)")
    assert info.value.exit_code == 3


def test_text_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("patient notes\n")
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "not a recognisable image", "PNG, JPEG")


def test_gif_is_not_an_accepted_format(tmp_path):
    p = save(Image.fromarray(ramp()), tmp_path / "a.png", format="GIF")
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "not a recognisable image")


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_files(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    noisy = (rng.random((128, 128)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_caught_from_header_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_with_header(9000, 9000))  # 81 MPx > 64 MPx default, < Pillow's limit
    assert 9000 * 9000 > DEFAULT_MAX_PIXELS
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "9000x9000", "81000000 pixels", "decompression bomb", "max_pixels")


def test_pillow_bomb_error_is_converted(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(png_with_header(60000, 60000))  # beyond twice Pillow's own limit
    with pytest.raises(BadInputError) as info:
        read_gray(p, max_pixels=10 ** 10)
    check_error(info, p, "decompression bomb")


def test_max_pixels_is_honoured(tmp_path):
    p = save(Image.fromarray(ramp(10, 10)), tmp_path / "a.png")
    assert read_gray(p, max_pixels=100).shape == (10, 10)
    with pytest.raises(BadInputError) as info:
        read_gray(p, max_pixels=99)
    check_error(info, p, "100 pixels", "limit of 99")
    with pytest.raises(BadInputError, match="max_pixels"):
        read_gray(p, max_pixels=0)


def test_unsupported_float_mode(tmp_path):
    p = save(Image.fromarray(np.zeros((4, 4), np.float32)), tmp_path / "f.tif")
    assert Image.open(p).mode == "F"
    with pytest.raises(BadInputError) as info:
        read_gray(p)
    check_error(info, p, "pixel mode 'F'", "16-bit grayscale PNG")


# ---------------------------------------------------------------------------------------------
# Masks, suffixes, writing
# ---------------------------------------------------------------------------------------------
def test_read_mask_nonzero_is_true(tmp_path):
    m = np.array([[0, 255, 1], [0, 0, 128]], dtype=np.uint8)
    out = read_mask(save(Image.fromarray(m), tmp_path / "m.png"))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, m > 0)


def test_suffixes():
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
    assert is_image_path("a/B.PNG") and is_image_path("x.dcm") and is_image_path(Path("y.jpeg"))
    assert not is_image_path("notes.txt") and not is_image_path("png")


def test_write_png_round_trips(tmp_path):
    mask = np.array([[True, False], [False, True]])
    p = write_png(tmp_path / "sub" / "m.png", mask)
    assert np.asarray(Image.open(p)).tolist() == [[255, 0], [0, 255]]
    np.testing.assert_array_equal(read_mask(p), mask)

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    assert Image.open(write_png(tmp_path / "rgb.png", rgb)).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)

    f = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(np.asarray(Image.open(write_png(tmp_path / "f.png", f))),
                                  [[0, 128, 255]])

    wide = np.array([[0, 4095]], dtype=np.uint16)
    np.testing.assert_allclose(read_gray(write_png(tmp_path / "w.png", wide)), [[0.0, 1.0]])  # 12 bits
    np.testing.assert_allclose(read_gray(write_png(tmp_path / "w16.png", wide, significant_bits=16)),
                               [[0.0, 4095 / 65535]])
    np.testing.assert_allclose(read_gray(write_png(tmp_path / "w12.png", wide, significant_bits=12)),
                               [[0.0, 1.0]])
    with pytest.raises(BadInputError, match="significant_bits"):
        write_png(tmp_path / "w8.png", wide, significant_bits=8)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 2), np.int32), "dtype int32"),
    (np.full((2, 2), 2.0), "outside [0, 1]"),
    (np.zeros((2, 2, 2), np.uint8), "shape (2, 2, 2)"),
])
def test_write_png_rejects(tmp_path, bad, words):
    with pytest.raises(BadInputError, match=None) as info:
        write_png(tmp_path / "x.png", bad)
    assert words in str(info.value)


# ---------------------------------------------------------------------------------------------
# DICOM header check, mask sizes
# ---------------------------------------------------------------------------------------------
def test_large_file_of_zeros_named_dcm_is_rejected_at_once(tmp_path, monkeypatch):
    pydicom = pytest.importorskip("pydicom")

    def parse(*a, **k):  # it took 75 s when pydicom parsed the zeros element by element
        raise AssertionError("the file was handed to the DICOM parser")
    monkeypatch.setattr(pydicom, "dcmread", parse)
    p = tmp_path / "zeros.dcm"
    with open(p, "wb") as fh:  # 300 MB of zeros (sparse: no disk space used)
        fh.truncate(300 * 1024 * 1024)
    with pytest.raises(BadInputError) as info:
        read_gray(p)  # refused from its first bytes, before any parsing
    check_error(info, p, "does not start like a DICOM file")
    assert info.value.exit_code == 3


def test_png_named_dcm_and_zeros_after_the_marker_are_refused(tmp_path):
    png = tmp_path / "scan.dcm"
    Image.fromarray(ramp()).save(png, format="PNG")
    with pytest.raises(BadInputError) as info:
        read_gray(png)
    check_error(info, png, "does not start like a DICOM file", "PNG/JPEG")
    marked = tmp_path / "marked.dcm"
    marked.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 4096)
    with pytest.raises(BadInputError) as info:
        read_gray(marked)
    check_error(info, marked, "'DICM' marker", "no DICOM element")


def test_mask_of_another_size_than_its_image_is_refused(tmp_path):
    from covidedge.errors import DatasetError

    image = write_png(tmp_path / "img.png", ramp(20, 30))
    good = write_png(tmp_path / "good.png", np.ones((20, 30), bool))
    bad = write_png(tmp_path / "bad.png", np.ones((30, 20), bool))
    assert read_mask(good, image=image).shape == (20, 30)
    with pytest.raises(DatasetError) as info:
        read_mask(bad, image=image)
    check_error(info, bad, "20x30 px", "30x20 px", str(image), "re-export the mask")
    assert info.value.exit_code == 7


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_image_shape_reads_the_header_and_follows_exif(tmp_path, suffix):
    from covidedge.data.imageio import image_shape

    a = ramp(3, 5)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = save(Image.fromarray(a), tmp_path / f"e{suffix}", exif=exif)
    assert image_shape(p) == read_gray(p).shape == (5, 3)
    d = write_dicom(tmp_path / "d.dcm", PIX)
    assert image_shape(d) == read_gray(d).shape == PIX.shape


def test_is_dicom_path_needs_a_dicom_start(tmp_path):
    from covidedge.data.imageio import is_dicom_path

    zeros = tmp_path / "zeros.dcm"
    with open(zeros, "wb") as fh:
        fh.truncate(10 * 1024 * 1024)
    assert not is_dicom_path(zeros)  # never handed to a DICOM parser, refused by read_gray
    assert is_dicom_path(write_dicom(tmp_path / "a.dcm", PIX))
    bare = write_dicom(tmp_path / "bare.dcm", PIX, preamble=False)
    assert is_dicom_path(bare) and not is_dicom_path(bare.rename(tmp_path / "bare.bin"))
    renamed = write_dicom(tmp_path / "b.dcm", PIX).rename(tmp_path / "IM0001")
    assert is_dicom_path(renamed)
    assert not is_dicom_path(write_png(tmp_path / "x.png", ramp()))
    assert not is_dicom_path(tmp_path / "missing.dcm")
