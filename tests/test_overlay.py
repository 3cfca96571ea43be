"""Outlines by erosion, overlay colours, mask PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidedge.errors import BadInputError
from covidedge.overlay import (INFECTION_ALPHA, INFECTION_COLOR, LUNG_COLOR, draw_overlay, erode,
                               gray_to_uint8, line_width_for, outline, save_mask_png, save_overlay)


def square(n=9, lo=2, hi=7):
    m = np.zeros((n, n), bool)
    m[lo:hi, lo:hi] = True
    return m


def test_erode_with_a_cross_peels_one_pixel_per_iteration():
    m = square()  # 5x5 square at 2..6
    np.testing.assert_array_equal(erode(m), square(lo=3, hi=6))
    np.testing.assert_array_equal(erode(m, 2), square(lo=4, hi=5))
    assert not erode(m, 3).any()
    # a plus shape erodes to its centre only (the cross structuring element)
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    assert erode(plus).sum() == 1 and erode(plus)[2, 2]


def test_outline_is_the_mask_minus_its_erosion():
    m = square()
    ring = outline(m)
    assert ring.sum() == 25 - 9  # 5x5 minus the 3x3 inside
    assert not ring[3:6, 3:6].any() and ring[2, 2:7].all()
    assert outline(m, width=2).sum() == 25 - 1


def test_mask_touching_the_border_keeps_its_edge_outline():
    m = np.ones((4, 6), bool)
    ring = outline(m)
    assert ring[0].all() and ring[-1].all() and ring[:, 0].all() and ring[:, -1].all()
    assert not ring[1:3, 1:5].any()


def test_line_width_grows_with_the_image():
    assert line_width_for((256, 256)) == 1
    assert line_width_for((100, 40)) == 1
    assert line_width_for((2048, 2500)) == 8


def test_overlay_colours_lungs_green_and_infection_red():
    gray = np.full((9, 9), 0.5, np.float32)
    lungs = square()
    infection = np.zeros((9, 9), bool)
    infection[3:6, 3:6] = True
    rgb = draw_overlay(gray, lungs, infection, width=1)
    assert rgb.shape == (9, 9, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[2, 2]) == LUNG_COLOR  # lung outline
    assert tuple(rgb[3, 3]) == INFECTION_COLOR  # infection outline
    want = np.round(128 * (1 - INFECTION_ALPHA) + np.array(INFECTION_COLOR) * INFECTION_ALPHA)
    np.testing.assert_array_equal(rgb[4, 4], want)  # tinted inside
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # untouched X-ray


def test_overlay_without_masks_is_the_gray_image_and_caption_marks_the_corner():
    gray = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    plain = draw_overlay(gray)
    np.testing.assert_array_equal(plain[..., 0], gray_to_uint8(gray))
    captioned = draw_overlay(gray, caption="COVID-19 0.91")
    assert (captioned[:8, :40] != plain[:8, :40]).any() and (captioned[40:] == plain[40:]).all()


def test_mask_shape_must_match_the_image():
    with pytest.raises(BadInputError, match=r"lung mask has shape \(4, 4\), the image has \(9, 9\)"):
        draw_overlay(np.zeros((9, 9)), lungs=np.zeros((4, 4), bool))


def test_files_are_written_as_png_and_read_back(tmp_path):
    m = square()
    p = save_mask_png(tmp_path / "sub" / "m.png", m)
    arr = np.asarray(Image.open(p))
    assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 255}
    np.testing.assert_array_equal(arr > 0, m)
    o = save_overlay(tmp_path / "o.png", np.zeros((9, 9), np.float32), lungs=m)
    img = Image.open(o)
    assert img.mode == "RGB" and img.size == (9, 9)
    assert [p.name for p in sorted(tmp_path.rglob("*"))] == ["o.png", "sub", "m.png"]  # no temp files


def test_unwritable_target_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="cannot be written"):
        save_mask_png(blocker / "m.png", square())
