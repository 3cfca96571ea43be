"""What differs between training the classifier and the segmenter: the model's size options and
spec, the datasets, the loss, one training step's forward pass and the Val score.

The classifier is the Xception network trained with a class-weighted cross-entropy and judged
by Val accuracy; the segmenter is the residual U-Net trained with a loss from
``covidedge.train.losses`` and judged by the mean of the lung Dice (all images) and the
infection Dice (COVID-19 images) of the masks the one mask rule makes, since those are the
numbers the model is judged by (a loss value is not comparable across loss functions). Losses and Val run in fp32 whatever the
autocast precision of the step.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from covidedge.errors import BadInputError
from covidedge.progress import note
from covidedge.spec import CLASS_LABELS
from covidedge.train.amp import AmpPlan, to_layout

__all__ = ["ClassifierTask", "SegmenterTask", "resolve_sizes"]


def resolve_sizes(task: str, variant: Optional[str], **given) -> Dict[str, Any]:
    """``image_size`` (px) and the model's size options for ``task``: each value given (not None)
    wins, the named variant (see ``covidedge.models.registry.VARIANTS``; the task's default one
    when none is named) supplies the rest. An unknown variant, or one of the other task, is a
    BadInputError."""
    from covidedge.models.registry import DEFAULT_VARIANTS, get_variant

    v = get_variant(variant if variant is not None else DEFAULT_VARIANTS[task], task)
    values: Dict[str, Any] = {"image_size": v.input_size, **v.model_kwargs}
    values.update({k: x for k, x in given.items() if x is not None})
    return values


class ClassifierTask:
    """Xception, class-weighted cross-entropy, best epoch by Val accuracy."""

    name = "classifier"
    monitor = "val_accuracy"
    curve_metric = "accuracy"

    def __init__(self, o: Dict[str, Any]):
        self.o = o
        self.weights: Optional[np.ndarray] = None
        self.aux = None  # AuxMaskSupervision when o["aux_masks"] > 0
        self.train_ds = None
        self.distill: Optional[Dict[str, Any]] = None  # the teachers' record, when distilling

    @staticmethod
    def check_options(o: Dict[str, Any]) -> None:
        if not 0.0 <= o["drop_rate"] < 1.0:
            raise BadInputError(f"drop-rate={o['drop_rate']} is outside [0, 1)")
        if o["width_mult"] <= 0:
            raise BadInputError(f"width-mult={o['width_mult']} is not positive; expected e.g. 0.25 .. 1.0")
        aux = o.get("aux_masks", 0.0)
        if not (isinstance(aux, (int, float)) and math.isfinite(aux) and 0 <= aux <= 10):
            raise BadInputError(f"aux-masks={aux!r} is invalid; expected a loss weight in [0, 10] "
                                "(0: off, 0.5 a usual value)")
        from covidedge.train.distill import check_distill_options

        check_distill_options(o)

    def spec(self):
        from covidedge.spec import classifier_spec

        s = self.o["image_size"]
        return classifier_spec("xception", input_size=(s, s),
                               model_kwargs={"width_mult": float(self.o["width_mult"]),
                                             "drop_rate": float(self.o["drop_rate"])})

    def datasets(self, train, val, progress):
        from covidedge.train.datasets import ClassificationDataset, SegmentationDataset, class_weights

        size = (self.o["image_size"],) * 2
        # with auxiliary mask supervision the Train items carry the lung and infection masks
        tr = (SegmentationDataset if self.o.get("aux_masks") else ClassificationDataset)(train, size, progress)
        va = ClassificationDataset(val, size, progress)
        self.weights = class_weights(tr.labels, len(CLASS_LABELS))
        if self.o.get("distill_from"):  # items gain the teachers' soft targets (filled in attach)
            from covidedge.train.distill import TeacherTargets

            tr = TeacherTargets(tr)
        self.train_ds = tr
        return tr, va

    def checkpoint_extra(self) -> Dict[str, Any]:
        extra: Dict[str, Any] = {"class_weights": [float(w) for w in self.weights]}
        if self.distill is not None:
            extra["distill"] = self.distill
        return extra

    def attach(self, model, device) -> List[Any]:
        """Training-only parameters beside the model's: the auxiliary mask head, if any. The
        teachers, when distilling, classify the clean Train images here (once)."""
        if self.o.get("distill_from"):
            from covidedge.train.distill import teacher_probabilities

            self.distill = d = teacher_probabilities(self.o["distill_from"], self.train_ds, self.o["image_size"],
                                                     self.o["distill_temperature"], device)
            accs = ", ".join(f"{t['train_accuracy']:.3f}" for t in d["teachers"])
            note(bool(self.o.get("progress")), f"distilling from {len(d['teachers'])} teacher(s) at T "
                 f"{d['temperature']:g}: Train accuracy {accs} (their mean {d['mean_train_accuracy']:.3f})")
        if not self.o.get("aux_masks"):
            return []
        from covidedge.train.auxmasks import AuxMaskSupervision

        self.aux = AuxMaskSupervision(model, self.o["aux_masks"], device)
        return self.aux.parameters()

    def resume_state(self) -> Dict[str, Any]:
        return self.aux.state() if self.aux is not None else {}

    def load_resume_state(self, resume: Dict[str, Any]) -> None:
        if self.aux is not None:
            self.aux.load(resume)

    def criterion(self, device):
        import torch

        return torch.nn.CrossEntropyLoss(weight=torch.as_tensor(self.weights, device=device))

    def augment_and_loss(self, model, batch, aug, gen, crit, device, amp: AmpPlan):
        x, y = batch[0].to(device, non_blocking=True), batch[-1].to(device, non_blocking=True)
        m = batch[1].to(device, non_blocking=True) if self.aux is not None else None
        x, m = aug(x, m, generator=gen)
        with amp.autocast():
            logits = model(to_layout(x, amp))
        loss = crit(logits.float(), y)
        if self.distill is not None:
            from covidedge.train.distill import distill_loss

            w, t = self.o["distill_weight"], self.o["distill_temperature"]
            loss = (1.0 - w) * loss + w * distill_loss(logits, batch[-2].to(device), t)
        if self.aux is not None:
            loss = loss + self.aux.loss(m, amp)
        return loss, x.shape[0]

    def validate(self, model, loader, crit, device, amp: AmpPlan) -> Dict[str, float]:
        import torch

        total, n, correct = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                with amp.autocast():
                    logits = model(to_layout(x, amp))
                total += float(crit(logits.float(), y)) * x.shape[0]
                correct += int((logits.argmax(1) == y).sum())
                n += x.shape[0]
        return {"val_loss": total / n, "val_accuracy": correct / n}


class SegmenterTask:
    """Residual U-Net, a loss from ``LOSSES``, best epoch by the mean of Val lung and infection
    Dice."""

    name = "segmenter"
    monitor = "val_dice_mean"
    curve_metric = "dice_mean"

    def __init__(self, o: Dict[str, Any]):
        self.o = o

    @staticmethod
    def check_options(o: Dict[str, Any]) -> None:
        from covidedge.train.losses import get_loss

        get_loss(o["loss"], **o["loss_params"])  # unknown loss or option: fail before decoding data
        if o["base_width"] < 1 or o["depth"] < 1:
            raise BadInputError(f"base-width={o['base_width']} and depth={o['depth']} must be positive")
        if int(o["image_size"]) % (2 ** o["depth"]):
            raise BadInputError(f"image-size={o['image_size']} is not divisible by 2**depth={2 ** o['depth']}",
                                hint="pick an image size that the U-Net can halve depth times, e.g. 128 or 256")

    def spec(self):
        from covidedge.spec import segmenter_spec

        s = self.o["image_size"]
        return segmenter_spec("resunet", input_size=(s, s),
                              model_kwargs={"base_width": int(self.o["base_width"]),
                                            "depth": int(self.o["depth"])})

    def datasets(self, train, val, progress):
        from covidedge.train.datasets import SegmentationDataset

        size = (self.o["image_size"],) * 2
        return SegmentationDataset(train, size, progress), SegmentationDataset(val, size, progress)

    def checkpoint_extra(self) -> Dict[str, Any]:
        return {}

    def attach(self, model, device) -> List[Any]:
        return []

    def resume_state(self) -> Dict[str, Any]:
        return {}

    def load_resume_state(self, resume: Dict[str, Any]) -> None:
        pass

    def criterion(self, device):
        from covidedge.train.losses import get_loss

        return get_loss(self.o["loss"], **(self.o["loss_params"] or {})).to(device)

    def augment_and_loss(self, model, batch, aug, gen, crit, device, amp: AmpPlan):
        x = batch[0].to(device, non_blocking=True)
        m = batch[1].to(device, non_blocking=True)
        x, m = aug(x, m, generator=gen)
        with amp.autocast():
            logits = model(to_layout(x, amp))
        return crit(logits.float(), m), x.shape[0]

    def validate(self, model, loader, crit, device, amp: AmpPlan) -> Dict[str, float]:
        import torch

        covid = CLASS_LABELS.index("COVID-19")
        total, n = 0.0, 0
        lung_d: List[float] = []
        inf_d: List[float] = []
        with torch.no_grad():
            for x, m, y in loader:
                x, m = x.to(device), m.to(device)
                with amp.autocast():
                    logits = model(to_layout(x, amp))
                logits = logits.float()
                total += float(crit(logits, m)) * x.shape[0]
                n += x.shape[0]
                pred = _rule_masks(torch.sigmoid(logits)).to(m.device)
                d = _dice_per_image(pred, m > 0.5)  # (N, 2)
                lung_d.extend(d[:, 0].tolist())
                inf_d.extend(d[(y == covid).to(d.device), 1].tolist())
        lung = _nanmean(lung_d)
        inf = _nanmean(inf_d)
        mean = lung if math.isnan(inf) else 0.5 * (lung + inf)
        return {"val_loss": total / n, "val_dice_lungs": lung, "val_dice_infection": inf,
                "val_dice_mean": mean}


def _rule_masks(prob):
    """(N, 2, h, w) boolean lung and infection masks from probabilities by the one mask rule that
    infer, evaluate and the Triton models use (covidedge.runtime.postprocess), so the epoch kept
    is judged by the masks users get."""
    import torch

    from covidedge.runtime.postprocess import segmentation_masks
    from covidedge.spec import MASK_THRESHOLD

    p = prob.detach().cpu().numpy()
    masks = [np.stack(segmentation_masks(q[0], q[1], MASK_THRESHOLD)) for q in p]
    return torch.from_numpy(np.stack(masks))


def _nanmean(values: List[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _dice_per_image(pred, target):
    """Dice per image and channel of boolean (N, C, H, W) tensors; NaN where both masks are
    empty (undefined, and left out of the mean, as covidedge.metrics.dice does)."""
    import torch

    pred, target = pred.flatten(2).float(), target.flatten(2).float()
    inter = (pred * target).sum(-1)
    denom = pred.sum(-1) + target.sum(-1)
    return torch.where(denom > 0, 2.0 * inter / denom.clamp(min=1.0),
                       torch.full_like(denom, float("nan")))
