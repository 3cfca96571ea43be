"""One probabilities-to-mask rule: strictly above the threshold, resized bilinearly first; lung
regions, holes, infection inside the lungs and the infection gate decided at the model's size."""

import numpy as np
import pytest

from covidedge.runtime.postprocess import (MASK_RULE, PLAIN_THRESHOLD, MaskRule, lung_regions,
                                           probabilities_to_mask, segmentation_masks)


def test_threshold_is_strict_and_the_same_at_every_size():
    p = np.array([[0.2, 0.5], [0.50001, 0.9]], dtype=np.float32)
    assert probabilities_to_mask(p, 0.5).tolist() == [[False, False], [True, True]]
    # batched maps (evaluation) follow the same rule
    batch = np.stack([p, p])[:, None]
    assert np.array_equal(probabilities_to_mask(batch, 0.5)[1, 0], probabilities_to_mask(p, 0.5))
    # at the image's own size the map is resized first; at the model's size nothing changes
    assert np.array_equal(probabilities_to_mask(p, 0.5, (2, 2)), probabilities_to_mask(p, 0.5))
    big = probabilities_to_mask(p, 0.5, (20, 20))
    assert big.shape == (20, 20) and big[-1, -1] and not big[0, 0]
    with pytest.raises(ValueError, match="one h x w map"):
        probabilities_to_mask(batch, 0.5, (4, 4))


# -- the segmentation mask rule (issue 20) ----------------------------------------------------
def rule_probabilities():
    """(lung, infection) 32 x 32 maps: two lung fields of 24 x 11 px, an opacity in the left one
    (lung probability low, infection high), a small hole in the right one, a 2 x 2 lung island
    and a 2 x 2 infection speck outside the body."""
    lung = np.full((32, 32), 0.1, np.float32)
    inf = np.full((32, 32), 0.05, np.float32)
    lung[4:28, 3:14] = lung[4:28, 18:29] = 0.9
    lung[10:16, 6:11], inf[10:16, 6:11] = 0.2, 0.95  # opacity: 30 px of the 528 px of lung
    lung[12:14, 22:24] = 0.2  # a hole in the right lung
    lung[0:2, 30:32] = 0.9  # an island
    inf[30:32, 0:2] = 0.9  # an infection speck outside the lungs
    return lung, inf


def _fields():
    want = np.zeros((32, 32), bool)
    want[4:28, 3:14] = want[4:28, 18:29] = True
    return want


def test_lungs_are_the_two_largest_regions_with_opacity_and_holes():
    lungs, inf = segmentation_masks(*rule_probabilities(), 0.5, rule=MaskRule(infection_gate=0.0))
    np.testing.assert_array_equal(lungs, _fields())  # island and speck dropped, opacity and hole lung
    opacity = np.zeros((32, 32), bool)
    opacity[10:16, 6:11] = True
    np.testing.assert_array_equal(inf, opacity)  # the speck outside the lungs is gone
    labels, sizes = lung_regions(lungs)
    assert sorted(sizes[1:].tolist()) == [264, 264]


def test_at_most_n_regions_keeps_the_largest():
    mask = np.zeros((20, 20), bool)
    mask[0:6, 0:6] = mask[10:14, 10:14] = mask[0:3, 15:18] = mask[18:20, 0:1] = True  # 36, 16, 9, 2 px
    mask[6, 6] = True  # touches the first region at a corner only: 8-connected, one region
    for n, sizes in ((2, [37, 16]), (3, [37, 16, 9]), (0, [37, 16, 9, 2])):
        lungs, _ = segmentation_masks(mask.astype(np.float32), np.zeros((20, 20), np.float32), 0.5,
                                      rule=MaskRule(lung_regions=n, fill_lung_holes=False, infection_gate=0.0))
        assert sorted(lung_regions(lungs)[1][1:].tolist(), reverse=True) == sizes


def test_the_gate_empties_a_speck_and_keeps_a_real_lesion():
    lung, inf = rule_probabilities()  # the opacity is 30 / 528 = 5.7 % of the lungs
    assert not segmentation_masks(lung, inf, 0.5, rule=MaskRule(infection_gate=0.06))[1].any()
    assert segmentation_masks(lung, inf, 0.5, rule=MaskRule(infection_gate=0.05))[1].sum() == 30
    big = inf.copy()
    big[4:28, 18:29] = 0.8  # the whole right lung infected: far above any gate
    assert segmentation_masks(lung, big, 0.5)[1].sum() == 30 + 264
    assert 0.0 < MASK_RULE.infection_gate < 0.2 and MASK_RULE.lung_regions == 2


def test_the_plain_threshold_is_the_rule_before_issue_20():
    lung, inf = rule_probabilities()
    lungs, infection = segmentation_masks(lung, inf, 0.5, (50, 40), rule=PLAIN_THRESHOLD)
    np.testing.assert_array_equal(lungs, probabilities_to_mask(lung, 0.5, (50, 40)))
    np.testing.assert_array_equal(infection, probabilities_to_mask(inf, 0.5, (50, 40)))


def test_at_the_image_size_regions_stay_two_and_infection_inside_the_lungs():
    lung, inf = rule_probabilities()
    small = segmentation_masks(lung, inf, 0.5, rule=MaskRule(infection_gate=0.05))
    lungs, infection = segmentation_masks(lung, inf, 0.5, (101, 77), rule=MaskRule(infection_gate=0.05))
    assert np.count_nonzero(lung_regions(lungs)[1]) == 2 and infection.any()
    assert not (infection & ~lungs).any()
    # the edges are the resized maps' edges: the plain resize of the fields agrees away from the
    # filled opacity and hole
    plain = probabilities_to_mask(np.where(_fields(), 0.9, 0.1).astype(np.float32), 0.5, (101, 77))
    assert (lungs != plain).mean() < 0.01 and small[0].sum() == 528


def test_a_large_mask_costs_its_bytes_not_a_float_map():
    import tracemalloc

    lung, inf = rule_probabilities()
    h, w = 6000, 4000
    tracemalloc.start()
    try:
        lungs, infection = segmentation_masks(lung, inf, 0.5, (h, w))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lungs.shape == infection.shape == (h, w)
    assert peak < 4 * h * w, f"peak {peak / 1e6:.0f} MB; two masks are {2 * h * w / 1e6:.0f} MB"


def test_fill_holes_is_scipys_binary_fill_holes_with_8_connected_background():
    from scipy import ndimage

    from covidedge.runtime.postprocess import fill_holes

    rng = np.random.default_rng(7)
    eight = np.ones((3, 3), dtype=bool)
    for density in (0.3, 0.5, 0.7):
        for _ in range(20):
            m = rng.random((24, 31)) < density
            np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m, structure=eight))
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and not fill_holes(np.zeros((4, 4), dtype=bool)).any()
    assert fill_holes(np.ones((4, 4), dtype=bool)).all()


def test_infection_is_allowed_unless_the_classifier_rules_covid_out():
    from covidedge.runtime.postprocess import COVID_GATE, infection_allowed

    labels = ["COVID-19", "Non-COVID", "Normal"]
    assert 0 < COVID_GATE < 0.5
    assert not infection_allowed(labels, [COVID_GATE / 2, 0.5, 0.5 - COVID_GATE / 2])
    assert infection_allowed(labels, [COVID_GATE, 0.5, 0.5 - COVID_GATE])
    assert infection_allowed(labels, [0.0, 0.2, 0.8], gate=0.0)
    assert infection_allowed(None, None)  # no classifier
    assert infection_allowed(["cat", "dog"], [0.0, 1.0])  # a classifier that knows no COVID-19
