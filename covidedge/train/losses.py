"""Segmentation losses for the residual U-Net, selectable by name.

Every loss takes raw logits of shape (N, C, H, W) and binary targets of the same shape (bool,
0/1 or soft values in [0, 1]); channel 0 is the lungs and channel 1 the infection. Each loss is
first computed per sample and per channel, giving an (N, C) matrix (see ``per_channel``), then
averaged over channels with optional ``channel_weights`` (a weighted mean, so the weights only
set the channels' relative importance: infection is small and matters most) and finally
averaged over samples.

Overlap losses (Dice, Tversky, focal Tversky, Jaccard) are "soft": they use sigmoid
probabilities in place of hard masks, and add a smoothing constant ``smooth`` (in pixels) to the
numerator and the denominator of the overlap ratio. Smoothing keeps the ratio defined when a
channel is empty in both prediction and target (the ratio is then 1 and the loss 0, which is the
right answer for an infection-free image), and softens the gradient on tiny masks. With a
256x256 image and ``smooth=1`` its effect on non-empty masks is under one pixel's worth. ``smooth=0``
gives the textbook ratios but NaN for a channel that is empty in both.

BCE-type losses are computed from logits with ``binary_cross_entropy_with_logits``, which is
numerically stable for large |logit|. All arithmetic runs in float32 even under autocast.

Use ``get_loss(name, **params)``; ``LOSSES`` maps each name to its class.
"""

from __future__ import annotations

import inspect
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from covidedge.errors import BadInputError

__all__ = [
    "SegmentationLoss", "BCELoss", "DiceLoss", "BCEDiceLoss", "FocalLoss", "TverskyLoss",
    "FocalTverskyLoss", "JaccardLoss", "LOSSES", "get_loss", "loss_options",
]

#: Floor applied before raising (1 - x) to a power below 1, so its gradient stays finite.
_POW_FLOOR = 1e-12


# -- checks ---------------------------------------------------------------------------------
def _check_fraction(name: str, value, loss: str, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"loss '{loss}': {name}={value!r} is not a number",
                            hint=f"pass {name} as a number in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise BadInputError(f"loss '{loss}': {name}={v} is outside [0, 1]",
                            hint=f"pass {name} as a number in [0, 1]")
    return v


def _check_nonneg(name: str, value, loss: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"loss '{loss}': {name}={value!r} is not a number",
                            hint=f"pass {name} as a number >= 0") from None
    if not (v >= 0.0 and math.isfinite(v)):
        raise BadInputError(f"loss '{loss}': {name}={v} must be a finite number >= 0",
                            hint=f"pass {name} as a number >= 0")
    return v


def _check_channel_weights(weights, loss: str) -> Optional[Tuple[float, ...]]:
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise BadInputError(f"loss '{loss}': channel_weights={weights!r} is not a list of numbers",
                            hint="pass one weight per mask channel, e.g. [1.0, 3.0]")
    out = tuple(_check_nonneg("channel_weights", w, loss) for w in weights)
    if not out or sum(out) <= 0:
        raise BadInputError(f"loss '{loss}': channel_weights={list(weights)} must have a positive sum",
                            hint="pass one weight per mask channel, e.g. [1.0, 3.0]")
    return out


# -- base -----------------------------------------------------------------------------------
class SegmentationLoss(nn.Module):
    """Base class: checks inputs, computes an (N, C) loss matrix and reduces it to a scalar."""

    name = "base"

    def __init__(self, channel_weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.channel_weights = _check_channel_weights(channel_weights, self.name)

    @property
    def params(self) -> Dict[str, object]:
        """The options this loss was built with, as plain values (for checkpoints and reports)."""
        sig = inspect.signature(type(self).__init__)
        out = {}
        for key in list(sig.parameters)[1:]:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor):
        if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise BadInputError(f"loss '{self.name}': logits and target must be torch tensors, got "
                                f"{type(logits).__name__} and {type(target).__name__}")
        if logits.ndim < 3:
            raise BadInputError(f"loss '{self.name}': logits have shape {tuple(logits.shape)}, "
                                "expected (N, C, H, W)", hint="pass the segmenter's raw logits")
        if tuple(target.shape) != tuple(logits.shape):
            raise BadInputError(f"loss '{self.name}': target has shape {tuple(target.shape)}, "
                                f"expected the logits' shape {tuple(logits.shape)}",
                                hint="give one binary mask per output channel, resized to the input size")
        if self.channel_weights is not None and len(self.channel_weights) != logits.shape[1]:
            raise BadInputError(f"loss '{self.name}': {len(self.channel_weights)} channel_weights for "
                                f"{logits.shape[1]} channels", hint="pass one weight per mask channel")
        logits = logits.float()
        target = target.to(device=logits.device, dtype=torch.float32)
        if target.numel() and bool(((target < 0) | (target > 1)).any()):
            raise BadInputError(f"loss '{self.name}': target has values outside [0, 1] "
                                f"(min {target.min().item():g}, max {target.max().item():g})",
                                hint="targets are binary masks; divide 0..255 masks by 255")
        return logits, target

    def per_channel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss per sample and channel, shape (N, C), before any averaging."""
        logits, target = self._prepare(logits, target)
        return self._per_channel(logits, target)

    def reduce(self, matrix: torch.Tensor) -> torch.Tensor:
        """(N, C) -> scalar: channel-weighted mean per sample, then the mean over samples."""
        if self.channel_weights is None:
            return matrix.mean()
        w = torch.tensor(self.channel_weights, dtype=matrix.dtype, device=matrix.device)
        return ((matrix * w).sum(dim=1) / w.sum()).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.per_channel(logits, target))

    def _per_channel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _spatial(x: torch.Tensor) -> Tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _soft_counts(logits: torch.Tensor, target: torch.Tensor):
    """Soft true-positive, false-positive and false-negative pixel counts per (N, C)."""
    p = torch.sigmoid(logits)
    dims = _spatial(logits)
    tp = (p * target).sum(dims)
    fp = (p * (1.0 - target)).sum(dims)
    fn = ((1.0 - p) * target).sum(dims)
    return tp, fp, fn


def _tversky_index(logits, target, alpha: float, beta: float, smooth: float) -> torch.Tensor:
    tp, fp, fn = _soft_counts(logits, target)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _dice_matrix(logits, target, smooth: float) -> torch.Tensor:
    p = torch.sigmoid(logits)
    dims = _spatial(logits)
    inter = (p * target).sum(dims)
    total = p.sum(dims) + target.sum(dims)
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def _bce_matrix(logits, target) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(_spatial(logits))


# -- losses ---------------------------------------------------------------------------------
class BCELoss(SegmentationLoss):
    """BCE = -mean[t*log(sigmoid(x)) + (1-t)*log(1-sigmoid(x))], from logits for stability."""

    name = "bce"

    def _per_channel(self, logits, target):
        return _bce_matrix(logits, target)


class DiceLoss(SegmentationLoss):
    """Dice = 1 - (2*sum(p*t) + s) / (sum(p) + sum(t) + s), p = sigmoid(x) (Milletari 2016, V-Net)."""

    name = "dice"

    def __init__(self, smooth: float = 1.0, channel_weights: Optional[Sequence[float]] = None):
        super().__init__(channel_weights)
        self.smooth = _check_nonneg("smooth", smooth, self.name)

    def _per_channel(self, logits, target):
        return _dice_matrix(logits, target, self.smooth)


class BCEDiceLoss(SegmentationLoss):
    """BCE+Dice = bce_weight*BCE + dice_weight*Dice (Dice as in Milletari 2016, V-Net)."""

    name = "bce_dice"

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 channel_weights: Optional[Sequence[float]] = None):
        super().__init__(channel_weights)
        self.bce_weight = _check_nonneg("bce_weight", bce_weight, self.name)
        self.dice_weight = _check_nonneg("dice_weight", dice_weight, self.name)
        if self.bce_weight + self.dice_weight <= 0:
            raise BadInputError("loss 'bce_dice': bce_weight and dice_weight are both 0",
                                hint="give at least one of them a positive weight")
        self.smooth = _check_nonneg("smooth", smooth, self.name)

    def _per_channel(self, logits, target):
        return (self.bce_weight * _bce_matrix(logits, target)
                + self.dice_weight * _dice_matrix(logits, target, self.smooth))


class FocalLoss(SegmentationLoss):
    """Focal = -mean[a_t*(1-p_t)^gamma*log(p_t)], a_t = alpha for t=1 else 1-alpha (Lin 2017)."""

    name = "focal"

    def __init__(self, alpha: Optional[float] = 0.25, gamma: float = 2.0,
                 channel_weights: Optional[Sequence[float]] = None):
        super().__init__(channel_weights)
        self.alpha = _check_fraction("alpha", alpha, self.name, allow_none=True)
        self.gamma = _check_nonneg("gamma", gamma, self.name)

    def _per_channel(self, logits, target):
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # = -log(p_t)
        if self.gamma == 0:
            loss = bce
        else:
            p_t = torch.exp(-bce)
            loss = (1.0 - p_t).clamp_min(_POW_FLOOR).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * target + (1.0 - self.alpha) * (1.0 - target)) * loss
        return loss.mean(_spatial(logits))


class TverskyLoss(SegmentationLoss):
    """Tversky = 1 - (TP + s) / (TP + alpha*FP + beta*FN + s), soft counts (Salehi 2017).

    ``alpha`` weighs false positives and ``beta`` false negatives; beta > alpha favours recall,
    which suits small lesions. With alpha = beta = 0.5 this is the Dice loss with smoothing
    2*s, and with alpha = beta = 1 the Jaccard loss with the same s.
    """

    name = "tversky"

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0,
                 channel_weights: Optional[Sequence[float]] = None):
        super().__init__(channel_weights)
        self.alpha = _check_nonneg("alpha", alpha, self.name)
        self.beta = _check_nonneg("beta", beta, self.name)
        self.smooth = _check_nonneg("smooth", smooth, self.name)

    def _per_channel(self, logits, target):
        return 1.0 - _tversky_index(logits, target, self.alpha, self.beta, self.smooth)


class FocalTverskyLoss(SegmentationLoss):
    """Focal Tversky = (1 - TI)^gamma, TI the Tversky index above (Abraham & Khan 2019).

    The paper writes the exponent as 1/gamma with gamma = 4/3 as its best setting; here
    ``gamma`` is the exponent itself, so the default 0.75 is that setting. gamma < 1 raises the
    loss (and its gradient) for examples that are already fairly well segmented.
    """

    name = "focal_tversky"

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                 smooth: float = 1.0, channel_weights: Optional[Sequence[float]] = None):
        super().__init__(channel_weights)
        self.alpha = _check_nonneg("alpha", alpha, self.name)
        self.beta = _check_nonneg("beta", beta, self.name)
        self.gamma = _check_nonneg("gamma", gamma, self.name)
        self.smooth = _check_nonneg("smooth", smooth, self.name)

    def _per_channel(self, logits, target):
        ti = _tversky_index(logits, target, self.alpha, self.beta, self.smooth)
        return (1.0 - ti).clamp_min(_POW_FLOOR).pow(self.gamma)


class JaccardLoss(SegmentationLoss):
    """Jaccard = 1 - (TP + s) / (sum(p) + sum(t) - TP + s), soft IoU (Rahman 2016; Berman 2018)."""

    name = "jaccard"

    def __init__(self, smooth: float = 1.0, channel_weights: Optional[Sequence[float]] = None):
        super().__init__(channel_weights)
        self.smooth = _check_nonneg("smooth", smooth, self.name)

    def _per_channel(self, logits, target):
        p = torch.sigmoid(logits)
        dims = _spatial(logits)
        inter = (p * target).sum(dims)
        union = p.sum(dims) + target.sum(dims) - inter
        return 1.0 - (inter + self.smooth) / (union + self.smooth)


# -- factory --------------------------------------------------------------------------------
LOSSES: Dict[str, type] = {
    cls.name: cls
    for cls in (BCELoss, DiceLoss, BCEDiceLoss, FocalLoss, TverskyLoss, FocalTverskyLoss, JaccardLoss)
}


def loss_options(name: str) -> Tuple[str, ...]:
    """Names of the options the loss ``name`` accepts."""
    cls = _lookup(name)
    return tuple(list(inspect.signature(cls.__init__).parameters)[1:])


def _lookup(name: str) -> type:
    key = str(name).strip().lower().replace("-", "_")
    if key not in LOSSES:
        raise BadInputError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}",
                            hint="pick a loss from that list")
    return LOSSES[key]


def get_loss(name: str, **params) -> SegmentationLoss:
    """Build the loss called ``name`` with ``params``; unknown names or options raise
    BadInputError (an option is never accepted and then ignored)."""
    cls = _lookup(name)
    accepted = loss_options(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise BadInputError(f"loss '{cls.name}' has no option(s) {', '.join(unknown)}; "
                            f"it accepts {', '.join(accepted)}",
                            hint="remove the option or choose a loss that takes it")
    return cls(**params)
