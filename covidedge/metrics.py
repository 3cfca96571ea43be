"""Classification and segmentation metrics in plain numpy (the runtime imports this module).

Classification: confusion matrix, a precision / recall / F1 report laid out like the study's
tables, and one-vs-rest ROC AUC from ranks. Segmentation: per-image Dice and IoU, lung and
infected fractions, and an accumulator that summarises a whole evaluation set the way the
COVID-QU-Ex study reports it (infection scored on COVID-19 images, false positives on the
infection-free ones, severity as the infected fraction of the lungs).

Conventions, stated once:
* A ratio whose denominator is 0 (precision of a class never predicted, recall of a class with
  no samples, F1 when both are 0) is reported as 0.0, as scikit-learn does with
  ``zero_division=0``.
* ``dice`` and ``iou`` return ``None`` when both masks are empty: the score is undefined (0/0),
  and calling it 1 would inflate the mean with easy healthy images, while NaN would poison it.
  Callers count those images separately.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from covidedge.errors import BadInputError

__all__ = [
    "confusion_matrix", "classification_report", "format_classification_report",
    "format_confusion_matrix", "roc_auc_ovr", "AucResult", "dice", "iou", "lung_fraction",
    "infected_fraction", "SegmentationAccumulator", "format_segmentation_report",
    "reliability_bins", "expected_calibration_error", "apply_temperature", "fit_temperature",
]

#: Label that marks the images whose infection is scored by Dice / IoU and severity.
COVID_LABEL = "COVID-19"


# =============================================================================================
# Calibration of probabilities
# =============================================================================================
#: Confidence bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15


def reliability_bins(probabilities, y_true, bins: int = ECE_BINS) -> Dict[str, List[float]]:
    """Per equal-width confidence bin (top-class probability in (k/bins, (k+1)/bins]): the
    number of images, their mean confidence and their accuracy (empty bins give 0)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise BadInputError(f"probabilities {p.shape} and labels {y.shape} do not match; "
                            "expected (N, K) and (N,) with N > 0")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, np.bincount(idx, conf, bins) / count, 0.0)
        acc = np.where(count > 0, np.bincount(idx, correct, bins) / count, 0.0)
    return {"count": count.tolist(), "confidence": mean_conf.tolist(), "accuracy": acc.tolist()}


def expected_calibration_error(probabilities, y_true, bins: int = ECE_BINS) -> float:
    """ECE: the image-weighted mean of |accuracy - confidence| over equal-width confidence bins
    of the top-class probability (0 = perfectly calibrated)."""
    r = reliability_bins(probabilities, y_true, bins)
    count = np.asarray(r["count"])
    gap = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"]))
    return float((count * gap).sum() / count.sum())


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """Softmax probabilities of logits divided by ``temperature``, computed from probabilities
    (``log p`` differs from the logits by a constant per image, which softmax ignores)."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities, y_true) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of ``y_true`` under
    softmax(logits / T) (Guo et al. 2017), by golden-section search over log T in [-3, 3]."""
    y = np.asarray(y_true, dtype=np.int64)

    def nll(log_t: float) -> float:
        q = apply_temperature(probabilities, math.exp(log_t)).astype(np.float64)
        return float(-np.log(np.clip(q[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    lo, hi = -3.0, 3.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(math.exp(0.5 * (lo + hi)))


# =============================================================================================
# Classification
# =============================================================================================
def _as_indices(values, labels: Optional[Sequence[str]], num_classes: int, what: str) -> np.ndarray:
    """1-D int64 class indices from ints or (when ``labels`` is given) label names."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise BadInputError(f"{what} has shape {arr.shape}, expected a 1-D sequence of class indices")
    if arr.size and arr.dtype.kind in "US":
        if labels is None:
            raise BadInputError(f"{what} holds label names but no labels were given",
                                hint="pass labels=... or class indices")
        lookup = {name: i for i, name in enumerate(labels)}
        bad = sorted({str(v) for v in arr if str(v) not in lookup})
        if bad:
            raise BadInputError(f"{what} has unknown labels {bad}; expected one of {list(labels)}")
        return np.array([lookup[str(v)] for v in arr], dtype=np.int64)
    if arr.size and arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise BadInputError(f"{what} has dtype {arr.dtype}, expected integer class indices",
                                hint="take argmax of the probabilities first")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise BadInputError(f"{what} has class indices {arr.min()}..{arr.max()}, "
                            f"expected 0..{num_classes - 1}")
    return arr


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    num_classes = int(num_classes)
    if num_classes < 1:
        raise BadInputError(f"num_classes={num_classes}, expected at least 1")
    t = _as_indices(y_true, None, num_classes, "y_true")
    p = _as_indices(y_pred, None, num_classes, "y_pred")
    if t.shape != p.shape:
        raise BadInputError(f"y_true has {t.size} items but y_pred has {p.size}",
                            hint="pass one prediction per sample")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def classification_report(y_true, y_pred, labels: Sequence[str]) -> Dict[str, Any]:
    """Accuracy, per-class precision / recall / F1 / support, macro and support-weighted
    averages and the confusion matrix, as a JSON-ready dict.

    ``y_true`` / ``y_pred`` are class indices into ``labels`` (or label names). Any 0/0 ratio
    is 0.0. Keys: ``labels``, ``accuracy``, ``per_class`` {label: {precision, recall, f1,
    support}}, ``macro_avg``, ``weighted_avg``, ``support`` (total) and ``confusion_matrix``
    (list of rows, row = true class).
    """
    labels = [str(v) for v in labels]
    k = len(labels)
    if k < 1:
        raise BadInputError("labels is empty, expected the class names in output order")
    t = _as_indices(y_true, labels, k, "y_true")
    p = _as_indices(y_pred, labels, k, "y_pred")
    if t.size == 0:
        raise BadInputError("y_true is empty, expected at least one sample")
    cm = confusion_matrix(t, p, k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = {}
    for i, name in enumerate(labels):
        prec = _ratio(tp[i], predicted[i])
        rec = _ratio(tp[i], support[i])
        per_class[name] = {"precision": prec, "recall": rec, "f1": _ratio(2 * prec * rec, prec + rec),
                           "support": int(support[i])}
    total = int(support.sum())
    keys = ("precision", "recall", "f1")
    macro = {m: float(np.mean([per_class[n][m] for n in labels])) for m in keys}
    weighted = {m: _ratio(sum(per_class[n][m] * per_class[n]["support"] for n in labels), total)
                for m in keys}
    macro["support"] = weighted["support"] = total
    return {
        "labels": labels,
        "accuracy": _ratio(tp.sum(), total),
        "per_class": per_class,
        "macro_avg": macro,
        "weighted_avg": weighted,
        "support": total,
        "confusion_matrix": cm.tolist(),
    }


def format_classification_report(report: Mapping[str, Any], digits: int = 2) -> str:
    """The report as a text table: one row per class, then accuracy, macro avg and weighted
    avg; columns precision, recall, f1-score, support (scikit-learn's layout)."""
    labels = list(report["labels"])
    names = labels + ["accuracy", "macro avg", "weighted avg"]
    width = max(len(n) for n in names)
    headers = ("precision", "recall", "f1-score", "support")
    col = max(9, digits + 3)
    lines = [" " * width + " " + "".join(f" {h:>{col}}" for h in headers), ""]

    def row(name, d):
        vals = "".join(f" {d[m]:>{col}.{digits}f}" for m in ("precision", "recall", "f1"))
        return f"{name:>{width}} {vals} {int(d['support']):>{col}}"

    for name in labels:
        lines.append(row(name, report["per_class"][name]))
    lines.append("")
    blank = f" {'':>{col}}"
    lines.append(f"{'accuracy':>{width}} {blank}{blank} {report['accuracy']:>{col}.{digits}f}"
                 f" {int(report['support']):>{col}}")
    lines.append(row("macro avg", report["macro_avg"]))
    lines.append(row("weighted avg", report["weighted_avg"]))
    return "\n".join(lines) + "\n"


def format_confusion_matrix(cm, labels: Sequence[str]) -> str:
    """A confusion matrix as a text table: rows are true classes, columns predicted ones."""
    cm = np.asarray(cm)
    labels = [str(v) for v in labels]
    if cm.shape != (len(labels), len(labels)):
        raise BadInputError(f"confusion matrix has shape {cm.shape}, expected "
                            f"({len(labels)}, {len(labels)}) for labels {labels}")
    corner = "true \\ pred"
    first = max([len(corner)] + [len(n) for n in labels])
    cells = [str(int(v)) if float(v).is_integer() else f"{float(v):.2f}" for v in cm.ravel()]
    col = max([len(n) for n in labels] + [len(c) for c in cells])
    lines = [f"{corner:<{first}}" + "".join(f"  {n:>{col}}" for n in labels)]
    for i, name in enumerate(labels):
        lines.append(f"{name:<{first}}" + "".join(f"  {cells[i * len(labels) + j]:>{col}}"
                                                   for j in range(len(labels))))
    return "\n".join(lines) + "\n"


class AucResult(dict):
    """``{label: auc, "macro": mean}``; ``notes`` lists classes whose AUC is undefined (NaN)."""

    def __init__(self, *args, notes: Optional[List[str]] = None, **kw):
        super().__init__(*args, **kw)
        self.notes: List[str] = list(notes or [])


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores``; tied scores share the mean of the ranks they span."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse.ravel()]


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    # Mann-Whitney U of the positives, divided by the number of positive/negative pairs
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc_ovr(y_true, probabilities, labels: Sequence[str]) -> AucResult:
    """One-vs-rest ROC AUC per class and their unweighted mean ("macro").

    Uses the rank (Mann-Whitney) formula: the probability that a random positive scores
    above a random negative, ties counting one half. A class with no positive (or no
    negative) sample gets NaN and a line in ``result.notes``; the macro mean skips it.
    """
    labels = [str(v) for v in labels]
    k = len(labels)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise BadInputError(f"probabilities have shape {probs.shape}, expected (N, {k}) for labels {labels}")
    t = _as_indices(y_true, labels, k, "y_true")
    if t.size != probs.shape[0]:
        raise BadInputError(f"y_true has {t.size} items but probabilities have {probs.shape[0]} rows")
    if not np.all(np.isfinite(probs)):
        raise BadInputError("probabilities contain NaN or infinite values")
    out: Dict[str, float] = {}
    notes: List[str] = []
    for i, name in enumerate(labels):
        positive = t == i
        auc = _binary_auc(probs[:, i], positive)
        if math.isnan(auc):
            side = "no positive" if not positive.any() else "no negative"
            notes.append(f"AUC for {name!r} is undefined: {side} samples")
        out[name] = auc
    defined = [v for v in out.values() if not math.isnan(v)]
    out["macro"] = float(np.mean(defined)) if defined else float("nan")
    return AucResult(out, notes=notes)


# =============================================================================================
# Segmentation
# =============================================================================================
def _as_mask(x, what: str) -> np.ndarray:
    """A boolean mask from a bool array or an array holding only 0 and 1."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iuf" and np.all((arr == 0) | (arr == 1)):
        return arr.astype(bool)
    raise BadInputError(f"{what} is not a binary mask (dtype {arr.dtype}, values beyond 0/1)",
                        hint="threshold probabilities first, e.g. probs >= 0.5")


def _pair(pred, true, what: str, first: str = "predicted", second: str = "true"):
    what = f" {what}" if what else ""
    p = _as_mask(pred, f"{first}{what} mask")
    t = _as_mask(true, f"{second}{what} mask")
    if p.shape != t.shape:
        raise BadInputError(f"{first}{what} mask has shape {p.shape}, {second} mask has {t.shape}",
                            hint="resize masks to the same size with covidedge.data.preprocess.resize_mask")
    return p, t


def dice(pred, true) -> Optional[float]:
    """Dice = 2|P & T| / (|P| + |T|) for one image; ``None`` when both masks are empty
    (undefined; counted apart by the caller), 0.0 when exactly one is empty."""
    p, t = _pair(pred, true, "")
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(pred, true) -> Optional[float]:
    """IoU (Jaccard) = |P & T| / |P | T| for one image; ``None`` when both masks are empty,
    0.0 when exactly one is empty."""
    p, t = _pair(pred, true, "")
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return None
    return int(np.logical_and(p, t).sum()) / union


def lung_fraction(lung_mask) -> float:
    """Fraction of the image's pixels that are lung (0..1)."""
    m = _as_mask(lung_mask, "lung mask")
    return float(m.mean()) if m.size else 0.0


def infected_fraction(infection_mask, lung_mask) -> float:
    """Severity: the fraction of lung pixels that are infected, |infection & lungs| / |lungs|.

    Infection outside the lung mask is not counted. Returns 0.0 when the lung mask is empty
    (no lung, so no measurable involvement) rather than an undefined ratio.
    """
    inf, lungs = _pair(infection_mask, lung_mask, "", first="infection", second="lung")
    n_lung = int(lungs.sum())
    if n_lung == 0:
        return 0.0
    return int(np.logical_and(inf, lungs).sum()) / n_lung


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


class SegmentationAccumulator:
    """Collects per-image segmentation scores and summarises them like the study does.

    * lungs: mean per-image Dice and IoU over every image given.
    * infection: mean per-image Dice and IoU over COVID-19 images (``label == "COVID-19"``, or,
      when no label is given, images whose true infection mask is not empty).
    * infection-free images (true infection mask empty, e.g. Non-COVID / Normal): the mean
      falsely predicted infected area as a fraction of the image and as a fraction of the
      predicted lungs (the severity the system would report for a healthy image), and the
      fraction of those images with any predicted infection pixel.
    * severity (= infected fraction of the lungs, see ``infected_fraction``): mean absolute
      error of the predicted severity (predicted infection within predicted lungs) against the
      true one (true infection within true lungs), over COVID-19 images, in fraction units.

    Images where Dice / IoU is undefined (both masks empty) are counted as ``both_empty`` and
    left out of the means.
    """

    def __init__(self, covid_label: str = COVID_LABEL):
        self.covid_label = covid_label
        self.per_image: List[Dict[str, Any]] = []

    def update(self, pred_lungs, true_lungs, pred_infection=None, true_infection=None,
               label: Optional[str] = None, name: Optional[str] = None) -> Dict[str, Any]:
        """Add one image (HxW boolean masks). Infection masks may be omitted together
        (lung-only data). Returns that image's record."""
        pl, tl = _pair(pred_lungs, true_lungs, "lung")
        rec: Dict[str, Any] = {"name": name, "label": label,
                               "lung_dice": dice(pl, tl), "lung_iou": iou(pl, tl)}
        if (pred_infection is None) != (true_infection is None):
            raise BadInputError("got only one of pred_infection / true_infection for image "
                                f"{name or len(self.per_image)}", hint="pass both infection masks or neither")
        if true_infection is not None:
            pi, ti = _pair(pred_infection, true_infection, "infection")
            if pi.shape != pl.shape:
                raise BadInputError(f"infection masks have shape {pi.shape}, lung masks {pl.shape}",
                                    hint="all masks of one image must have the same size")
            is_covid = (label == self.covid_label) if label is not None else bool(ti.any())
            rec["covid"] = is_covid
            rec["true_infection_empty"] = not bool(ti.any())
            rec["infection_dice"] = dice(pi, ti)
            rec["infection_iou"] = iou(pi, ti)
            rec["pred_severity"] = infected_fraction(pi, pl)
            rec["true_severity"] = infected_fraction(ti, tl)
            rec["pred_infection_fraction_image"] = float(pi.mean()) if pi.size else 0.0
            rec["pred_infection_pixels"] = int(pi.sum())
        self.per_image.append(rec)
        return rec

    def __len__(self) -> int:
        return len(self.per_image)

    def result(self) -> Dict[str, Any]:
        """Summary dict (JSON-ready); a mean over no images is ``None``."""
        recs = self.per_image

        def overlap(key: str, chosen: List[Dict[str, Any]]) -> Dict[str, Any]:
            d = [r[f"{key}_dice"] for r in chosen if r[f"{key}_dice"] is not None]
            j = [r[f"{key}_iou"] for r in chosen if r[f"{key}_iou"] is not None]
            return {"dice": _mean(d), "iou": _mean(j), "images": len(d),
                    "both_empty": len(chosen) - len(d)}

        with_inf = [r for r in recs if "infection_dice" in r]
        covid = [r for r in with_inf if r["covid"]]
        clean = [r for r in with_inf if r["true_infection_empty"]]
        sev_err = [abs(r["pred_severity"] - r["true_severity"]) for r in covid]
        return {
            "images": len(recs),
            "lungs": overlap("lung", recs),
            "infection": overlap("infection", covid),
            "infection_free": {
                "images": len(clean),
                "fp_fraction_of_image": _mean([r["pred_infection_fraction_image"] for r in clean]),
                "fp_fraction_of_lungs": _mean([r["pred_severity"] for r in clean]),
                "images_with_fp": _mean([1.0 if r["pred_infection_pixels"] else 0.0 for r in clean]),
            },
            "severity": {
                "images": len(covid),
                "mae": _mean(sev_err),
                "mean_true": _mean([r["true_severity"] for r in covid]),
                "mean_pred": _mean([r["pred_severity"] for r in covid]),
            },
        }

    def format(self) -> str:
        return format_segmentation_report(self.result())


def format_segmentation_report(result: Mapping[str, Any]) -> str:
    """The accumulator's summary as a short text table (fractions as percentages)."""

    def num(v, pct=False):
        if v is None:
            return "n/a"
        return f"{100 * v:.2f}%" if pct else f"{v:.4f}"

    lines = [f"images: {result['images']}", "",
             f"{'mask':<10} {'dice':>8} {'iou':>8} {'images':>7} {'both empty':>11}"]
    for key, title in (("lungs", "lungs"), ("infection", "infection")):
        r = result[key]
        lines.append(f"{title:<10} {num(r['dice']):>8} {num(r['iou']):>8} {r['images']:>7} "
                     f"{r['both_empty']:>11}")
    lines.append("(infection scored on COVID-19 images only)")
    f = result["infection_free"]
    lines += ["", f"infection-free images: {f['images']}",
              f"  false-positive infection, fraction of image: {num(f['fp_fraction_of_image'], True)}",
              f"  false-positive infection, fraction of lungs: {num(f['fp_fraction_of_lungs'], True)}",
              f"  images with any false-positive pixel:        {num(f['images_with_fp'], True)}"]
    s = result["severity"]
    lines += ["", f"severity (infected fraction of the lungs), COVID-19 images: {s['images']}",
              f"  mean absolute error: {num(s['mae'], True)} "
              f"(true mean {num(s['mean_true'], True)}, predicted mean {num(s['mean_pred'], True)})"]
    return "\n".join(lines) + "\n"
