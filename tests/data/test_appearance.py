"""The out-of-distribution flag: images that do not look like frontal chest X-rays (CT and MR
slices, photographs, a document, a pattern) are flagged; chest X-rays, also shifted the way
another hospital's films are, are not; the shipped profile flags at most 5 % of Val."""

from __future__ import annotations

import numpy as np
import pytest

from covidedge.data.appearance import (PROFILE_FILE, THUMB_SIDE, AppearanceProfile,
                                       default_profile, fit_profile, thumbnail)
from covidedge.data.quality import check_quality
from covidedge.data.synth import foreign_images, render_chest


def test_the_shipped_profile_is_there_and_flags_few_val_images():
    prof = default_profile()
    assert prof is not None, f"{PROFILE_FILE} is missing from the package"
    assert prof.components.shape[1] == THUMB_SIDE ** 2
    assert prof.about["threshold_from"] == "Val" and prof.about["val_flagged"] <= 0.05


@pytest.mark.parametrize("name", ["ct_slice", "checkerboard", "document_scan", "mr_slice",
                                  "photograph", "product_photo"])
def test_foreign_images_are_flagged(name):
    images = foreign_images()
    if name not in images:
        pytest.skip(f"{name} comes from matplotlib's sample data, which is not installed")
    assert "out_of_distribution" in check_quality(images[name])


def test_synthetic_chests_and_their_shifts_are_not_flagged():
    rng = np.random.default_rng(0)
    for label in ("COVID-19", "Non-COVID", "Normal"):
        img = render_chest(rng, label, 256)
        img = (img[0] if isinstance(img, tuple) else img).astype(np.float64) / 255.0
        for shifted in (img, img ** 0.6, img ** 1.6, 0.2 + 0.6 * img,
                        np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1),
                        np.kron(img[::4, ::4], np.ones((4, 4)))):
            assert "out_of_distribution" not in check_quality(shifted.astype(np.float32))


def test_thumbnail_ignores_exposure_and_size():
    rng = np.random.default_rng(1)
    img = render_chest(rng, "Normal", 256)
    img = (img[0] if isinstance(img, tuple) else img).astype(np.float64) / 255.0
    a = thumbnail(img)
    assert a.shape == (THUMB_SIDE ** 2,) and abs(a.mean()) < 1e-9 and abs(a.std() - 1) < 1e-6
    assert np.allclose(thumbnail(0.5 * img + 0.2), a, atol=1e-5)
    assert np.allclose(thumbnail(np.kron(img, np.ones((2, 2)))), a, atol=1e-3)


def test_a_profile_fitted_on_one_kind_of_image_flags_another(tmp_path):
    rng = np.random.default_rng(2)

    def chests(n):
        out = []
        for _ in range(n):
            c = render_chest(rng, "Normal", 64)
            out.append(thumbnail(c[0] if isinstance(c, tuple) else c))
        return np.stack(out)

    prof = fit_profile(chests(80), chests(40), components=8, quantile=0.95)
    assert prof.about["val_flagged"] <= 0.05 + 1e-9
    saved = AppearanceProfile.load(prof.save(tmp_path / "p.npz"))
    assert saved.threshold == pytest.approx(prof.threshold)
    board = foreign_images(64)["checkerboard"]
    assert saved.is_foreign(board)


@pytest.mark.realdata
@pytest.mark.slow
def test_at_most_five_percent_of_val_is_flagged(real_data_root):
    from covidedge.data.covidqu import CovidQuDataset
    from covidedge.data.imageio import read_gray

    files = [s.image for s in CovidQuDataset(real_data_root).samples("Val")][::3]
    flagged = sum("out_of_distribution" in check_quality(read_gray(f)) for f in files)
    assert flagged / len(files) <= 0.05, (flagged, len(files))
