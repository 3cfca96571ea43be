"""Batch augmentation: masks stay aligned with images; intensity jitter touches images only."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from covidedge.errors import BadInputError  # noqa: E402
from covidedge.train.augment import AugmentConfig, BatchAugment  # noqa: E402


def _blobs(n=6, size=64, seed=0):
    """Binary images with a few rectangles: the image content equals its own mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(3):
            r, c = torch.randint(4, size - 20, (2,), generator=g).tolist()
            h, w = torch.randint(6, 16, (2,), generator=g).tolist()
            x[i, 0, r:r + h, c:c + w] = 1.0
    return x


def test_geometry_moves_image_and_mask_together():
    x = _blobs()
    masks = torch.cat([x, 1.0 - x], dim=1)  # two channels, both tied to the image
    aug = BatchAugment(brightness=0.0, contrast=0.0)
    out, m = aug(x.clone(), masks.clone(), generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape and m.shape == masks.shape and m.dtype == masks.dtype
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # bilinear image thresholded at 0.5 == bilinear mask thresholded at 0.5: pixel-exact
    assert torch.equal((out > 0.5).float(), m[:, :1])
    # and the transform really moved things (not an identity)
    assert (m[:, :1] != x).float().mean() > 0.01


def test_jitter_changes_images_only():
    x = torch.rand(4, 1, 32, 32) * 0.8 + 0.1
    masks = (torch.rand(4, 2, 32, 32) > 0.5).float()
    aug = BatchAugment(rotation_deg=0.0, shift=0.0, scale=(1.0, 1.0), brightness=0.2, contrast=0.3)
    out, m = aug(x, masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, masks)
    assert not torch.allclose(out, x, atol=1e-3)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_identity_settings_return_the_input():
    x = torch.rand(3, 1, 40, 40)
    aug = BatchAugment(rotation_deg=0.0, shift=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0)
    out, none = aug(x)
    assert none is None
    assert torch.allclose(out, x, atol=1e-5)


def test_shift_moves_content_by_the_fraction_of_the_side():
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 30:34, 10:14] = 1.0
    params = {"angle": torch.zeros(1, dtype=torch.float64), "scale": torch.ones(1, dtype=torch.float64),
              "shift_x": torch.tensor([0.25], dtype=torch.float64),
              "shift_y": torch.tensor([-0.125], dtype=torch.float64), "flip": torch.tensor([False])}
    theta = BatchAugment.theta(params).float()
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 64, 64], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    rows, cols = (out[0, 0] > 0.5).nonzero(as_tuple=True)
    assert cols.min().item() == 10 + 16 and cols.max().item() == 13 + 16   # +0.25 * 64 px
    assert rows.min().item() == 30 - 8 and rows.max().item() == 33 - 8     # -0.125 * 64 px


def test_parameters_stay_in_the_chest_xray_ranges_and_no_flip_by_default():
    aug = BatchAugment()
    p = aug.sample_params(2000, generator=torch.Generator().manual_seed(0))
    assert p["angle"].abs().max() <= math.radians(10.0) + 1e-9
    assert p["angle"].abs().max() > math.radians(9.0)
    assert 0.9 - 1e-9 <= p["scale"].min() and p["scale"].max() <= 1.1 + 1e-9
    assert p["shift_x"].abs().max() <= 0.08 and p["shift_y"].abs().max() <= 0.08
    assert not p["flip"].any()
    flips = BatchAugment(hflip=True).sample_params(2000, generator=torch.Generator().manual_seed(0))["flip"]
    assert 0.4 < flips.float().mean() < 0.6


def test_hflip_mirrors_image_and_mask_alike():
    x = _blobs(n=8)
    aug = BatchAugment(rotation_deg=0.0, shift=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0,
                       hflip=True)
    out, m = aug(x, x.clone(), generator=torch.Generator().manual_seed(5))
    flipped = [i for i in range(8) if not torch.allclose(out[i], x[i], atol=1e-5)]
    assert flipped and len(flipped) < 8
    for i in flipped:
        assert torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
        assert torch.equal(m[i], x[i].flip(-1))


def test_same_generator_seed_same_result():
    x = torch.rand(4, 1, 32, 32)
    aug = BatchAugment()
    a, _ = aug(x, generator=torch.Generator().manual_seed(7))
    b, _ = aug(x, generator=torch.Generator().manual_seed(7))
    c, _ = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(BadInputError, match="scale range"):
        AugmentConfig(scale=(1.1, 0.9))
    with pytest.raises(BadInputError, match="negative"):
        BatchAugment(rotation_deg=-1)
    aug = BatchAugment()
    with pytest.raises(BadInputError, match="expected NCHW"):
        aug(torch.rand(1, 32, 32))
    with pytest.raises(BadInputError, match="masks have shape"):
        aug(torch.rand(2, 1, 32, 32), torch.rand(2, 2, 16, 16))
