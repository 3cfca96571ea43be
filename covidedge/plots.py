"""PNG figures for training, evaluation and benchmark reports: learning curves, confusion
matrices, grouped bar charts and latency bars. Every figure covidedge draws is drawn here.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch),
so they work on headless machines and in threads. matplotlib is imported inside each function:
importing this module costs nothing and the runtime never needs matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from covidedge.errors import BadInputError, require
from covidedge.fileio import atomic_target

__all__ = ["plot_learning_curves", "plot_confusion_matrix", "plot_bars", "plot_latency_bars"]

PathLike = Union[str, Path]

#: Validation metrics looked for, in this order, when ``plot_learning_curves`` is not told which.
METRIC_PREFERENCE = ("accuracy", "acc", "dice", "infection_dice", "macro_f1", "f1", "iou", "auc")


def _new_figure(width_in: float, height_in: float):
    require("matplotlib", extra="plots", purpose="drawing figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: PathLike) -> Path:
    out = Path(out_png)
    with atomic_target(out) as tmp:  # a reader never sees half a figure
        fig.savefig(tmp, format="png")
    return out


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# -- learning curves ----------------------------------------------------------------------------
def _flatten(entry: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"val": {"loss": 1}} -> {"val_loss": 1}, so nested and flat histories read alike."""
    out: Dict[str, Any] = {}
    for k, v in entry.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}_"))
        else:
            out[key] = v
    return out


def _series(rows: List[Dict[str, Any]], key: str) -> List[Optional[float]]:
    return [_number(r.get(key)) for r in rows]


def _pick_metric(rows: List[Dict[str, Any]], metric: Optional[str]) -> Optional[str]:
    """The metric's base name (without train_/val_), or None when the history has none."""
    keys = {k for r in rows for k, v in r.items() if _number(v) is not None}
    if metric is not None:
        base = metric
        for prefix in ("val_", "train_"):
            if base.startswith(prefix):
                base = base[len(prefix):]
        if f"val_{base}" not in keys and f"train_{base}" not in keys:
            raise BadInputError(f"history has no 'val_{base}' or 'train_{base}' values",
                                hint=f"metrics present: {sorted(keys - {'epoch'})}")
        return base
    for base in METRIC_PREFERENCE:
        if f"val_{base}" in keys:
            return base
    for k in sorted(keys):
        if k.startswith("val_") and "loss" not in k:
            return k[4:]
    for base in METRIC_PREFERENCE:
        if f"train_{base}" in keys:
            return base
    return None


def plot_learning_curves(history: Sequence[Mapping[str, Any]], out_png: PathLike,
                         metric: Optional[str] = None, best_epoch: Optional[int] = None,
                         title: Optional[str] = None) -> Path:
    """Two panels, loss and a metric, per epoch for train and validation; the best epoch is
    marked with a dashed line.

    ``history`` is a list of per-epoch dicts such as ``{"epoch": 1, "train_loss": 0.7,
    "val_loss": 0.6, "val_accuracy": 0.81}`` (nested ``{"train": {"loss": ...}}`` works too).
    ``metric`` names the metric (e.g. "dice"; default: the first of accuracy, dice, f1, iou
    found). The best epoch is, unless given, the one with the highest validation metric, or the
    lowest validation loss when there is no metric. Returns the PNG path.
    """
    rows = [_flatten(dict(r)) for r in history]
    if not rows:
        raise BadInputError("history is empty, expected one dict per epoch",
                            hint="train for at least one epoch before plotting")
    epochs = [_number(r.get("epoch")) for r in rows]
    if any(e is None for e in epochs):
        epochs = list(range(1, len(rows) + 1))
    loss_keys = [k for k in ("train_loss", "val_loss") if any(v is not None for v in _series(rows, k))]
    if not loss_keys:
        raise BadInputError("history has no 'train_loss' or 'val_loss' values",
                            hint="record the epoch losses under those keys")
    base = _pick_metric(rows, metric)

    def best_of(key: str, higher: bool) -> Optional[float]:
        vals = [(v, e) for v, e in zip(_series(rows, key), epochs) if v is not None]
        if not vals:
            return None
        return (max if higher else min)(vals, key=lambda t: t[0])[1]

    if best_epoch is None:
        best_epoch = best_of(f"val_{base}", True) if base else None
        if best_epoch is None:
            best_epoch = best_of("val_loss", False)

    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    panels = [("loss", "loss")] + ([(base, base.replace("_", " "))] if base else [])
    for ax, (key, label) in zip(axes, panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = _series(rows, f"{split}_{key}")
            pts = [(e, y) for e, y in zip(epochs, ys) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, markersize=3,
                        label="validation" if split == "val" else "train")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1,
                       label=f"best epoch ({best_epoch:g})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if not base:
        axes[1].set_axis_off()
        axes[1].text(0.5, 0.5, "no metric recorded", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


# -- confusion matrix ---------------------------------------------------------------------------
def plot_confusion_matrix(cm, labels: Sequence[str], out_png: PathLike, normalize: bool = False,
                          title: Optional[str] = None) -> Path:
    """A confusion matrix as a heat map (rows true, columns predicted) with the count in every
    cell; ``normalize=True`` colours by the fraction of each true class and writes it under the
    count. Returns the PNG path."""
    import numpy as np

    counts = np.asarray(cm)
    labels = [str(v) for v in labels]
    k = len(labels)
    if counts.shape != (k, k):
        raise BadInputError(f"confusion matrix has shape {counts.shape}, expected ({k}, {k}) "
                            f"for labels {labels}")
    counts = counts.astype(float)
    rows = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) if normalize else counts

    fig = _new_figure(1.6 + 1.2 * k, 1.2 + 1.1 * k)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=(1.0 if normalize else max(shown.max(), 1)))
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "images")
    threshold = (1.0 if normalize else max(shown.max(), 1)) / 2
    for i in range(k):
        for j in range(k):
            text = f"{counts[i, j]:g}"
            if normalize:
                text += f"\n{shown[i, j]:.1%}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if shown[i, j] > threshold else "black")
    ax.set_xticks(range(k), labels, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    return _save(fig, out_png)


# -- reliability diagram ------------------------------------------------------------------------
def plot_reliability(bins: Mapping[str, Sequence[float]], out_png: PathLike, title: str = "") -> Path:
    """A reliability diagram: accuracy against mean confidence per confidence bin (bars, with
    the diagonal of perfect calibration), from ``covidedge.metrics.reliability_bins``."""
    import numpy as np

    count = np.asarray(bins["count"], dtype=float)
    k = len(count)
    edges = np.linspace(0.0, 1.0, k + 1)
    fig = _new_figure(4.6, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
    used = count > 0
    ax.bar(edges[:-1][used], np.asarray(bins["accuracy"])[used], width=1.0 / k, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot(np.asarray(bins["confidence"])[used], np.asarray(bins["accuracy"])[used], "o",
            color="tab:red", ms=3, label="(mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "reliability diagram")
    return _save(fig, out_png)


# -- grouped bars -------------------------------------------------------------------------------
def plot_bars(table_rows: Sequence[Mapping[str, Any]], x_key: str, y_keys: Union[str, Sequence[str]],
              out_png: PathLike, title: str = "", ylabel: Optional[str] = None,
              value_format: str = "{:.3g}") -> Path:
    """A grouped bar chart: one group per row (labelled by ``row[x_key]``), one bar per
    ``y_keys`` column, each bar labelled with its value (format ``value_format``). Missing or
    non-numeric values leave a gap. Used for the loss study (loss -> Dice) and benchmark
    tables (backend -> ms per image). Returns the PNG path."""
    rows = [dict(r) for r in table_rows]
    keys: Tuple[str, ...] = (y_keys,) if isinstance(y_keys, str) else tuple(y_keys)
    if not rows:
        raise BadInputError("table has no rows to plot", hint="pass a list of dicts, one per bar group")
    if not keys:
        raise BadInputError("no y_keys given", hint="name at least one numeric column to plot")
    missing = [k for k in (x_key, *keys) if not any(k in r for r in rows)]
    if missing:
        present = sorted({k for r in rows for k in r})
        raise BadInputError(f"table has no column(s) {missing}; columns: {present}",
                            hint="check x_key / y_keys")
    if not any(_number(r.get(k)) is not None for r in rows for k in keys):
        raise BadInputError(f"columns {list(keys)} hold no numeric values", hint="nothing to plot")

    n, m = len(rows), len(keys)
    fig = _new_figure(max(5.0, 1.0 + 0.5 * n * (m + 0.6)), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / m
    for j, key in enumerate(keys):
        xs, ys = [], []
        for i, r in enumerate(rows):
            v = _number(r.get(key))
            if v is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(v)
        bars = ax.bar(xs, ys, width=width * 0.95, label=key)
        ax.bar_label(bars, labels=[value_format.format(v) for v in ys], fontsize=7, padding=2)
    ax.set_xticks(range(n), [str(r.get(x_key, "")) for r in rows],
                  rotation=(30 if n > 4 else 0), ha=("right" if n > 4 else "center"))
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel or (keys[0] if m == 1 else "value"))
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    if m > 1:  # beside the axes, so it never hides a bar or its value
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return _save(fig, out_png)


# -- latency bars -------------------------------------------------------------------------------
def plot_latency_bars(labels: Sequence[str], ms_per_image: Sequence[float],
                      images_per_s: Sequence[float], out_png: PathLike,
                      title: str = "covidedge bench") -> Path:
    """Two panels of horizontal bars, one bar per measured configuration (``labels``, listed
    top to bottom): ms per image (lower is better) and images per second (higher is better),
    each bar labelled with its value. Returns the PNG path."""
    labels = [str(v) for v in labels]
    n = len(labels)
    if n == 0:
        raise BadInputError("no measurements to plot", hint="pass one label, ms and FPS per row")
    if len(ms_per_image) != n or len(images_per_s) != n:
        raise BadInputError(f"{n} labels but {len(ms_per_image)} ms and {len(images_per_s)} FPS values; "
                            "expected one of each per label")
    fig = _new_figure(11.0, max(2.5, 0.55 * n + 1.2))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    ypos = list(range(n))[::-1]
    panels = ((ax1, ms_per_image, "#4c72b0", "ms per image (lower is better)"),
              (ax2, images_per_s, "#55a868", "images per second (higher is better)"))
    for ax, values, colour, xlabel in panels:
        vals = [_number(v) for v in values]
        ax.barh(ypos, [v if v is not None else 0.0 for v in vals], color=colour)
        for y, v in zip(ypos, vals):
            ax.text(v or 0.0, y, f" {v:.3g}" if v is not None else " n/a", va="center", fontsize=7)
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.3)
    ax1.set_yticks(ypos, labels, fontsize=8)
    fig.suptitle(title)
    return _save(fig, out_png)
