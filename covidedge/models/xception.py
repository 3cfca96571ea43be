"""Xception classifier for chest X-rays.

Chollet, F. "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017
(arXiv:1610.02357). Layout as in the paper's Figure 5: an entry flow (two plain 3x3 convs and
three strided residual blocks of 128 / 256 / 728 channels), a middle flow of eight identity
residual blocks of three separable convolutions at 728 channels, and an exit flow (a strided
728 -> 1024 residual block, then separable convs of 1536 and 2048 channels), followed by global
average pooling, dropout and a linear classifier. At ``width_mult=1`` the model has the paper's
22,855,952 parameters for 1000 classes and 3 input channels.

Input convention in covidedge: ``(N, 1, 256, 256)`` float32 grayscale scaled to [0, 1] (see
``covidedge.data.preprocess``); any height and width of at least 32 px works. The output is
``(N, num_classes)`` logits; ``covidedge.models.wrapper.InferenceWrapper`` adds the softmax.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Smallest input height / width (px): below it the exit flow has nothing left to pool.
MIN_INPUT_SIZE = 32

#: Channels of the two plain convolutions that open the entry flow (stride 2, then 1).
STEM_CHANNELS: Tuple[int, int] = (32, 64)

#: The residual blocks, in order: (separable conv output channels, stride, start with ReLU).
#: Strided blocks end in a 3x3 max pool and have a 1x1 strided conv + BN shortcut.
BLOCKS: Tuple[Tuple[Tuple[int, ...], int, bool], ...] = (
    # entry flow
    ((128, 128), 2, False),
    ((256, 256), 2, True),
    ((728, 728), 2, True),
    # middle flow: eight identity residual blocks
    *(((728, 728, 728), 1, True),) * 8,
    # exit flow
    ((728, 1024), 2, True),
)

#: The two separable convolutions (each followed by BN + ReLU) that close the exit flow.
TAIL_CHANNELS: Tuple[int, int] = (1536, 2048)


def scale_channels(channels: int, width_mult: float) -> int:
    """Scale a channel count by ``width_mult``, rounded to the nearest multiple of 8 (halves
    round up; min 8)."""
    return max(8, int(channels * width_mult / 8.0 + 0.5) * 8)


def _check_input_size(x: torch.Tensor, minimum: int) -> None:
    """Raise ValueError for inputs that are not NCHW or smaller than ``minimum`` px.

    Skipped while tracing for export, where the shapes are fixed by the export call.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW input tensor, got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < minimum or w < minimum:
        raise ValueError(
            f"input of {h}x{w} px is too small for Xception: height and width must be at least "
            f"{minimum} px (resize images, e.g. to 256x256)"
        )


# -- building blocks ----------------------------------------------------------------------
class SeparableConv2d(nn.Module):
    """Depthwise 3x3 convolution followed by a pointwise 1x1 convolution, both without bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(in_chs, in_chs, kernel_size, padding=kernel_size // 2,
                                   groups=in_chs, bias=False)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class GlobalAvgPool(nn.Module):
    """Mean over height and width, (N, C, H, W) -> (N, C, 1, 1), written so that both ONNX
    exporters emit an opset-17 op TensorRT 8.6+ builds: GlobalAveragePool from the TorchScript
    exporter, a full-window AveragePool from torch.export (its ReduceMean would be opset 18,
    which the version converter cannot bring down to 17)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if torch.jit.is_tracing() or not (isinstance(h, int) and isinstance(w, int)):
            return F.adaptive_avg_pool2d(x, 1)
        return F.avg_pool2d(x, (h, w))


class XceptionBlock(nn.Module):
    """One residual block: [ReLU, SeparableConv, BN] per entry of ``out_chs``, then a 3x3
    stride-2 max pool when ``stride`` is 2; the shortcut is a 1x1 strided conv + BN when the
    shape changes and the identity otherwise.

    The shortcut starts from the block's input before the first ReLU, as in the reference
    implementation, so no ReLU here works in place on the input.
    """

    def __init__(self, in_chs: int, out_chs: Sequence[int], stride: int = 1,
                 start_with_relu: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"XceptionBlock stride must be 1 or 2, got {stride}")
        layers = []
        chs = in_chs
        for i, out in enumerate(out_chs):
            if i > 0 or start_with_relu:
                layers.append(nn.ReLU(inplace=i > 0))
            layers.append(SeparableConv2d(chs, out))
            layers.append(nn.BatchNorm2d(out))
            chs = out
        if stride == 2:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        if stride != 1 or in_chs != chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, chs, 1, stride=stride, bias=False), nn.BatchNorm2d(chs))
        else:
            self.shortcut = nn.Identity()
        self.out_chs = chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


# -- model --------------------------------------------------------------------------------
class Xception(nn.Module):
    """Xception image classifier.

    Args:
        num_classes: number of output logits; 0 leaves the pooled features as the output.
        in_chans: input channels (1 for grayscale X-rays, 3 for RGB).
        width_mult: scales every channel count (rounded to a multiple of 8, min 8); 1.0 is the
            paper's model, 0.25 a small fast variant.
        drop_rate: dropout probability applied to the pooled features before the classifier.
    """

    def __init__(self, num_classes: int = 3, in_chans: int = 1, width_mult: float = 1.0,
                 drop_rate: float = 0.0):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        if int(in_chans) != in_chans or in_chans < 1:
            raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.width_mult = float(width_mult)
        self.drop_rate = float(drop_rate)

        def ch(c: int) -> int:
            return scale_channels(c, width_mult)

        stem1, stem2 = ch(STEM_CHANNELS[0]), ch(STEM_CHANNELS[1])
        # The paper's two opening convolutions have no padding ("valid"), as in the reference.
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_chans, stem1, 3, stride=2, bias=False),
            nn.BatchNorm2d(stem1),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem1, stem2, 3, bias=False),
            nn.BatchNorm2d(stem2),
            nn.ReLU(inplace=True),
        )
        blocks = []
        chs = stem2
        for out_chs, stride, start_with_relu in BLOCKS:
            block = XceptionBlock(chs, [ch(c) for c in out_chs], stride, start_with_relu)
            blocks.append(block)
            chs = block.out_chs
        self.blocks = nn.Sequential(*blocks)
        tail1, tail2 = ch(TAIL_CHANNELS[0]), ch(TAIL_CHANNELS[1])
        self.tail = nn.Sequential(
            SeparableConv2d(chs, tail1),
            nn.BatchNorm2d(tail1),
            nn.ReLU(inplace=True),
            SeparableConv2d(tail1, tail2),
            nn.BatchNorm2d(tail2),
            nn.ReLU(inplace=True),
        )
        self.num_features = tail2
        self.global_pool = GlobalAvgPool()
        self.head_drop = nn.Dropout(self.drop_rate)
        self.fc = nn.Linear(tail2, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions, unit BN scale and zero shift, small normal classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image batch -> (N, num_features, h, w) feature map after the exit flow's last
        ReLU; h, w are about H/32, W/32 (8x8 for a 256x256 input)."""
        _check_input_size(x, MIN_INPUT_SIZE)
        return self.tail(self.blocks(self.stem(x)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (N, num_classes), or pooled features (N, num_features) with
        ``pre_logits=True``."""
        x = self.global_pool(features).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- factory ------------------------------------------------------------------------------
def xception(num_classes: int = 3, in_chans: int = 1, width_mult: float = 1.0,
             drop_rate: float = 0.0) -> Xception:
    """Build an Xception classifier (3 COVID-QU-Ex classes, grayscale input by default)."""
    return Xception(num_classes=num_classes, in_chans=in_chans, width_mult=width_mult,
                    drop_rate=drop_rate)
