"""Evaluate a classifier or segmenter (checkpoint, ONNX model or engine) on a COVID-QU-Ex split.

Images are fed through THE preprocessing at the model's input size and run through one Runner,
so a checkpoint, its fp16 / int8 graphs and a TensorRT engine are measured the same way.
Classifier: accuracy, per-class precision / recall / F1 / support laid out like the COVID-QU-Ex
study's tables, macro and weighted averages, the confusion matrix and one-vs-rest ROC AUC.
Segmenter: per-image Dice and IoU averaged, lungs over all images and infection over COVID-19
images; on Non-COVID / Normal images the falsely predicted infected area is reported on its own
(never folded into Dice); severity (infected fraction of the lungs) error. Ground-truth masks
are compared at the model's input size (nearest-neighbour resize).

numpy and the runtime only: torch is never imported here (a checkpoint pulls it in through
the torch backend, an ONNX model or engine does not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from covidedge.backends.base import infer_fitted
from covidedge.errors import BadInputError, DatasetError, IncompatibleModelError, UsageError
from covidedge.evaluation.report import STUDY_CLASSIFIER_TEST, EvaluationReport, json_safe
from covidedge.progress import bar as progress_bar
from covidedge.spec import MASK_THRESHOLD, Options

__all__ = ["EvaluationOptions", "EvaluationReport", "evaluate", "STUDY_CLASSIFIER_TEST"]


def _open(model, backend: str):
    """(runner, opened_here): a Runner is used as given; a path is opened with runtime.load."""
    from covidedge.backends.base import Runner

    if isinstance(model, Runner):
        if backend not in ("auto", model.backend):
            raise UsageError(f"backend={backend!r} does not apply to a ready {model.backend} runner",
                             hint="pass the model's path to choose its backend")
        return model, False
    if not isinstance(model, (str, Path)):
        raise BadInputError(f"model is a {type(model).__name__}; expected a path to a checkpoint, "
                            "ONNX model or engine, or a covidedge Runner")
    from covidedge.runtime import load

    return load(model, backend=backend), True


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _bar(total: int, desc: str, enabled: bool):
    return progress_bar(total=total, desc=desc, unit="img", enabled=enabled)


@dataclass(frozen=True)
class EvaluationOptions(Options):
    """How :func:`evaluate` scores: ``batch_size`` images per call, ``limit_per_class`` images
    per class chosen from ``seed``, the mask ``threshold``, the ``backend`` that opens a path,
    ``keep_outputs`` (probabilities kept on the report) and ``allow_missing_classes``."""

    batch_size: int = 16
    limit_per_class: Optional[int] = None
    threshold: float = MASK_THRESHOLD
    backend: str = "auto"
    keep_outputs: bool = False
    seed: int = 0
    allow_missing_classes: bool = False

    def validate(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise BadInputError(f"batch-size={self.batch_size!r} is invalid; expected a positive integer")
        if not 0.0 < float(self.threshold) < 1.0:
            raise BadInputError(f"threshold={self.threshold} is outside (0, 1); expected e.g. 0.5")


def evaluate(model, data_root, split: str = "Val", options: Optional[EvaluationOptions] = None, *,
             progress: bool = False, **overrides: Any) -> EvaluationReport:
    """Evaluate ``model`` (a path opened with ``covidedge.runtime.load(path, backend)``, or a
    Runner, active or not) on ``split`` of the COVID-QU-Ex folder ``data_root``, as ``options``
    (an :class:`EvaluationOptions`, its fields also accepted as keywords) says; ``progress``
    shows a bar on a terminal.

    ``limit_per_class`` takes at most that many images per class, chosen from ``seed`` exactly
    as training does; ``threshold`` turns segmenter probabilities into masks with the rule
    ``infer`` uses (covidedge.runtime.postprocess.segmentation_masks: lung regions, holes and the
    infection gate decided at the model's size, then probabilities resized bilinearly to the
    image's own size and probability > threshold), so the scores are those of the masks ``infer``
    writes.
    A split without images of some class is refused (DatasetError) unless
    ``allow_missing_classes``; the report's settings then list them as ``missing_classes``.
    """
    from covidedge.data.covidqu import CLASSES, CovidQuDataset
    from covidedge.data.covidqu import select_samples

    o = EvaluationOptions.of(options, **overrides)
    batch_size, limit_per_class, threshold, backend = o.batch_size, o.limit_per_class, o.threshold, o.backend
    keep_outputs, seed, allow_missing_classes = o.keep_outputs, o.seed, o.allow_missing_classes
    ds = CovidQuDataset(data_root)
    missing_classes = ds.check_classes(split, allow_missing=bool(allow_missing_classes))
    samples = select_samples(ds.samples(split), limit_per_class, seed)
    if not samples:
        raise DatasetError(f"split {split} has no images", path=ds.root)
    split = samples[0].split

    runner, opened_here = _open(model, backend)
    was_active = runner.is_active
    t0 = time.perf_counter()
    try:
        runner.activate()
        spec = runner.spec
        bs = batch_size if runner.max_batch is None else max(1, min(batch_size, runner.max_batch))
        settings = {"batch_size": bs, "limit_per_class": limit_per_class, "seed": int(seed),
                    "threshold": float(threshold), "input_size": list(spec.input_size),
                    "data_root": str(ds.root), "preprocessing": spec.preprocessing,
                    "missing_classes": missing_classes}
        if spec.task == "classifier":
            result = _evaluate_classifier(runner, spec, samples, bs, progress, keep_outputs, CLASSES)
        else:
            result = _evaluate_segmenter(runner, spec, samples, bs, float(threshold), progress,
                                         keep_outputs)
        describe = runner.describe()
        settings["mask_warnings"] = result.pop("mask_warnings", [])
    finally:
        if not was_active:
            runner.deactivate()
    seconds = time.perf_counter() - t0
    return EvaluationReport(task=spec.task, split=split, labels=list(spec.labels),
                            names=[s.name for s in samples], true_labels=[s.label for s in samples],
                            model=json_safe(describe), settings=settings, seconds=seconds, **result)


def _evaluate_classifier(runner, spec, samples, bs, progress, keep_outputs, classes):
    from covidedge.data.preprocess import preprocess_batch
    from covidedge.metrics import (classification_report, expected_calibration_error,
                                   reliability_bins, roc_auc_ovr)

    labels = list(spec.labels)
    missing = [c for c in classes if c not in labels]
    if missing:
        raise IncompatibleModelError(
            f"classifier labels {labels} lack the dataset's classes {missing}", path=runner.source,
            hint="evaluate a model trained on COVID-QU-Ex's three classes")
    y_true = np.array([labels.index(s.label) for s in samples], dtype=np.int64)
    probs = np.zeros((len(samples), len(labels)), dtype=np.float32)
    bar = _bar(len(samples), f"evaluate {samples[0].split}", progress)
    for a, b in _batches(len(samples), bs):
        x = preprocess_batch([s.image for s in samples[a:b]], size=spec.input_size)
        out = infer_fitted(runner, x)
        p = np.asarray(out[spec.output_names[1]], dtype=np.float32)
        if p.shape != (b - a, len(labels)):
            raise IncompatibleModelError(
                f"output '{spec.output_names[1]}' has shape {p.shape}, expected ({b - a}, {len(labels)})",
                path=runner.source)
        probs[a:b] = p
        bar.update(b - a)
    bar.close()
    pred = probs.argmax(axis=1)
    metrics = classification_report(y_true, pred, labels)
    auc = roc_auc_ovr(y_true, probs, labels)
    metrics["roc_auc"] = dict(auc)
    metrics["roc_auc_notes"] = list(auc.notes)
    metrics["macro_f1"] = metrics["macro_avg"]["f1"]
    metrics["ece"] = expected_calibration_error(probs, y_true)
    metrics["reliability"] = reliability_bins(probs, y_true)
    per_image = [{"name": s.name, "label": s.label, "predicted": labels[int(k)],
                  "probability": float(probs[i, int(k)])}
                 for i, (s, k) in enumerate(zip(samples, pred))]
    return {"metrics": metrics, "per_image": per_image, "predictions": pred,
            "probabilities": probs if keep_outputs else None}


def _evaluate_segmenter(runner, spec, samples, bs, threshold, progress, keep_outputs):
    from covidedge.data.imageio import check_mask_shape, image_shape, read_gray
    from covidedge.data.preprocess import preprocess_batch
    from covidedge.data.quality import check_ground_truth_mask

    mask_warnings: List[str] = []

    def read_truth(path, may_be_empty: bool) -> np.ndarray:
        gray = read_gray(path)
        mask_warnings.extend(f"{path}: {p}" for p in check_ground_truth_mask(gray, path,
                                                                              may_be_empty=may_be_empty))
        return gray > 0
    from covidedge.metrics import SegmentationAccumulator

    labels = list(spec.labels)
    if "lungs" not in labels or "infection" not in labels:
        raise IncompatibleModelError(f"segmenter channels {labels} lack 'lungs' / 'infection'",
                                     path=runner.source, hint="evaluate a covidedge residual U-Net")
    li, ii = labels.index("lungs"), labels.index("infection")
    no_lungs = [s.name for s in samples if s.lung_mask is None]
    if no_lungs:
        raise DatasetError(f"{len(no_lungs)} images have no lung mask (first: {no_lungs[0]})",
                           path=samples[0].image.parent.parent,
                           hint="segmenter evaluation needs 'lung masks/' beside 'images/'")
    size = tuple(spec.input_size)
    acc = SegmentationAccumulator()
    packed: List[np.ndarray] = []
    from covidedge.runtime.postprocess import segmentation_masks

    bar = _bar(len(samples), f"evaluate {samples[0].split}", progress)
    for a, b in _batches(len(samples), bs):
        chunk = samples[a:b]
        x = preprocess_batch([s.image for s in chunk], size=size)
        out = infer_fitted(runner, x)
        p = np.asarray(out[spec.output_names[1]])
        if p.ndim != 4 or p.shape[0] != b - a or p.shape[1] != len(labels) or tuple(p.shape[2:]) != size:
            raise IncompatibleModelError(
                f"output '{spec.output_names[1]}' has shape {p.shape}, expected "
                f"({b - a}, {len(labels)}, {size[0]}, {size[1]})", path=runner.source)
        for s, prob in zip(chunk, p):
            # scored at the image's own size, with the masks infer writes for it
            hw = image_shape(s.image)  # the image's header, read once for both masks
            true_lungs = read_truth(s.lung_mask, may_be_empty=False)
            check_mask_shape(true_lungs.shape, s.lung_mask, hw, s.image)
            true_inf = np.zeros(hw, dtype=bool)
            if s.infection_mask is not None:
                true_inf = read_truth(s.infection_mask, may_be_empty=True)
                check_mask_shape(true_inf.shape, s.infection_mask, hw, s.image)
            lungs, infection = segmentation_masks(prob[li], prob[ii], threshold, hw)
            acc.update(lungs, true_lungs, infection, true_inf, label=s.label, name=s.name)
            if keep_outputs:  # one packed row per image, at the model's size
                masks = np.zeros(p.shape[1:], dtype=bool)
                masks[li], masks[ii] = segmentation_masks(prob[li], prob[ii], threshold)
                packed.append(np.packbits(masks.reshape(1, -1), axis=1))
        bar.update(b - a)
    bar.close()
    summary = acc.result()
    metrics = {
        "lung_dice": summary["lungs"]["dice"], "lung_iou": summary["lungs"]["iou"],
        "infection_dice": summary["infection"]["dice"], "infection_iou": summary["infection"]["iou"],
        "fp_infection_fraction": summary["infection_free"]["fp_fraction_of_image"],
        "fp_infection_fraction_lungs": summary["infection_free"]["fp_fraction_of_lungs"],
        "fp_images": summary["infection_free"]["images_with_fp"],
        "severity_mae": summary["severity"]["mae"],
        "summary": summary,
    }
    result = {"metrics": metrics, "per_image": acc.per_image, "mask_warnings": mask_warnings}
    if keep_outputs:
        result["masks_packed"] = np.concatenate(packed)
        result["mask_shape"] = (len(samples), len(labels), *size)
    return result
