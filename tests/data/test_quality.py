"""The input quality check flags blank, tiny and strip-shaped images, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from covidedge.data.imageio import read_gray, write_png
from covidedge.data.quality import QUALITY_FLAGS, check_quality, describe_flags
from covidedge.errors import BadInputError


def chest_like(h=256, w=240) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.2 + 0.6 * np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (w * h / 8))).astype(np.float32)


def test_a_normal_image_has_no_flag():
    assert check_quality(chest_like()) == []
    assert check_quality(chest_like(64, 256)) == []  # 4:1 is still accepted


@pytest.mark.parametrize("image, flags", [
    (np.full((256, 256), 0.5, np.float32), ["constant"]),
    (np.zeros((512, 512), np.float32), ["constant"]),
    (np.ones((1, 1), np.float32), ["constant", "tiny"]),
    (chest_like(20, 30), ["tiny"]),
    (chest_like(10000, 2), ["tiny", "extreme_aspect_ratio"]),
    (chest_like(100, 600), ["extreme_aspect_ratio"]),
    (np.zeros((2, 10000), np.float32), ["constant", "tiny", "extreme_aspect_ratio"]),
])
def test_flags(image, flags):
    assert check_quality(image) == flags
    assert all(f in QUALITY_FLAGS for f in flags)


def test_constant_means_within_one_gray_level():
    img = np.full((128, 128), 100 / 255, np.float32)
    img[0, 0] = 100.9 / 255  # less than one 8-bit level apart
    assert check_quality(img) == ["constant"]
    img[0, 0] = 102 / 255
    assert check_quality(img, appearance=False) == []
    # a flat field with one brighter pixel is no longer blank, but it is no chest X-ray either
    assert check_quality(img) == ["out_of_distribution"]


def test_decoded_files_are_checked_like_arrays(tmp_path):
    blank = write_png(tmp_path / "blank.png", np.full((300, 300), 77, np.uint8))
    strip = write_png(tmp_path / "strip.png", (np.arange(2000) % 256).astype(np.uint8)[None, :].repeat(3, 0))
    assert check_quality(read_gray(blank)) == ["constant"]
    assert check_quality(read_gray(strip)) == ["tiny", "extreme_aspect_ratio"]


def test_thresholds_and_description():
    assert check_quality(chest_like(40, 40), min_side=32) == []
    assert check_quality(chest_like(100, 300), max_aspect=2.5) == ["extreme_aspect_ratio"]
    assert "blank" in describe_flags(["constant"]) and "strip" in describe_flags(["extreme_aspect_ratio"])
    with pytest.raises(BadInputError, match="shape"):
        check_quality(np.zeros((0, 4)))
    with pytest.raises(BadInputError, match="min_side"):
        check_quality(chest_like(), min_side=0)
