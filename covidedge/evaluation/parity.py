"""What each precision costs in accuracy: the checkpoint against its fp32 / fp16 / int8 graphs.

``compare_precisions`` exports every precision (one int8 graph per calibration method),
evaluates the checkpoint and each graph on the same split with
:func:`covidedge.evaluation.run.evaluate` (graphs on ONNX Runtime, CPU), and makes one table:
precision | method | size MB | accuracy (or lung / infection Dice) | delta vs the checkpoint in
points | agreement with the checkpoint (argmax agreement, or the mean Dice between the
checkpoint's and the graph's masks) | the best int8 method marked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from covidedge.errors import BadInputError, UsageError
from covidedge.fileio import write_atomic
from covidedge.progress import note as progress_note
from covidedge.spec import CALIBRATION_METHODS, Options
from covidedge.export.calibrators import DEFAULT_PERCENTILE

DEFAULT_OUT_DIR = Path("build") / "parity"


class ParityTable(list):
    """The table rows (dicts, one per model) plus what they were measured on (``meta``)."""

    def __init__(self, rows: Sequence[Dict[str, Any]], meta: Dict[str, Any]):
        super().__init__(rows)
        self.meta = meta

    @property
    def task(self) -> str:
        return self.meta["task"]

    def best_int8(self) -> Optional[Dict[str, Any]]:
        return next((r for r in self if r.get("best_int8")), None)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps({"meta": self.meta, "rows": list(self)}))

    def to_markdown(self) -> str:
        """A Markdown table with a one-line caption."""
        seg = self.task == "segmenter"
        m = self.meta
        caption = (f"Parity on {m['split']} ({m['images']} images) of {m['data_root']}; "
                   f"checkpoint {Path(m['checkpoint']).name}; graphs on ONNX Runtime (CPU).")
        if seg:
            head = ["precision", "method", "size MB", "lung Dice", "infection Dice",
                    "Δ lung (pts)", "Δ infection (pts)", "mask agreement (Dice)", "best int8"]
        else:
            head = ["precision", "method", "size MB", "accuracy", "Δ accuracy (pts)",
                    "argmax agreement", "best int8"]
        lines = [caption, "", "| " + " | ".join(head) + " |",
                 "|" + "|".join("---" for _ in head) + "|"]

        def num(v, fmt):
            return "n/a" if v is None else format(v, fmt)

        for r in self:
            mark = "**best**" if r.get("best_int8") else ""
            if seg:
                cells = [r["precision"], r["method"] or "", num(r["size_mb"], ".2f"),
                         num(r["lung_dice"], ".4f"), num(r["infection_dice"], ".4f"),
                         num(r["delta_lung_points"], "+.2f"),
                         num(r["delta_infection_points"], "+.2f"),
                         num(r["mask_agreement_dice"], ".4f"), mark]
            else:
                cells = [r["precision"], r["method"] or "", num(r["size_mb"], ".2f"),
                         num(r["accuracy"], ".4f"), num(r["delta_points"], "+.2f"),
                         num(None if r["argmax_agreement"] is None
                             else 100 * r["argmax_agreement"], ".1f") + "%", mark]
            lines.append("| " + " | ".join(cells) + " |")
        calib = m.get("calibration")
        if calib:
            lines += ["", f"int8 calibration: {calib['count']} images of {calib['split']} "
                          f"(sha256 {calib['sha256'][:16]}), manifest {calib.get('manifest')}."]
        return "\n".join(lines) + "\n"


def _mask_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean Dice between two (N, C, H, W) bool mask stacks over images and channels; an image
    channel empty in both counts as full agreement (1.0)."""
    inter = np.logical_and(ref, got).sum(axis=(2, 3)).astype(np.float64)
    total = ref.sum(axis=(2, 3)).astype(np.float64) + got.sum(axis=(2, 3))
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    return float(dice.mean())


def _row(precision: str, method: Optional[str], path: Path, report) -> Dict[str, Any]:
    row = {"precision": precision, "method": method, "path": str(path),
           "size_mb": round(path.stat().st_size / 1e6, 3), "best_int8": False}
    m = report.metrics
    if report.task == "classifier":
        row["accuracy"] = m["accuracy"]
        row["macro_f1"] = m.get("macro_f1")
    else:
        row["lung_dice"] = m["lung_dice"]
        row["infection_dice"] = m["infection_dice"]
    return row


def _points(a, b):
    return None if a is None or b is None else round(100.0 * (a - b), 4)


@dataclass(frozen=True)
class ParityOptions(Options):
    """What a parity study exports and how it scores: fp32 / fp16 graphs (``precisions``) and one
    int8 graph per calibration method (``methods``; ``percentile`` for the percentile method),
    calibrated on ``calib_data`` (a dataset folder, ``calib_count`` images) when no calibration
    set is given; ``limit_per_class`` images per class (chosen from ``seed``) scored in batches
    of ``batch_size``; graphs and reports go to ``out_dir``."""

    methods: Sequence[str] = CALIBRATION_METHODS
    limit_per_class: Optional[int] = None
    out_dir: Any = DEFAULT_OUT_DIR
    calib_data: Any = None
    calib_count: Optional[int] = None
    percentile: Optional[float] = None
    precisions: Sequence[str] = ("fp32", "fp16")
    batch_size: int = 16
    seed: int = 0

    def validate(self) -> None:
        methods = list(dict.fromkeys(str(m).lower() for m in self.methods))
        bad = [m for m in methods if m not in CALIBRATION_METHODS]
        if bad:
            raise BadInputError(f"calibration method(s) {', '.join(bad)} unknown; expected "
                                f"{', '.join(CALIBRATION_METHODS)}")
        bad = [p for p in dict.fromkeys(self.precisions) if p not in ("fp32", "fp16")]
        if bad:
            raise BadInputError(f"precisions {bad} are not fp32 / fp16 (int8 comes from methods)")
        if self.percentile is not None and "percentile" not in methods:
            raise UsageError(f"percentile={self.percentile} applies with the percentile method, and methods are "
                             f"{', '.join(methods) or 'none'}", hint="add percentile to the methods or drop it")


def compare_precisions(checkpoint, data_root, split: str = "Val", calibration=None,
                       options: Optional[ParityOptions] = None, *, progress: bool = False,
                       **overrides: Any) -> ParityTable:
    """Export and evaluate every precision of ``checkpoint`` on ``split`` of ``data_root``, as
    ``options`` (a :class:`ParityOptions`, its fields also accepted as keywords) says.

    int8 graphs (one per ``methods`` entry) are calibrated on ``calibration`` (a CalibrationSet
    or manifest), else on ``calib_data`` (a dataset folder), else on the Train split of
    ``data_root`` (``calib_count`` images, default covidedge.spec.DEFAULT_CALIBRATION_COUNT, or all it has). Graphs, ``parity.md`` and
    ``parity.json`` go to ``out_dir``. Returns the table rows (a list of dicts with ``.meta``,
    ``.to_markdown()`` and ``.to_dict()``).
    """
    from covidedge.evaluation import evaluate
    from covidedge.export import export_model, resolve_calibration
    from covidedge.formats.checkpoint import read_checkpoint
    from covidedge.spec import ModelSpec

    o = ParityOptions.of(options, **overrides)
    methods = list(dict.fromkeys(str(m).lower() for m in o.methods))
    precisions = list(dict.fromkeys(o.precisions))
    limit_per_class, out_dir, calib_data, calib_count = o.limit_per_class, o.out_dir, o.calib_data, o.calib_count
    percentile, batch_size, seed = o.percentile, o.batch_size, o.seed
    if calibration is not None and (calib_data is not None or calib_count is not None):
        raise UsageError("pass a calibration set (--calibration), or calibration data and a count "
                         "(--calib-data / --calib-count), not both")
    checkpoint = Path(os.fspath(checkpoint))
    spec = ModelSpec.from_dict(read_checkpoint(checkpoint)["spec"])
    out_dir = Path(os.fspath(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = checkpoint.stem

    def note(text: str) -> None:
        progress_note(progress, text)

    def run_eval(path, backend):
        return evaluate(path, data_root, split, batch_size=batch_size,
                        limit_per_class=limit_per_class, backend=backend, progress=progress,
                        keep_outputs=True, seed=seed)

    note(f"evaluating the checkpoint {checkpoint} on {split}")
    ref = run_eval(checkpoint, "torch")
    ref_row = _row("checkpoint", None, checkpoint, ref)
    ref_masks = ref.masks() if ref.task == "segmenter" else None

    calib = None
    if methods:
        source = calibration if calibration is not None else (calib_data or data_root)
        calib = resolve_calibration(  # a folder gives the default count, or all its Train split has
            source, spec.input_size, calib_count=calib_count,
            out=None if calibration is not None else out_dir / f"{stem}-calibration.json",
            overwrite=True)  # out_dir is parity's own folder: each run replaces its files

    jobs = [(p, None) for p in precisions] + [("int8", m) for m in methods]
    rows: List[Dict[str, Any]] = [ref_row]
    for precision, method in jobs:
        name = f"{stem}.{precision}" + (f"-{method}" if method else "") + ".onnx"
        path = out_dir / name
        note(f"exporting {precision}{' ' + method if method else ''} -> {path}")
        kw: Dict[str, Any] = {}
        if precision == "int8":
            kw = {"calibration": calib, "method": method}
            if method == "percentile" and percentile is not None:
                kw["percentile"] = percentile
        export_model(checkpoint, path, precision=precision, overwrite=True, **kw)
        report = run_eval(path, "onnxruntime")
        row = _row(precision, method, path, report)
        if report.task == "classifier":
            row["delta_points"] = _points(row["accuracy"], ref_row["accuracy"])
            row["argmax_agreement"] = float(np.mean(report.predictions == ref.predictions))
        else:
            row["delta_lung_points"] = _points(row["lung_dice"], ref_row["lung_dice"])
            row["delta_infection_points"] = _points(row["infection_dice"],
                                                    ref_row["infection_dice"])
            row["mask_agreement_dice"] = _mask_agreement(ref_masks, report.masks())
        rows.append(row)

    if ref.task == "classifier":
        ref_row.update(delta_points=0.0, argmax_agreement=1.0)
    else:
        ref_row.update(delta_lung_points=0.0, delta_infection_points=0.0,
                       mask_agreement_dice=1.0)
    int8 = [r for r in rows if r["precision"] == "int8"]
    if int8:
        def score(r):
            if ref.task == "classifier":
                return (r["accuracy"], r["argmax_agreement"])
            parts = [v for v in (r["lung_dice"], r["infection_dice"]) if v is not None]
            return (float(np.mean(parts)) if parts else 0.0, r["mask_agreement_dice"])
        max(int8, key=score)["best_int8"] = True

    meta = {"task": ref.task, "checkpoint": str(checkpoint), "data_root": str(data_root),
            "split": ref.split, "images": ref.num_images, "limit_per_class": limit_per_class,
            "seed": seed, "backend_graphs": "onnxruntime (CPU)", "backend_checkpoint": "torch",
            "calibration": None if calib is None else calib.summary(),
            "percentile": (float(percentile if percentile is not None else DEFAULT_PERCENTILE)
                           if "percentile" in methods else None)}
    table = ParityTable(rows, meta)
    write_atomic(out_dir / "parity.md", table.to_markdown().encode("utf-8"))
    write_atomic(out_dir / "parity.json", (json.dumps(table.to_dict(), indent=2) + "\n").encode("utf-8"))
    table.meta["files"] = {"markdown": str(out_dir / "parity.md"),
                           "json": str(out_dir / "parity.json")}
    return table


__all__ = ["compare_precisions", "ParityOptions", "ParityTable", "DEFAULT_OUT_DIR"]
