"""Segmentation losses checked against arithmetic written out by hand on 1x1x2x2 tensors."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from covidedge.errors import BadInputError  # noqa: E402
from covidedge.train.losses import LOSSES, get_loss, loss_options  # noqa: E402


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# Probabilities 0.8, 0.2, 0.6, 0.5 against targets 1, 0, 1, 0 (one sample, one channel, 2x2).
PROBS = [[0.8, 0.2], [0.6, 0.5]]
TARGET = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
LOGITS = torch.tensor([[[[logit(p) for p in row] for row in PROBS]]], dtype=torch.float32)

# Soft counts, by hand:
TP = 0.8 + 0.6            # 1.4: probability mass on target pixels
FP = 0.2 + 0.5            # 0.7: probability mass off target
FN = (1 - 0.8) + (1 - 0.6)  # 0.6: missing mass on target pixels
SUM_P = 0.8 + 0.2 + 0.6 + 0.5  # 2.1
SUM_T = 2.0


def value(name, logits=LOGITS, target=TARGET, **params):
    return get_loss(name, **params)(logits, target).item()


# -- values by hand ----------------------------------------------------------------------------
def test_bce_by_hand():
    # -log(0.8) for (0.8, t=1); -log(1-0.2) for (0.2, t=0); -log(0.6); -log(1-0.5)
    expected = -(math.log(0.8) + math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4
    assert value("bce") == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
    assert value("dice", smooth=0.0) == pytest.approx(1 - (2 * TP) / (SUM_P + SUM_T), rel=1e-6)
    assert value("dice", smooth=1.0) == pytest.approx(1 - (2 * 1.4 + 1) / (2.1 + 2.0 + 1), rel=1e-6)


def test_bce_dice_by_hand():
    bce = -(2 * math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4
    dice = 1 - (2.8 + 1) / (4.1 + 1)
    assert value("bce_dice") == pytest.approx(bce + dice, rel=1e-6)
    assert value("bce_dice", bce_weight=0.5, dice_weight=2.0) == pytest.approx(0.5 * bce + 2 * dice, rel=1e-6)


def test_focal_by_hand():
    # p_t = p where t=1 else 1-p: 0.8, 0.8, 0.6, 0.5; alpha_t = 0.25 for t=1, 0.75 for t=0.
    terms = [
        0.25 * (1 - 0.8) ** 2 * -math.log(0.8),
        0.75 * (1 - 0.8) ** 2 * -math.log(0.8),
        0.25 * (1 - 0.6) ** 2 * -math.log(0.6),
        0.75 * (1 - 0.5) ** 2 * -math.log(0.5),
    ]
    assert value("focal", alpha=0.25, gamma=2.0) == pytest.approx(sum(terms) / 4, rel=1e-5)


def test_tversky_by_hand():
    # alpha weighs FP (0.7), beta weighs FN (0.6)
    expected = 1 - (TP + 1) / (TP + 0.3 * FP + 0.7 * FN + 1)  # 1 - 2.4 / 3.03
    assert value("tversky", alpha=0.3, beta=0.7, smooth=1.0) == pytest.approx(expected, rel=1e-6)


def test_focal_tversky_by_hand():
    ti = (1.4 + 1) / (1.4 + 0.3 * 0.7 + 0.7 * 0.6 + 1)
    got = value("focal_tversky", alpha=0.3, beta=0.7, gamma=0.75, smooth=1.0)
    assert got == pytest.approx((1 - ti) ** 0.75, rel=1e-6)
    # gamma = 1 reduces to the Tversky loss
    assert value("focal_tversky", gamma=1.0) == pytest.approx(value("tversky"), rel=1e-6)


def test_jaccard_by_hand():
    union = SUM_P + SUM_T - TP  # 2.7
    assert value("jaccard", smooth=1.0) == pytest.approx(1 - (1.4 + 1) / (union + 1), rel=1e-6)
    assert value("jaccard", smooth=0.0) == pytest.approx(1 - 1.4 / 2.7, rel=1e-6)


# -- averaging --------------------------------------------------------------------------------
def test_channel_weights_take_a_weighted_mean_of_channels():
    # channel 0: the 2x2 example above; channel 1: all logits 0 (p = 0.5), target one pixel.
    logits = torch.cat([LOGITS, torch.zeros(1, 1, 2, 2)], dim=1)
    target = torch.cat([TARGET, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])], dim=1)
    d0 = 1 - 2.8 / 4.1
    d1 = 1 - (2 * 0.5) / (4 * 0.5 + 1)  # 2/3
    assert value("dice", logits, target, smooth=0.0) == pytest.approx((d0 + d1) / 2, rel=1e-6)
    got = value("dice", logits, target, smooth=0.0, channel_weights=[1.0, 3.0])
    assert got == pytest.approx((1 * d0 + 3 * d1) / 4, rel=1e-6)
    per = get_loss("dice", smooth=0.0).per_channel(logits, target)
    assert per.shape == (1, 2)
    assert per[0].tolist() == pytest.approx([d0, d1], rel=1e-6)


def test_dice_is_averaged_per_sample_not_over_the_batch():
    # sample 0 = the example above; sample 1 predicts p = 0.5 everywhere with an empty target.
    logits = torch.cat([LOGITS, torch.zeros(1, 1, 2, 2)], dim=0)
    target = torch.cat([TARGET, torch.zeros(1, 1, 2, 2)], dim=0)
    d0 = 1 - 2.8 / 4.1
    d1 = 1 - 0 / (2.0 + 0)  # no overlap: loss 1
    batch_wide = 1 - 2 * 1.4 / (2.1 + 2.0 + 2.0)
    got = value("dice", logits, target, smooth=0.0)
    assert got == pytest.approx((d0 + d1) / 2, rel=1e-6)
    assert abs(got - batch_wide) > 0.05


# -- identities -------------------------------------------------------------------------------
def test_tversky_half_half_is_dice():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 8, generator=g)
    t = (torch.rand(3, 2, 8, 8, generator=g) > 0.6).float()
    tv = get_loss("tversky", alpha=0.5, beta=0.5, smooth=0.0)(x, t)
    assert tv.item() == pytest.approx(get_loss("dice", smooth=0.0)(x, t).item(), rel=1e-6)
    # with smoothing s, Tversky(0.5, 0.5) equals Dice with smoothing 2s (documented)
    tv = get_loss("tversky", alpha=0.5, beta=0.5, smooth=1.0)(x, t)
    assert tv.item() == pytest.approx(get_loss("dice", smooth=2.0)(x, t).item(), rel=1e-6)
    # and Tversky(1, 1) is the Jaccard loss with the same smoothing
    tv = get_loss("tversky", alpha=1.0, beta=1.0, smooth=1.0)(x, t)
    assert tv.item() == pytest.approx(get_loss("jaccard", smooth=1.0)(x, t).item(), rel=1e-6)


def test_focal_without_focusing_or_alpha_is_bce():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 8, 8, generator=g) * 3
    t = (torch.rand(2, 2, 8, 8, generator=g) > 0.5).float()
    focal = get_loss("focal", gamma=0.0, alpha=None)(x, t).item()
    assert focal == pytest.approx(get_loss("bce")(x, t).item(), rel=1e-6)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(x, t).item()
    assert focal == pytest.approx(ref, rel=1e-6)


# -- behaviour --------------------------------------------------------------------------------
def perfect_logits(target):
    return (target * 2 - 1) * 30.0


@pytest.mark.parametrize("name", ["dice", "tversky", "focal_tversky", "jaccard", "bce_dice"])
def test_perfect_prediction_gives_about_zero(name):
    target = torch.zeros(2, 2, 8, 8)
    target[:, 0, 2:6, 1:7] = 1
    target[0, 1, 3:5, 3:5] = 1  # sample 1 has an empty infection channel: must also score ~0
    loss = get_loss(name)(perfect_logits(target), target).item()
    assert 0.0 <= loss < 1e-4


def test_wrong_prediction_scores_high():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    assert get_loss("dice")(-perfect_logits(target), target).item() > 0.95
    assert get_loss("jaccard")(-perfect_logits(target), target).item() > 0.95


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow_and_are_finite(name):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 8, 8, generator=g, requires_grad=True)
    t = torch.rand(2, 2, 8, 8, generator=g) > 0.7  # bool targets are accepted
    loss = get_loss(name)(x, t)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum().item() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_extreme_logits_stay_finite(name):
    t = torch.zeros(1, 2, 4, 4)
    t[0, 0, :2] = 1
    x = torch.full((1, 2, 4, 4), 200.0, requires_grad=True)  # badly wrong and saturated
    loss = get_loss(name)(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x2 = perfect_logits(t).clone().requires_grad_(True)  # exactly right and saturated
    loss2 = get_loss(name)(x2, t)
    loss2.backward()
    assert torch.isfinite(loss2) and torch.isfinite(x2.grad).all()


def test_bce_matches_large_logit_limit():
    # log(1 + e^-50) is ~2e-22; a naive sigmoid-then-log would give 0 or inf.
    x = torch.tensor([[[[50.0, -50.0]]]])
    t = torch.tensor([[[[0.0, 1.0]]]])
    assert get_loss("bce")(x, t).item() == pytest.approx(50.0, rel=1e-6)


# -- errors -----------------------------------------------------------------------------------
def test_shape_mismatch_is_an_error():
    with pytest.raises(BadInputError, match=r"target has shape \(1, 1, 4, 4\), expected the logits' shape \(1, 2, 4, 4\)"):
        get_loss("dice")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))


def test_target_out_of_range_is_an_error():
    with pytest.raises(BadInputError, match=r"outside \[0, 1\].*max 255"):
        get_loss("bce")(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 255.0))


def test_unknown_name_lists_the_names():
    with pytest.raises(BadInputError) as exc:
        get_loss("lovasz")
    msg = str(exc.value)
    assert "unknown loss 'lovasz'" in msg
    for name in ("bce", "dice", "bce_dice", "focal", "tversky", "focal_tversky", "jaccard"):
        assert name in msg
    assert set(LOSSES) == {"bce", "dice", "bce_dice", "focal", "tversky", "focal_tversky", "jaccard"}


def test_unknown_option_is_rejected_not_ignored():
    with pytest.raises(BadInputError, match=r"loss 'dice' has no option\(s\) gamma; it accepts smooth, channel_weights"):
        get_loss("dice", gamma=2.0)
    assert loss_options("focal") == ("alpha", "gamma", "channel_weights")


@pytest.mark.parametrize("name,params,pattern", [
    ("focal", {"alpha": 1.5}, r"alpha=1.5 is outside \[0, 1\]"),
    ("tversky", {"beta": -1}, r"beta=-1.0 must be a finite number >= 0"),
    ("dice", {"smooth": "a lot"}, r"smooth='a lot' is not a number"),
    ("dice", {"channel_weights": [0, 0]}, r"must have a positive sum"),
    ("bce_dice", {"bce_weight": 0, "dice_weight": 0}, r"both 0"),
])
def test_bad_option_values(name, params, pattern):
    with pytest.raises(BadInputError, match=pattern):
        get_loss(name, **params)


def test_channel_weight_count_must_match_channels():
    with pytest.raises(BadInputError, match=r"3 channel_weights for 2 channels"):
        get_loss("dice", channel_weights=[1, 1, 1])(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


def test_params_round_trip_through_get_loss():
    loss = get_loss("focal_tversky", alpha=0.4, beta=0.6, gamma=1.0, channel_weights=[1, 2])
    again = get_loss("focal_tversky", **loss.params)
    assert again.params == loss.params == {"alpha": 0.4, "beta": 0.6, "gamma": 1.0, "smooth": 1.0,
                                           "channel_weights": [1.0, 2.0]}
