"""The segmentation loss study: train the residual U-Net once per loss under the same seed, data
and epoch budget, and compare their Val numbers in a table, a verdict and a bar chart.

A study folder holds one run folder per loss plus ``comparison.md``, ``comparison.json`` and
``comparison.png``; a loss whose run folder already holds a finished run with the same settings
is reused rather than retrained, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from covidedge.errors import BadInputError
from covidedge.fileio import write_atomic
from covidedge.train.loop import log, same_option, train_segmenter, write_json
from covidedge.train.options import StudyOptions

__all__ = ["LossStudyResult", "study_losses", "STUDY_BARS", "CONVERGED_DELTA"]

#: Bars of comparison.png: (metrics key, label).
STUDY_BARS = (("lung_dice", "lung Dice"), ("infection_dice", "infection Dice"),
              ("infection_iou", "infection IoU"), ("fp_infection_fraction", "FP infected area"))

#: A run has converged when its monitored Val score moved by less than this over its last epoch.
CONVERGED_DELTA = 0.01


@dataclass
class LossStudyResult:
    """One row per loss: Val metrics of each loss's best epoch under the same seed and budget."""

    out_dir: Path
    rows: List[Dict[str, Any]]
    settings: Dict[str, Any]

    def verdict(self) -> Dict[str, Any]:
        """The loss with the highest Val infection Dice, its margin over the runner-up (in Dice
        points), and whether every loss had converged (see ``CONVERGED_DELTA``)."""
        ranked = sorted((r for r in self.rows if _finite(r["infection_dice"])),
                        key=lambda r: r["infection_dice"], reverse=True)
        if not ranked:
            return {"winner": None, "runner_up": None, "margin": None,
                    "all_converged": False, "not_converged": [r["loss"] for r in self.rows]}
        runner = ranked[1] if len(ranked) > 1 else None
        by_severity = sorted((r for r in self.rows if _finite(r.get("severity_mae"))),
                             key=lambda r: r["severity_mae"])
        return {"winner": ranked[0]["loss"], "runner_up": runner["loss"] if runner else None,
                "margin": (ranked[0]["infection_dice"] - runner["infection_dice"]) if runner else None,
                "best_severity": by_severity[0]["loss"] if by_severity else None,
                "severity_margin": (by_severity[1]["severity_mae"] - by_severity[0]["severity_mae"])
                if len(by_severity) > 1 else None,
                "all_converged": all(r.get("converged") for r in self.rows),
                "not_converged": [r["loss"] for r in self.rows if not r.get("converged")]}

    def to_dict(self) -> Dict[str, Any]:
        return {"out_dir": str(self.out_dir), "settings": self.settings, "rows": self.rows,
                **self.verdict()}

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            "# Segmentation loss comparison (residual U-Net)",
            "",
            f"Same seed ({s['seed']}), data and budget ({s['epochs']} epochs, no early stopping) for "
            f"every loss; image {s['image_size']} px, base width {s['base_width']}, depth {s['depth']}, "
            f"limit per class {s['limit_per_class']}. Metrics on the Val split at the best epoch; "
            "infection Dice / IoU over COVID-19 images, lung Dice over all images, FP infected "
            "area = mean fraction of the image predicted infected on Non-COVID / Normal images.",
            "",
            "| loss | lung Dice | infection Dice | infection IoU | FP infected area (% of image) | "
            "severity MAE (% of lungs) | best epoch | last-epoch change | converged | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        best = max((r["infection_dice"] for r in self.rows if _finite(r["infection_dice"])),
                   default=None)
        for r in self.rows:
            mark = " **best**" if best is not None and r["infection_dice"] == best else ""
            lines.append(
                f"| {r['loss']}{mark} | {_fmt(r['lung_dice'])} | {_fmt(r['infection_dice'])} | "
                f"{_fmt(r['infection_iou'])} | {_fmt(_times100(r['fp_infection_fraction']), 2)} | "
                f"{_fmt(_times100(r['severity_mae']), 2)} | {r['best_epoch']} | "
                f"{_fmt(r.get('last_change'))} | {'yes' if r.get('converged') else 'no'} | "
                f"{r['seconds']:.0f} |")
        v = self.verdict()
        lines.append("")
        if v["winner"] is None:
            lines.append("**Verdict:** none - no loss produced a finite infection Dice.")
        else:
            margin = (f", {100 * v['margin']:.2f} Dice points ahead of {v['runner_up']}"
                      if v["runner_up"] else "")
            lines.append(f"**Verdict:** {v['winner']} has the highest Val infection Dice{margin}.")
            if v["best_severity"] is not None:
                rows = {r["loss"]: r for r in self.rows}
                b = rows[v["best_severity"]]
                extra = (f", {100 * v['severity_margin']:.2f} points below the next" if v["severity_margin"] is not None
                         else "")
                lines.append(f"{v['best_severity']} has the lowest severity error ({_fmt(_times100(b['severity_mae']), 2)} "
                             f"% of the lungs{extra}), the number that counts infection on COVID-19 images and "
                             f"false positives on infection-free ones alike (FP infected area "
                             f"{_fmt(_times100(b['fp_infection_fraction']), 2)} % of the image, against "
                             f"{_fmt(_times100(rows[v['winner']]['fp_infection_fraction']), 2)} % for {v['winner']}).")
        lines.append(
            "Every loss converged (mean Val Dice changed by less than "
            f"{CONVERGED_DELTA:.2f} over the last epoch)." if v["all_converged"] else
            f"Not converged within the budget: {', '.join(v['not_converged'])} (mean Val Dice still "
            f"moved by {CONVERGED_DELTA:.2f} or more over the last epoch) - train longer before "
            "trusting the ranking.")
        return "\n".join(lines) + "\n"


def _convergence(epochs: List[Dict[str, Any]]) -> Dict[str, Any]:
    scores = [e.get("val_dice_mean") for e in epochs]
    if len(scores) < 2 or not all(_finite(x) for x in scores[-2:]):
        return {"last_change": None, "converged": False}
    change = float(scores[-1] - scores[-2])
    return {"last_change": change, "converged": abs(change) < CONVERGED_DELTA}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _times100(v):
    return 100.0 * v if _finite(v) else v


def _fmt(v, nd=3) -> str:
    return f"{v:.{nd}f}" if _finite(v) else "n/a"


def study_losses(data_root, out_dir, options: Optional[StudyOptions] = None, *,
                 losses: Optional[Sequence[str]] = None, progress: bool = True, overwrite: bool = False,
                 **overrides: Any) -> LossStudyResult:
    """Train the segmenter once per loss (all of ``LOSSES`` by default) with the same seed, data and
    epoch budget (early stopping off), as ``options`` (a
    :class:`~covidedge.train.options.StudyOptions`, its fields also accepted as keywords) says,
    into ``out_dir/<loss>/``, and write comparison.md,
    comparison.json and comparison.png. A loss whose run folder already holds a finished run
    with the same settings is reused rather than retrained. The U-Net's size is the segmenter
    variant ``variant`` (default ``resunet256``) with any of ``image_size``, ``base_width`` and
    ``depth`` that are given in place of its values."""
    from covidedge.train.losses import LOSSES
    from covidedge.train.tasks import resolve_sizes

    o = StudyOptions.of(options, **overrides)
    epochs, variant, image_size, base_width, depth = o.epochs, o.variant, o.image_size, o.base_width, o.depth
    batch_size, lr, limit_per_class, seed = o.batch_size, o.lr, o.limit_per_class, o.seed
    device, amp, num_workers = o.device, o.amp, o.num_workers

    names = list(LOSSES) if not losses else [str(n).strip().lower().replace("-", "_") for n in losses]
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise BadInputError(f"unknown loss(es) {', '.join(unknown)}; expected some of "
                            f"{', '.join(LOSSES)} or 'all'")
    if len(set(names)) != len(names):
        raise BadInputError(f"loss list {','.join(names)} names a loss twice")
    sizes = resolve_sizes("segmenter", variant, image_size=image_size, base_width=base_width,
                          depth=depth)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(epochs=int(epochs), variant=variant, image_size=int(sizes["image_size"]),
                    base_width=int(sizes["base_width"]), depth=int(sizes["depth"]),
                    batch_size=int(batch_size), lr=float(lr),
                    limit_per_class=limit_per_class, seed=int(seed), data_root=str(data_root))
    rows = []
    for i, name in enumerate(names, 1):
        run_dir = out / name
        log(progress, f"[{i}/{len(names)}] loss {name}")
        reused = _reusable_run(run_dir, name, settings) if not overwrite else None
        if reused is not None:
            log(progress, f"reusing the finished run in {run_dir}")
            metrics, hist = reused
            best_epoch, seconds = hist["best_epoch"], sum(e["seconds"] for e in hist["epochs"])
        else:
            res = train_segmenter(data_root, run_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                                  variant=variant, image_size=settings["image_size"],
                                  base_width=settings["base_width"], depth=settings["depth"],
                                  loss=name, device=device, amp=amp, seed=seed,
                                  patience=int(epochs),
                                  limit_per_class=limit_per_class, num_workers=num_workers,
                                  progress=progress, overwrite=True)
            metrics, best_epoch, seconds = res.metrics, res.best_epoch, res.seconds
            hist = {"epochs": res.history}  # what history.json holds, already in memory
        m = metrics["metrics"]
        conv = _convergence(hist.get("epochs") or [])
        rows.append({"loss": name, "lung_dice": m["lung_dice"], "lung_iou": m["lung_iou"],
                     "infection_dice": m["infection_dice"], "infection_iou": m["infection_iou"],
                     "fp_infection_fraction": m["fp_infection_fraction"],
                     "severity_mae": m["severity_mae"], "best_epoch": best_epoch,
                     "seconds": round(float(seconds), 1), "run_dir": str(run_dir), **conv})
    result = LossStudyResult(out_dir=out, rows=rows, settings=settings)
    write_json(out / "comparison.json", result.to_dict())
    write_atomic(out / "comparison.md", result.to_markdown().encode("utf-8"))
    _plot_study(out / "comparison.png", rows)
    return result


def _reusable_run(run_dir: Path, loss: str, settings: Dict[str, Any]):
    try:
        hist = json.loads((run_dir / "history.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not (run_dir / "best.pt").is_file():
        return None
    o = hist.get("options") or {}
    want = {**settings, "loss": loss, "loss_params": {}}
    if not all(same_option(o.get(k), v) for k, v in want.items()):
        return None
    if len(hist.get("epochs") or []) != settings["epochs"]:
        return None
    return metrics, hist


def _plot_study(path: Path, rows: List[Dict[str, Any]]) -> None:
    """comparison.png: one group of bars per Val metric of ``STUDY_BARS``, one bar per loss."""
    from covidedge.plots import plot_bars

    table = [{"metric": label, **{r["loss"]: r[key] for r in rows}} for key, label in STUDY_BARS]
    plot_bars(table, "metric", [r["loss"] for r in rows], path,
              title="Segmentation losses, same seed and budget",
              ylabel="Val score (FP area: fraction of image)", value_format="{:.2f}")
