"""EvaluationReport: what :func:`covidedge.evaluation.run.evaluate` measured, as text, Markdown,
JSON and figures (confusion matrix, reliability diagram), and the published study's numbers it
is compared with."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["EvaluationReport", "STUDY_CLASSIFIER_TEST", "json_safe"]

#: The published study's Xception classifier on the COVID-QU-Ex infection subset, Test split
#: (1166 images): accuracy and per-class precision / recall / F1 / support.
STUDY_CLASSIFIER_TEST: Dict[str, Any] = {
    "split": "Test",
    "accuracy": 0.83,
    "support": 1166,
    "per_class": {
        "COVID-19": {"precision": 0.90, "recall": 0.86, "f1": 0.88, "support": 583},
        "Non-COVID": {"precision": 0.79, "recall": 0.72, "f1": 0.75, "support": 292},
        "Normal": {"precision": 0.74, "recall": 0.88, "f1": 0.81, "support": 291},
    },
}


def json_safe(value):
    """JSON-safe copy: NaN / inf -> None, numpy -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _num(v, nd: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _pct(v, nd: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.{nd}f}%"


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate`. ``metrics`` holds the numbers (see ``to_dict``);
    ``predictions`` the predicted class index per image (classifier), in ``names`` order;
    with ``keep_outputs`` also ``probabilities`` (classifier, (N, K) float32) or the packed
    predicted masks (segmenter, see :meth:`masks`)."""

    task: str
    split: str
    labels: List[str]
    names: List[str]
    true_labels: List[str]
    metrics: Dict[str, Any]
    model: Dict[str, Any]
    settings: Dict[str, Any]
    seconds: float
    per_image: List[Dict[str, Any]] = field(default_factory=list)
    predictions: Optional[np.ndarray] = None
    probabilities: Optional[np.ndarray] = None
    masks_packed: Optional[np.ndarray] = None
    mask_shape: Optional[tuple] = None

    # -- access ---------------------------------------------------------------------------
    def masks(self) -> Optional[np.ndarray]:
        """(N, C, H, W) bool predicted masks (segmenter, ``keep_outputs=True``), else None."""
        if self.masks_packed is None:
            return None
        count = int(np.prod(self.mask_shape[1:]))
        flat = np.unpackbits(self.masks_packed, axis=1, count=count)
        return flat.reshape(self.mask_shape).astype(bool)

    @property
    def num_images(self) -> int:
        return len(self.names)

    def counts(self) -> Dict[str, int]:
        from covidedge.data.covidqu import CLASSES

        return {c: sum(1 for t in self.true_labels if t == c) for c in CLASSES}

    # -- output ---------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """Everything as JSON-safe values (NaN becomes null)."""
        d = {"task": self.task, "split": self.split, "labels": list(self.labels),
             "images": self.num_images, "counts": self.counts(), "model": self.model,
             "settings": self.settings, "seconds": round(self.seconds, 3),
             "ms_per_image": round(1e3 * self.seconds / max(1, self.num_images), 3),
             "metrics": self.metrics, "per_image": self.per_image}
        if self.task == "classifier":
            d["study_reference"] = STUDY_CLASSIFIER_TEST
        return json_safe(d)

    def headline(self) -> str:
        """One line with the main numbers."""
        m = self.metrics
        if self.task == "classifier":
            auc = (m.get("roc_auc") or {}).get("macro")
            return (f"{self.split}: accuracy {_num(m['accuracy'])} on {self.num_images} images, "
                    f"macro F1 {_num(m['macro_avg']['f1'])}, macro ROC-AUC {_num(auc)}, "
                    f"ECE {_num(m.get('ece'))}")
        return (f"{self.split}: lung Dice {_num(m['lung_dice'])}, infection Dice "
                f"{_num(m['infection_dice'])} (COVID-19 images), FP infected area "
                f"{_pct(m['fp_infection_fraction'])} of the image on infection-free images, "
                f"severity MAE {_pct(m['severity_mae'])} of the lungs; {self.num_images} images")

    def to_text(self) -> str:
        """The report as plain text: for the classifier the study's table layout (per class,
        accuracy, macro avg, weighted avg), ROC-AUC and the confusion matrix."""
        from covidedge.metrics import (format_classification_report, format_confusion_matrix,
                                       format_segmentation_report)

        head = (f"{self.task} on {self.split} ({self.num_images} images) - "
                f"{self.model.get('backend', '?')} {self.model.get('precision', '')}".rstrip())
        if self.settings.get("missing_classes"):
            head += f"\nclasses without images (allowed): {', '.join(self.settings['missing_classes'])}"
        head += "".join("\n" + line for line in self.mask_warning_lines())
        if self.task == "classifier":
            m = self.metrics
            auc = m.get("roc_auc") or {}
            auc_line = "ROC-AUC (one vs rest): " + ", ".join(
                f"{k} {_num(auc.get(k), 3)}" for k in [*self.labels, "macro"])
            return "\n".join([head, "", format_classification_report(m, digits=2).rstrip(), "",
                              auc_line, "", "confusion matrix (rows: true, columns: predicted)",
                              format_confusion_matrix(m["confusion_matrix"], self.labels).rstrip()]) + "\n"
        return head + "\n\n" + format_segmentation_report(self.metrics["summary"])

    def mask_warning_lines(self, shown: int = 5) -> List[str]:
        """Warnings about ground-truth masks that look wrong (empty, full, lossy) and were scored
        as they are: a count line and the first ``shown`` masks (all are in report.json)."""
        from covidedge.fileio import printable

        found = self.settings.get("mask_warnings") or []
        if not found:
            return []
        lines = [f"warning: {len(found)} ground-truth mask problem{'s' if len(found) != 1 else ''} "
                 "(empty, full or lossy masks were scored as they are; check them):"]
        lines += [f"  {printable(w)}" for w in found[:shown]]
        if len(found) > shown:
            lines.append(f"  ... and {len(found) - shown} more in report.json (settings.mask_warnings)")
        return lines

    def to_markdown(self) -> str:
        """Markdown report; the classifier's table stands beside the published study's Test
        numbers, labelled as such (they are on a different split)."""
        lines = [f"# Evaluation: {self.task} on {self.split}", "",
                 f"- model: `{self.model.get('source', '?')}` ({self.model.get('backend', '?')}, "
                 f"{self.model.get('precision', '?')})",
                 f"- images: {self.num_images} ({', '.join(f'{k} {v}' for k, v in self.counts().items())})",
                 f"- input size: {'x'.join(str(v) for v in self.settings.get('input_size', []))} px, "
                 f"limit per class: {self.settings.get('limit_per_class')}"
                 + (f", classes without images (allowed): {', '.join(self.settings['missing_classes'])}"
                    if self.settings.get("missing_classes") else ""),
                 f"- time: {self.seconds:.1f} s ({1e3 * self.seconds / max(1, self.num_images):.1f} ms per image, "
                 "decoding included)", *(f"- {w.strip()}" for w in self.mask_warning_lines()), ""]
        if self.task == "classifier":
            lines += self._markdown_classifier()
        else:
            lines += self._markdown_segmenter()
        return "\n".join(lines) + "\n"

    def _study_note(self) -> str:
        """How this evaluation's images relate to the study's Test set."""
        s = STUDY_CLASSIFIER_TEST
        supports = {label: self.metrics["per_class"][label]["support"] for label in self.labels}
        same_supports = supports == {k: v["support"] for k, v in s["per_class"].items()}
        if self.split == s["split"] and same_supports:
            return (f"Both columns are on the {s['split']} split with the same images per class "
                    f"({s['support']} in all): a like-for-like comparison of the two models.")
        if self.split == s["split"]:
            return (f"Both columns are on the {s['split']} split, but this evaluation used "
                    f"{self.metrics['support']} of its images (the study: {s['support']}), so the "
                    "comparison is close but not exact.")
        return (f"The study's numbers are on its {s['split']} split ({s['support']} images); ours are "
                f"on {self.split}, so they are a reference, not a like-for-like comparison.")

    def _markdown_classifier(self) -> List[str]:
        m, s = self.metrics, STUDY_CLASSIFIER_TEST
        ours = f"this model, {self.split}"
        theirs = "published study, Test split"
        lines = ["## Classification", "",
                 f"| class | precision ({ours}) | recall | F1 | support | "
                 f"precision ({theirs}) | recall | F1 | support |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for label in self.labels:
            o = m["per_class"][label]
            t = s["per_class"].get(label)
            ref = (f"{t['precision']:.2f} | {t['recall']:.2f} | {t['f1']:.2f} | {t['support']}"
                   if t else "- | - | - | -")
            lines.append(f"| {label} | {o['precision']:.2f} | {o['recall']:.2f} | {o['f1']:.2f} | "
                         f"{o['support']} | {ref} |")
        lines.append(f"| accuracy | | | {m['accuracy']:.2f} | {m['support']} | | | "
                     f"{s['accuracy']:.2f} | {s['support']} |")
        for key, name in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
            a = m[key]
            lines.append(f"| {name} | {a['precision']:.2f} | {a['recall']:.2f} | {a['f1']:.2f} | "
                         f"{a['support']} | - | - | - | - |")
        lines += ["", self._study_note(), ""]
        auc = m.get("roc_auc") or {}
        lines += ["## ROC-AUC (one vs rest)", "",
                  "| " + " | ".join([*self.labels, "macro"]) + " |",
                  "|" + "---|" * (len(self.labels) + 1),
                  "| " + " | ".join(_num(auc.get(k), 3) for k in [*self.labels, "macro"]) + " |", ""]
        for note in m.get("roc_auc_notes") or []:
            lines.append(f"- {note}")
        cm = m["confusion_matrix"]
        lines += ["## Confusion matrix (rows: true, columns: predicted)", "",
                  "| true \\ predicted | " + " | ".join(self.labels) + " |",
                  "|---|" + "---|" * len(self.labels)]
        for label, row in zip(self.labels, cm):
            lines.append(f"| {label} | " + " | ".join(str(int(v)) for v in row) + " |")
        lines.append("")
        if self.settings.get("confusion_png"):
            lines += ["![confusion matrix](confusion_matrix.png)", ""]
        lines += ["## Calibration", "", f"Expected calibration error (15 confidence bins): "
                  f"{_num(m.get('ece'))}; 0 is perfectly calibrated.", ""]
        if self.settings.get("reliability_png"):
            lines += ["![reliability diagram](reliability.png)", ""]
        return lines

    def _markdown_segmenter(self) -> List[str]:
        m = self.metrics
        sm = m["summary"]
        return [
            "## Segmentation", "",
            f"Threshold {self.settings.get('threshold')} on the sigmoid probabilities; per-image "
            "scores averaged over images (images where both masks are empty are left out and counted).", "",
            "| mask | images | Dice | IoU | both empty |", "|---|---|---|---|---|",
            f"| lungs (all images) | {sm['lungs']['images']} | {_num(m['lung_dice'])} | "
            f"{_num(m['lung_iou'])} | {sm['lungs']['both_empty']} |",
            f"| infection (COVID-19 images) | {sm['infection']['images']} | "
            f"{_num(m['infection_dice'])} | {_num(m['infection_iou'])} | "
            f"{sm['infection']['both_empty']} |", "",
            "## Infection-free images (Non-COVID, Normal)", "",
            f"- images: {sm['infection_free']['images']}",
            f"- falsely predicted infected area: {_pct(m['fp_infection_fraction'])} of the image, "
            f"{_pct(m['fp_infection_fraction_lungs'])} of the predicted lungs (mean)",
            f"- images with any falsely predicted infection pixel: {_pct(m['fp_images'])}", "",
            "## Severity (infected fraction of the lungs, COVID-19 images)", "",
            f"- mean absolute error: {_pct(m['severity_mae'])} (true mean "
            f"{_pct(sm['severity']['mean_true'])}, predicted mean {_pct(sm['severity']['mean_pred'])})", ""]

    #: The files :meth:`save` writes into its folder.
    FILES = ("report.json", "report.md", "confusion_matrix.png", "reliability.png")

    @classmethod
    def check_out_dir(cls, out_dir, *, overwrite: bool = False) -> None:
        """OutputExistsError when ``out_dir`` holds a report already (unless ``overwrite``):
        call it before evaluating, so a refusal costs nothing."""
        from covidedge.fileio import refuse_existing

        for name in cls.FILES:
            refuse_existing(Path(out_dir) / name, what="evaluation report file", overwrite=overwrite)

    def save(self, out_dir, *, overwrite: bool = False) -> Path:
        """Write report.json, report.md and (classifier, when matplotlib is installed)
        confusion_matrix.png into ``out_dir``; returns the folder. An earlier report there is
        refused unless ``overwrite`` (``covidedge evaluate --out DIR --overwrite``, or a run that
        rewrites its own report)."""
        from covidedge.fileio import write_atomic

        out = Path(out_dir)
        self.check_out_dir(out, overwrite=overwrite)
        out.mkdir(parents=True, exist_ok=True)
        if self.task == "classifier":
            self.settings["confusion_png"] = _plot_confusion(
                out / "confusion_matrix.png", self.metrics["confusion_matrix"], self.labels,
                f"{self.split}: accuracy {self.metrics['accuracy']:.3f}")
            self.settings["reliability_png"] = _plot_reliability(
                out / "reliability.png", self.metrics.get("reliability"),
                f"{self.split}: ECE {self.metrics.get('ece', float('nan')):.3f}")
        write_atomic(out / "report.json", (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"),
                     overwrite=overwrite)
        write_atomic(out / "report.md", self.to_markdown().encode("utf-8"), overwrite=overwrite)
        return out


def _plot_confusion(path: Path, cm, labels: Sequence[str], title: str) -> bool:
    """Confusion matrix heat map with counts and row percentages (``covidedge.plots``); False
    when matplotlib is missing (the text and Markdown reports still carry the matrix)."""
    from covidedge.errors import MissingDependencyError
    from covidedge.plots import plot_confusion_matrix

    try:
        plot_confusion_matrix(cm, labels, path, normalize=True, title=title)
    except MissingDependencyError:
        return False
    return True


def _plot_reliability(path: Path, bins, title: str) -> bool:
    """The reliability diagram (``covidedge.plots``); False without matplotlib or bins."""
    from covidedge.errors import MissingDependencyError
    from covidedge.plots import plot_reliability

    try:
        return bool(bins) and bool(plot_reliability(bins, path, title=title))
    except MissingDependencyError:
        return False


# -- evaluation -------------------------------------------------------------------------------
