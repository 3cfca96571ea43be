"""Xception: the paper's layout and parameter count, shapes, sizes, width scaling, init."""

from __future__ import annotations

import pytest
import torch

from covidedge.models.xception import (
    SeparableConv2d,
    Xception,
    XceptionBlock,
    scale_channels,
    xception,
)



def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_the_paper_for_imagenet_layout():
    # Chollet 2017, Table 3: 22,855,952 parameters (1000 classes, RGB input).
    assert n_params(Xception(num_classes=1000, in_chans=3)) == 22_855_952


def test_parameter_count_for_covid_classifier():
    # 3 classes, grayscale: 2048*997 fewer fc weights, 997 fewer biases, 2*9*32 fewer stem weights.
    model = xception()
    assert (model.num_classes, model.in_chans, model.num_features) == (3, 1, 2048)
    assert n_params(model) == 22_855_952 - 2048 * 997 - 997 - 2 * 9 * 32 == 20_812_523


def test_has_36_convolutional_layers_in_the_feature_extractor():
    # The paper: "36 convolutional layers forming the feature extraction base"
    # (2 plain convs + 34 separable convs; the 1x1 shortcut convs are not counted).
    model = Xception(width_mult=0.125)
    separable = [m for m in model.modules() if isinstance(m, SeparableConv2d)]
    assert len(separable) == 34
    stem_convs = [m for m in model.stem if isinstance(m, torch.nn.Conv2d)]
    assert len(stem_convs) == 2
    for sep in separable:
        assert sep.depthwise.groups == sep.depthwise.in_channels
        assert sep.depthwise.kernel_size == (3, 3) and sep.pointwise.kernel_size == (1, 1)
        assert sep.depthwise.bias is None and sep.pointwise.bias is None
    # 8 middle-flow blocks with identity shortcuts, 4 strided blocks with 1x1 conv + BN ones.
    blocks = list(model.blocks)
    identity = [b for b in blocks if isinstance(b.shortcut, torch.nn.Identity)]
    assert len(blocks) == 12 and len(identity) == 8


def test_width_mult_scales_channels_and_parameters():
    assert scale_channels(728, 1.0) == 728
    assert scale_channels(728, 0.25) == 184
    assert scale_channels(32, 0.1) == 8  # never below 8
    assert scale_channels(100, 1.0) == 104  # nearest multiple of 8
    small = Xception(width_mult=0.25)
    half = Xception(width_mult=0.5)
    assert small.num_features == 512 and half.num_features == 1024
    assert n_params(small) < 2_000_000
    assert n_params(small) < n_params(half) < 20_812_523


@pytest.mark.parametrize("batch", [1, 4])
def test_forward_shapes_small_model(batch):
    torch.manual_seed(0)
    model = Xception(num_classes=3, width_mult=0.125).eval()
    x = torch.rand(batch, 1, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert features.shape == (batch, model.num_features, 2, 2)
    assert pooled.shape == (batch, model.num_features)
    assert logits.shape == (batch, 3)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(features), logits)


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (96, 64)])
def test_accepts_any_size_from_32(size):
    model = Xception(width_mult=0.125).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, 3)


@pytest.mark.parametrize("size", [(31, 64), (64, 16)])
def test_rejects_inputs_smaller_than_32(size):
    model = Xception(width_mult=0.125).eval()
    with pytest.raises(ValueError, match=r"at least 32 px"):
        model(torch.rand(1, 1, *size))


def test_full_size_forward_at_256():
    torch.manual_seed(0)
    model = xception().eval()
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    # valid stem convs: 256 -> 127 -> 125, then four stride-2 blocks: 63, 32, 16, 8
    assert features.shape == (1, 2048, 8, 8)
    assert (features >= 0).all()  # the exit flow ends in a ReLU
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()


def test_num_classes_zero_returns_pooled_features():
    model = Xception(num_classes=0, width_mult=0.125).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, model.num_features)


def test_in_chans_three():
    model = Xception(in_chans=3, width_mult=0.125).eval()
    assert model.stem[0].in_channels == 3
    with torch.no_grad():
        assert model(torch.rand(1, 3, 40, 40)).shape == (1, 3)


def test_drop_rate_is_active_in_training_only():
    torch.manual_seed(0)
    model = Xception(width_mult=0.125, drop_rate=0.5)
    features = torch.rand(4, model.num_features, 2, 2) + 0.5
    model.train()
    a, b = model.forward_head(features, pre_logits=True), model.forward_head(features, pre_logits=True)
    assert not torch.equal(a, b)
    assert (a == 0).any()
    model.eval()
    c = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(c, features.mean((2, 3)))


def test_block_shortcut_sees_input_before_relu_and_input_is_untouched():
    torch.manual_seed(0)
    block = XceptionBlock(16, [16, 16, 16], stride=1, start_with_relu=True).eval()
    x = torch.randn(2, 16, 8, 8)
    x_before = x.clone()
    with torch.no_grad():
        y = block(x)
        body = block.body(x.clone())
    torch.testing.assert_close(x, x_before)
    torch.testing.assert_close(y, body + x_before)  # identity shortcut keeps negatives


def test_strided_block_halves_resolution_with_projection():
    block = XceptionBlock(16, [32, 32], stride=2).eval()
    with torch.no_grad():
        y = block(torch.randn(1, 16, 9, 9))
    assert y.shape == (1, 32, 5, 5)
    assert isinstance(block.shortcut[0], torch.nn.Conv2d) and block.shortcut[0].stride == (2, 2)


def test_init_is_deterministic_with_a_seed():
    torch.manual_seed(123)
    a = Xception(width_mult=0.125)
    torch.manual_seed(123)
    b = Xception(width_mult=0.125)
    torch.manual_seed(124)
    c = Xception(width_mult=0.125)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.fc.weight, c.fc.weight)


@pytest.mark.parametrize("kw", [dict(width_mult=0), dict(drop_rate=1.0), dict(num_classes=-1),
                                dict(in_chans=0)])
def test_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        Xception(**kw)
