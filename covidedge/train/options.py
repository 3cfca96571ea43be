"""Training options as objects: what both models' training shares (:class:`TrainOptions`), what
each adds (:class:`ClassifierOptions`, :class:`SegmenterOptions`) and the loss study's
(:class:`StudyOptions`), each with its defaults in one place. ``covidedge train`` and
``covidedge study`` take their flags' defaults from here and build these objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from covidedge.spec import Options


@dataclass(frozen=True)
class TrainOptions(Options):
    """``variant`` names the model size (its ``image_size`` in px, when given, wins); ``epochs``
    at most, ``batch_size`` images per step, AdamW with peak ``lr`` and ``weight_decay``;
    ``device`` and ``amp`` (mixed precision); ``seed`` for weights, subset, shuffling and
    augmentation; stop after ``patience`` epochs without a better Val score;
    ``limit_per_class`` images per class of Train and Val; ``num_workers`` loader processes;
    ``resume`` from last.pt, ``overwrite`` an earlier run; ``hflip`` mirrors images;
    ``allow_missing_classes``; ``bn_images`` clean Train images re-estimate BatchNorm before
    each Val pass (0: off); ``ema_decay`` > 0 validates and saves an EMA of the weights;
    ``augment`` "basic" or "robust"; ``init_from`` a checkpoint (same network) whose weights
    start the run instead of random ones (fine-tuning, or another schedule after a finished run);
    ``time_budget`` minutes: the schedule is fitted to it after epoch 1 (and epoch 2)."""

    variant: Optional[str] = None
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    image_size: Optional[int] = None
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    patience: int = 8
    limit_per_class: Optional[int] = None
    num_workers: int = 0
    resume: bool = False
    hflip: bool = False
    overwrite: bool = False
    allow_missing_classes: bool = False
    bn_images: int = 600
    ema_decay: float = 0.0
    augment: str = "basic"
    init_from: Optional[str] = None
    time_budget: Optional[float] = None


@dataclass(frozen=True)
class ClassifierOptions(TrainOptions):
    """The Xception classifier's own: ``width_mult`` (wins over the variant's), the dropout
    before its head, ``aux_masks``, the weight of the training-only lung and infection mask
    loss (``covidedge.train.auxmasks``; 0: off), and distillation (``covidedge.train.distill``):
    ``distill_from`` teacher checkpoints, the soft-target loss's ``distill_weight`` and
    ``distill_temperature``."""

    width_mult: Optional[float] = None
    drop_rate: float = 0.2
    aux_masks: float = 0.0
    distill_from: Optional[Tuple[str, ...]] = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0


@dataclass(frozen=True)
class SegmenterOptions(TrainOptions):
    """The residual U-Net's own: ``base_width`` and ``depth`` (win over the variant's), the
    ``loss`` (covidedge.train.losses.LOSSES) and its ``loss_params``."""

    base_width: Optional[int] = None
    depth: Optional[int] = None
    loss: str = "bce_dice"
    loss_params: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class StudyOptions(Options):
    """The loss study's shared budget: every loss trains ``epochs`` epochs (no early stopping)
    with the same U-Net size (``variant``, ``image_size``, ``base_width``, ``depth``), batch,
    learning rate, images, seed, device and mixed precision."""

    epochs: int = 10
    variant: Optional[str] = None
    image_size: Optional[int] = None
    base_width: Optional[int] = None
    depth: Optional[int] = None
    batch_size: int = 16
    lr: float = 1e-3
    limit_per_class: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 0


__all__ = ["TrainOptions", "ClassifierOptions", "SegmenterOptions", "StudyOptions"]
