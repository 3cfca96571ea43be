"""THE preprocessing: golden numbers, shapes, input kinds, batch equality, masks, bad inputs.

The golden files in tests/data/golden/ pin ``preprocess``: any change to its numbers fails
here, and then needs a new PREPROCESSING_ID. Regenerate them (only on purpose) with
``python -m tests.data.test_preprocess``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidedge.data.imageio import read_gray, write_png
from covidedge.data.preprocess import (PREPROCESSING_ID, as_gray, preprocess, preprocess_batch,
                                       resize_gray, resize_mask)
from covidedge.errors import BadInputError
from covidedge.spec import ModelSpec

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_PNG = GOLDEN / "gradient_40x56.png"
GOLDEN_OUTPUTS = {(16, 16): GOLDEN / "gradient_40x56_to_16x16.npy",
                  (24, 20): GOLDEN / "gradient_40x56_to_24x20.npy"}


def golden_source_image() -> np.ndarray:
    """A deterministic 40 x 56 uint8 image: diagonal gradient, checker pattern and a bright disc."""
    yy, xx = np.mgrid[0:40, 0:56]
    gradient = (xx * 3 + yy * 2).astype(np.int64)
    checker = ((xx // 4 + yy // 4) % 2) * 37
    disc = ((xx - 30) ** 2 + (yy - 18) ** 2 < 81) * 60
    return np.clip(gradient + checker + disc, 0, 255).astype(np.uint8)


def test_preprocessing_id_is_the_model_spec_default():
    assert PREPROCESSING_ID == "gray-unit-bilinear-v1"
    assert ModelSpec(task="classifier", model_name="x", labels=("a",)).preprocessing == PREPROCESSING_ID


def test_golden_source_png_is_the_documented_image():
    decoded = np.asarray(Image.open(GOLDEN_PNG))
    np.testing.assert_array_equal(decoded, golden_source_image())


@pytest.mark.parametrize("size", sorted(GOLDEN_OUTPUTS))
def test_golden_preprocess_output(size):
    expected = np.load(GOLDEN_OUTPUTS[size])
    got = preprocess(GOLDEN_PNG, size=size)
    assert got.shape == (1, 1, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6, atol=0)


def test_golden_output_is_not_a_trivial_resize():
    # The pinned numbers must depend on the filter: nearest or box resampling give others.
    expected = np.load(GOLDEN_OUTPUTS[(16, 16)])
    src = Image.fromarray(golden_source_image().astype(np.float32) / 255.0)
    for other in (Image.Resampling.NEAREST, Image.Resampling.BOX, Image.Resampling.BICUBIC):
        alt = np.asarray(src.resize((16, 16), other), dtype=np.float32)
        assert np.abs(alt - expected).max() > 1e-3


def test_path_pil_and_array_inputs_agree(tmp_path):
    img = golden_source_image()
    path = write_png(tmp_path / "g.png", img)
    from_path = preprocess(path, size=(16, 16))
    from_str = preprocess(str(path), size=(16, 16))
    from_pil = preprocess(Image.fromarray(img), size=(16, 16))
    from_u8 = preprocess(img, size=(16, 16))
    from_float = preprocess(img.astype(np.float32) / 255.0, size=(16, 16))
    for other in (from_str, from_pil, from_u8, from_float):
        np.testing.assert_array_equal(from_path, other)


def test_same_size_skips_resizing(tmp_path):
    img = golden_source_image()
    path = write_png(tmp_path / "g.png", img)
    out = preprocess(path, size=(40, 56))
    np.testing.assert_array_equal(out[0, 0], read_gray(path))
    assert out.flags["C_CONTIGUOUS"]


def test_int_size_means_square():
    out = preprocess(golden_source_image(), size=12)
    assert out.shape == (1, 1, 12, 12)


def test_output_stays_in_unit_range_for_extreme_images():
    rng = np.random.default_rng(3)
    img = (rng.random((33, 47)) > 0.5).astype(np.float32)  # 0/1 salt and pepper
    for size in ((8, 8), (64, 90)):
        out = preprocess(img, size=size)
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.isfinite(out).all()


def test_batch_equals_single_images():
    rng = np.random.default_rng(0)
    items = [golden_source_image(), rng.random((20, 30)).astype(np.float32),
             (rng.random((64, 64)) * 255).astype(np.uint8)]
    batch = preprocess_batch(items, size=(16, 16))
    assert batch.shape == (3, 1, 16, 16) and batch.dtype == np.float32
    for i, item in enumerate(items):
        np.testing.assert_array_equal(batch[i : i + 1], preprocess(item, size=(16, 16)))


def test_uint16_array_is_scaled_by_its_effective_bit_depth():
    img8 = golden_source_image()
    img16 = img8.astype(np.uint16) * 257
    np.testing.assert_array_equal(as_gray(img16), as_gray(img8))
    # 12-bit samples in a uint16 array are divided by 4095, never by the largest value present:
    # a hot pixel changes nothing else
    twelve = np.tile(np.linspace(0, 4000, 64).astype(np.uint16), (64, 1))
    np.testing.assert_array_equal(as_gray(twelve), (twelve / 4095.0).astype(np.float32))
    hot = twelve.copy()
    hot[0, 0] = 65535
    np.testing.assert_array_equal(as_gray(hot).ravel()[1:], as_gray(twelve).ravel()[1:])


def test_rgb_array_is_luminance():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (10, 10, 10)
    gray = as_gray(rgb)
    assert gray[0, 0] == pytest.approx(0.299, abs=1e-7)
    assert gray[1, 1] == pytest.approx(10 / 255, abs=1e-7)


def test_channel_first_and_last_singletons_accepted():
    img = golden_source_image()
    np.testing.assert_array_equal(as_gray(img[None]), as_gray(img))
    np.testing.assert_array_equal(as_gray(img[..., None]), as_gray(img))


@pytest.mark.parametrize("bad, words", [
    (np.full((4, 4), 1.5, dtype=np.float32), "expected [0, 1]"),
    (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
    (np.zeros((4, 4, 5), dtype=np.uint8), "shape (4, 4, 5)"),
    (np.zeros((0, 4), dtype=np.uint8), "shape (0, 4)"),
    (np.zeros((4, 4), dtype=np.int64), "dtype int64"),
    ("/no/such/file.png", "no such file"),
    (12345, "cannot preprocess a int"),
])
def test_bad_inputs_raise_bad_input_error(bad, words):
    with pytest.raises(BadInputError) as info:
        preprocess(bad, size=(8, 8))
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [(0, 8), (8,), "big", (8.5, 8), -3])
def test_bad_size(size):
    with pytest.raises(BadInputError, match="size="):
        preprocess(golden_source_image(), size=size)


def test_empty_batch_is_an_error():
    with pytest.raises(BadInputError, match="no images"):
        preprocess_batch([], size=(8, 8))


def test_resize_gray_matches_pillow_float_bilinear():
    img = golden_source_image().astype(np.float32) / 255.0
    ref = np.asarray(Image.fromarray(img).resize((20, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_gray(img, (24, 20)), np.clip(ref, 0, 1))


def test_resize_mask_nearest():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    up = resize_mask(mask, (4, 4))
    assert up.dtype == np.bool_
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((2, 2), dtype=bool)))
    down = resize_mask(np.kron(mask, np.ones((3, 3), dtype=bool)), (2, 2))
    np.testing.assert_array_equal(down, mask)
    same = resize_mask(mask.astype(np.uint8) * 255, (2, 2))
    np.testing.assert_array_equal(same, mask)
    with pytest.raises(BadInputError, match="expected H x W"):
        resize_mask(np.zeros((2, 2, 2)), (4, 4))


def _regenerate() -> None:  # pragma: no cover - run by hand only
    GOLDEN.mkdir(parents=True, exist_ok=True)
    write_png(GOLDEN_PNG, golden_source_image(), compress_level=9)
    for size, path in GOLDEN_OUTPUTS.items():
        np.save(path, preprocess(GOLDEN_PNG, size=size)[0, 0])
        print("wrote", path)


if __name__ == "__main__":  # pragma: no cover
    _regenerate()
