"""Classifier recipe study: train candidate recipes under one budget (or take finished runs) and
print one Val table: accuracy, macro F1, per-class recall, ECE, int8 agreement with fp32, worst
accuracy change under hospital shifts, parameters, training minutes and ms per image.

    # train every recipe with the same data budget, then compare
    python benchmarks/recipe_study.py --data COVID-QU-Ex --out runs/recipes \\
        --recipes baseline,clean-bn,clean-bn+ema,robust --image-size 256 --epochs 14

    # compare finished runs (folders written by `covidedge train classifier`)
    python benchmarks/recipe_study.py --data COVID-QU-Ex --runs runs/cls-a runs/cls-b

    # add runs to a table saved earlier (its rows are kept as measured)
    python benchmarks/recipe_study.py --data COVID-QU-Ex --rows old.json --runs runs/cls-c --save new

Recipes are training options (see RECIPES): ``baseline`` is the trainer before clean-image
BatchNorm statistics (augmented-batch statistics, no weight average); ``clean-bn`` re-estimates
BatchNorm on 600 clean Train images before every Val pass; ``+ema`` validates and saves a weight
average; ``robust`` adds gamma, resampling, noise and a burnt-in frame to the augmentation; ``+aux``
adds the training-only lung and infection mask loss (``--aux-masks 0.5``). Every
number is on Val (the split the runs were selected on: a study table, not a test result).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPES = {
    "baseline": dict(bn_images=0, ema_decay=0.0, augment="basic"),
    "clean-bn": dict(bn_images=600, ema_decay=0.0, augment="basic"),
    "clean-bn+ema": dict(bn_images=600, ema_decay=0.999, augment="basic"),
    "robust": dict(bn_images=600, ema_decay=0.999, augment="robust"),
    "robust+aux": dict(bn_images=600, ema_decay=0.999, augment="robust", aux_masks=0.5),
}


def _ms_per_image(onnx_path: Path, size) -> float:
    from covidedge.backends.onnxruntime import OrtRunner
    from covidedge.bench.timing import time_callable

    x = np.random.default_rng(0).random((1, 1, *size), dtype=np.float32)
    with OrtRunner(onnx_path) as r:
        t = time_callable(lambda: r.infer(x), 1, warmup=5, iterations=40)
    return float(t.median_ms)


def summarise(run: Path, data: str, int8: bool) -> dict:
    from covidedge.evaluation import evaluate
    from covidedge.evaluation.robustness import classifier_robustness
    from covidedge.export.onnx import export_onnx
    from covidedge.formats.checkpoint import read_checkpoint

    best = run / "best.pt"
    hist = json.loads((run / "history.json").read_text())
    ck = read_checkpoint(best)
    params = sum(v.numel() for k, v in ck["state_dict"].items() if "running_" not in k and "num_batches" not in k)
    rep = evaluate(best, data, "Val", progress=False, keep_outputs=True)
    m = rep.metrics
    row = {"run": str(run), "recipe": ck["extra"]["train_options"].get("augment", "basic")
           + (f", bn {ck['extra']['train_options'].get('bn_images', 0)}")
           + (f", ema {ck['extra']['train_options'].get('ema_decay', 0)}")
           + (f", aux masks {ck['extra']['train_options']['aux_masks']}"
              if ck["extra"]["train_options"].get("aux_masks") else "")
           + (f", from {Path(ck['extra']['init_from']['path']).parent} epoch {ck['extra']['init_from']['epoch']}"
              if ck["extra"].get("init_from") else "")
           + (", distilled from " + " + ".join(str(Path(t["path"]).parent) for t in ck["extra"]["distill"]["teachers"])
              + f" (weight {ck['extra']['train_options']['distill_weight']}, T {ck['extra']['distill']['temperature']})"
              if ck["extra"].get("distill") else ""),
           "epochs": len(hist["epochs"]), "best_epoch": hist["best_epoch"],
           "train_minutes": round(sum(e["seconds"] for e in hist["epochs"]) / 60, 1),
           "parameters_m": round(params / 1e6, 2), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
           "recall": {k: v["recall"] for k, v in m["per_class"].items()}, "ece": m["ece"]}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "m.onnx"
        export_onnx(best, fp32)
        row["ms_per_image_ort_fp32"] = round(_ms_per_image(fp32, rep_size(ck)), 2)
        rob = classifier_robustness(fp32, data, "Val", backend="onnxruntime")
        row["worst_shift_points"] = rob["worst_delta_points"]
        row["shift_points"] = {r["shift"]: r["delta_points"] for r in rob["rows"][1:]}
        if int8:
            from covidedge.export.calibration import make_calibration_set
            from covidedge.export.int8 import quantize_int8

            calib = make_calibration_set(data, 150, split="Train", seed=0, input_size=rep_size(ck),
                                         out=Path(tmp) / "calib.json", dataset="covid-qu-ex")
            q = quantize_int8(fp32, Path(tmp) / "q.onnx", calib, activation_type="uint8",
                              symmetric_activations=False)
            r8 = evaluate(q, data, "Val", progress=False, keep_outputs=True, backend="onnxruntime")
            row["int8_agreement"] = float((r8.predictions == rep.predictions).mean())
    return row


def to_markdown(rows) -> str:
    """The study table and the per-shift table."""
    out = ["| run | recipe | epochs (best) | train min | params M | Val accuracy | macro F1 | recall C / N / Nm "
           "| ECE | int8 agreement | worst shift (pts) | ms/image ORT fp32 |",
           "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        rec = " / ".join(f"{v:.3f}" for v in r["recall"].values())
        i8 = f"{r['int8_agreement']:.4f}" if "int8_agreement" in r else "-"
        out.append(f"| {r['run']} | {r['recipe']} | {r['epochs']} ({r['best_epoch']}) | {r['train_minutes']} | "
                   f"{r['parameters_m']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {rec} | {r['ece']:.4f} | "
                   f"{i8} | {r['worst_shift_points']:+.2f} | {r['ms_per_image_ort_fp32']} |")
    shifts = list(rows[0].get("shift_points", {})) if rows else []
    if shifts:
        out += ["", "Change in Val accuracy under each shift (points):", "",
                "| run | " + " | ".join(shifts) + " |", "|---|" + "---:|" * len(shifts)]
        out += [f"| {r['run']} | " + " | ".join(f"{r['shift_points'][k]:+.2f}" for k in shifts) + " |" for r in rows]
    return "\n".join(out) + "\n"


def rep_size(ck):
    return tuple(ck["spec"]["input_size"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--runs", nargs="*", default=[], help="finished run folders to compare")
    p.add_argument("--out", help="folder for the recipes' runs (with --recipes)")
    p.add_argument("--recipes", default="", help=f"comma-separated, from {', '.join(RECIPES)}")
    p.add_argument("--variant", default="xception256-small")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--limit-per-class", type=int, default=None)
    p.add_argument("--no-int8", action="store_true", help="skip the int8 agreement column")
    p.add_argument("--rows", type=Path, help="a JSON table saved by an earlier study: its rows come first, "
                   "as they were measured, and the runs given here are added")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", metavar="PREFIX", help="also write PREFIX.json and PREFIX.md")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier PREFIX.json / PREFIX.md")
    a = p.parse_args(argv)
    taken = [f for f in (Path(a.save + ".json"), Path(a.save + ".md")) if a.save and f.exists()]
    if taken and not a.overwrite:  # refused before the work (minutes), not after it
        p.error(f"{taken[0]} exists; choose another --save PREFIX or add --overwrite")
    runs = [Path(r) for r in a.runs]
    if a.recipes:
        from covidedge.train.loop import train_classifier

        for name in a.recipes.split(","):
            if name not in RECIPES:
                p.error(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
            t0 = time.perf_counter()
            out = Path(a.out) / name
            train_classifier(a.data, out, variant=a.variant, image_size=a.image_size, epochs=a.epochs,
                             patience=a.epochs, limit_per_class=a.limit_per_class, progress=False,
                             **RECIPES[name])
            print(f"trained {name} in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
            runs.append(out)
    rows = json.loads(a.rows.read_text()) if a.rows else []
    rows += [summarise(r, a.data, not a.no_int8) for r in runs]
    if a.save:
        Path(a.save + ".json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(a.save + ".md").write_text(to_markdown(rows))
    print(json.dumps(rows, indent=1) if a.json else to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
