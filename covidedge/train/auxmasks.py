"""Auxiliary mask supervision for the classifier: a small training-only head on the Xception
middle flow's feature map (1/16 of the input size) predicts the lung and infection masks that
every COVID-QU-Ex Train image carries, at 1/4 of the input size. Its loss (binary cross-entropy
on the area-averaged masks, weighted by ``aux_masks``) is added to the classification loss, so
each image teaches the network where the lungs and the opacities are, not only its class.

The head is not a part of the classifier: it is held here, trained with its own parameters,
saved only in ``last.pt``'s resume state, and never exported, so the shipped network, its ONNX
graph and every engine are the plain Xception. The feature map is taken by a forward hook
that keeps it only in training steps (gradients on, module in train mode), so BatchNorm
re-estimation, validation and the weight average never see the head.
"""

from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["AuxMaskSupervision", "MASK_SCALE"]

MASK_SCALE = 4  # the head's masks are 1/MASK_SCALE of the input size


def _head(in_chs: int, hidden: int = 32):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(in_chs, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, 2, 1))


class AuxMaskSupervision:
    """Hooks ``model`` (an Xception) and turns a training step's masks into an extra loss term.

    ``parameters()`` are the head's (give them to the optimizer); ``loss(masks, amp)`` after the
    model's forward pass of the same batch returns ``weight * BCE`` of the head's lung and
    infection logits against ``masks`` (N, 2, H, W) area-averaged to (H/4, W/4)."""

    def __init__(self, model, weight: float, device: str):
        if not hasattr(model, "blocks") or len(model.blocks) < 2:
            raise ValueError("auxiliary mask supervision needs an Xception classifier")
        block = model.blocks[-2]  # end of the middle flow: 1/16 of the input size
        self.weight = float(weight)
        self.head = _head(int(block.out_chs)).to(device)
        self._features = None
        self._handle = block.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        import torch

        if module.training and torch.is_grad_enabled():
            self._features = output

    def parameters(self) -> List[Any]:
        return list(self.head.parameters())

    def loss(self, masks, amp):
        """The weighted auxiliary loss of the last training forward pass (fp32 scalar)."""
        import torch
        import torch.nn.functional as F

        f, self._features = self._features, None
        if f is None:
            raise RuntimeError("no training forward pass preceded the auxiliary loss")
        h, w = masks.shape[-2] // MASK_SCALE, masks.shape[-1] // MASK_SCALE
        with amp.autocast():
            logits = self.head(f.contiguous(memory_format=torch.contiguous_format))
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        target = F.adaptive_avg_pool2d(masks.float(), (h, w))
        return self.weight * F.binary_cross_entropy_with_logits(logits, target)

    def state(self) -> Dict[str, Any]:
        return {"aux_head": self.head.state_dict()}

    def load(self, resume: Dict[str, Any]) -> None:
        if resume.get("aux_head") is not None:
            self.head.load_state_dict(resume["aux_head"])

    def close(self) -> None:
        self._handle.remove()
