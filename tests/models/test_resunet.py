"""Residual U-Net: shapes, size checks, residual blocks, width scaling, init."""

from __future__ import annotations

import pytest
import torch

from covidedge.models.resunet import ResidualBlock, ResUNet, resunet



def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(**kw) -> ResUNet:
    kw.setdefault("base_width", 8)
    kw.setdefault("depth", 3)
    return ResUNet(**kw)


def test_defaults():
    model = resunet()
    assert (model.num_classes, model.in_chans, model.base_width, model.depth) == (2, 1, 32, 4)
    assert model.num_features == 32
    assert model.size_divisor == 16
    assert model.bridge.conv2.out_channels == 32 * 2 ** 4
    assert n_params(model) == 8_287_234


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_forward_shapes(batch, size):
    torch.manual_seed(0)
    model = small().eval()
    x = torch.rand(batch, 1, *size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (batch, 8, *size)
    assert logits.shape == (batch, 2, *size)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(features), logits)
    assert model.forward_head(features, pre_logits=True) is features


def test_encoder_downsamples_depth_times():
    model = small(depth=3).eval()
    seen = []
    hook = model.bridge.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(torch.rand(1, 1, 64, 32))
    hook.remove()
    assert seen == [torch.Size([1, 8 * 2 ** 3, 8, 4])]


@pytest.mark.parametrize("size", [(36, 32), (32, 20), (30, 30)])
def test_rejects_sizes_not_divisible_by_2_pow_depth(size):
    model = small(depth=3)
    with pytest.raises(ValueError, match=r"divisible by 8"):
        model(torch.rand(1, 1, *size))


def test_depth_sets_the_divisor():
    model = small(depth=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 36, 12)).shape == (1, 2, 36, 12)
    with pytest.raises(ValueError, match=r"divisible by 4.*40x12"):
        model(torch.rand(1, 1, 38, 12))


def test_rejects_wrong_channels_and_rank():
    model = small()
    with pytest.raises(ValueError, match=r"3 channels.*expects 1"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"NCHW"):
        model(torch.rand(1, 32, 32))


def test_custom_classes_and_channels():
    model = small(num_classes=1, in_chans=3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 1, 16, 16)


def test_base_width_scales_parameters_quadratically():
    a, b = n_params(ResUNet(base_width=8)), n_params(ResUNet(base_width=16))
    assert 3.5 < b / a < 4.1


def test_residual_block_shortcuts():
    same = ResidualBlock(8, 8)
    assert isinstance(same.shortcut, torch.nn.Identity)
    wider = ResidualBlock(8, 16)
    strided = ResidualBlock(8, 8, stride=2)
    for block in (wider, strided):
        conv = block.shortcut[0]
        assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    assert strided.shortcut[0].stride == (2, 2)
    with torch.no_grad():
        assert strided.eval()(torch.rand(1, 8, 10, 10)).shape == (1, 8, 5, 5)


def test_residual_block_adds_identity():
    torch.manual_seed(0)
    block = ResidualBlock(4, 4).eval()
    for p in (block.bn2.weight, block.bn2.bias):
        torch.nn.init.zeros_(p)  # residual branch contributes nothing
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = small(base_width=4, depth=2).train()
    loss = model(torch.rand(2, 1, 16, 16)).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_init_is_deterministic_with_a_seed():
    torch.manual_seed(7)
    a = small()
    torch.manual_seed(7)
    b = small()
    torch.manual_seed(8)
    c = small()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head.weight, c.head.weight)


@pytest.mark.parametrize("kw", [dict(depth=0), dict(base_width=0), dict(num_classes=0),
                                dict(depth=2.5)])
def test_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        ResUNet(**kw)
