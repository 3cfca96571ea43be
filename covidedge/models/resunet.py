"""Residual U-Net segmenter for lungs and COVID-19 infection in chest X-rays.

A U-Net (Ronneberger et al., MICCAI 2015, arXiv:1505.04597) whose stages are residual blocks
(He et al., CVPR 2016), in the spirit of Zhang et al., "Road Extraction by Deep Residual U-Net"
(arXiv:1711.10684). The encoder halves the resolution ``depth`` times with strided residual
blocks (the last one is the bridge); the decoder doubles it back with bilinear upsampling
(``align_corners=False``, an ONNX ``Resize`` that TensorRT builds in every precision), concatenates
the encoder's skip connection and mixes them with a residual block. A final 1x1 convolution gives
``num_classes`` logit maps, by default 2: lungs and infection.

Input convention in covidedge: ``(N, 1, 256, 256)`` float32 grayscale scaled to [0, 1] (see
``covidedge.data.preprocess``); height and width must be divisible by ``2 ** depth``. The output
is ``(N, num_classes, H, W)`` logits; ``covidedge.models.wrapper.InferenceWrapper`` adds the
per-channel sigmoid.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


# -- building blocks ----------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN layers (ReLU between and after the sum) with a shortcut: the identity,
    or a 1x1 conv + BN projection when the channels or the stride change."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class UpBlock(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip connection, then a residual block
    that maps the ``in_chs + skip_chs`` channels to ``out_chs``."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int):
        super().__init__()
        self.block = ResidualBlock(in_chs + skip_chs, out_chs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


# -- model --------------------------------------------------------------------------------
class ResUNet(nn.Module):
    """Residual U-Net.

    Args:
        num_classes: output mask channels (2: lungs, infection).
        in_chans: input channels (1 for grayscale X-rays).
        base_width: channels at full resolution; stage ``i`` has ``base_width * 2**i``.
        depth: number of 2x downsamplings (the last is the bridge); H and W must be divisible
            by ``2 ** depth``.
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 1, base_width: int = 32,
                 depth: int = 4):
        super().__init__()
        for name, value, low in (("num_classes", num_classes, 1), ("in_chans", in_chans, 1),
                                 ("base_width", base_width, 1), ("depth", depth, 1)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.base_width = int(base_width)
        self.depth = int(depth)
        widths = [self.base_width * 2 ** i for i in range(self.depth + 1)]

        # Encoder: a full-resolution stem, then one strided block per level; the last is the
        # bridge at 1 / 2**depth of the input resolution.
        self.stem = ResidualBlock(self.in_chans, widths[0])
        self.encoder = nn.ModuleList(
            ResidualBlock(widths[i], widths[i + 1], stride=2) for i in range(self.depth - 1))
        self.bridge = ResidualBlock(widths[-2], widths[-1], stride=2)
        # Decoder: back up level by level, each time fusing the encoder's skip at that level.
        self.decoder = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(self.depth)))
        self.num_features = widths[0]
        self.head = nn.Conv2d(widths[0], self.num_classes, 1)
        self._init_weights()

    @property
    def size_divisor(self) -> int:
        """Input height and width must be multiples of this many px."""
        return 2 ** self.depth

    def _init_weights(self) -> None:
        """He-normal convolutions, unit BN scale and zero shift, zero head bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is NCHW with ``in_chans`` channels and H, W divisible
        by ``2 ** depth``. Skipped while tracing for export, where shapes are fixed."""
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return
        if x.dim() != 4:
            raise ValueError(f"expected an NCHW input tensor, got shape {tuple(x.shape)}")
        if int(x.shape[1]) != self.in_chans:
            raise ValueError(
                f"input has {int(x.shape[1])} channels, this ResUNet expects {self.in_chans}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(
                f"input of {h}x{w} px does not fit a ResUNet of depth {self.depth}: height and "
                f"width must be divisible by {d} (resize or pad to e.g. {(h + d - 1) // d * d}x"
                f"{(w + d - 1) // d * d})")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image batch -> decoder feature map (N, base_width, H, W)."""
        self.check_input(x)
        skips: List[torch.Tensor] = []
        x = self.stem(x)
        for block in self.encoder:
            skips.append(x)
            x = block(x)
        skips.append(x)
        x = self.bridge(x)
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Decoder features -> per-pixel logits (N, num_classes, H, W); ``pre_logits=True``
        returns the features unchanged."""
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- factory ------------------------------------------------------------------------------
def resunet(num_classes: int = 2, in_chans: int = 1, base_width: int = 32,
            depth: int = 4) -> ResUNet:
    """Build a residual U-Net (lungs + infection masks from grayscale input by default)."""
    return ResUNet(num_classes=num_classes, in_chans=in_chans, base_width=base_width, depth=depth)
