"""``covidedge evaluate``: accuracy / Dice of a checkpoint, ONNX model or engine on a split."""

from __future__ import annotations

import json

import click


@click.command(name="evaluate")
@click.argument("model", type=click.Path(exists=True, dir_okay=True, path_type=str))
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, path_type=str),
              help="COVID-QU-Ex folder (the one holding the split folders, or a parent of it).")
@click.option("--split", default="Val", show_default=True,
              help="Split to evaluate on: Train, Val or Test (when present).")
@click.option("--batch-size", default=16, show_default=True, type=int, help="Images per inference call.")
@click.option("--limit-per-class", default=None, type=int,
              help="At most N images per class, picked with --seed (as training picks them).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the --limit-per-class pick.")
@click.option("--threshold", default=0.5, show_default=True, type=float,
              help="Segmenter: probability at or above which a pixel is in the mask.")
@click.option("--backend", default="auto", show_default=True,
              help="auto, tensorrt, onnxruntime, openvino or torch (auto picks from the file and the machine).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Also write report.json, report.md and confusion_matrix.png into this folder.")
@click.option("--overwrite", is_flag=True,
              help="Replace a report an earlier evaluation left in --out (never replaced otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--allow-missing-classes", is_flag=True,
              help="Go on when the split has no images of some class (refused otherwise); "
                   "the report lists those classes.")
def command(model, data_root, split, batch_size, limit_per_class, seed, threshold, backend,
            out_dir, overwrite, as_json, allow_missing_classes):
    """Evaluate MODEL (a checkpoint .pt, an ONNX model or an engine) on one split of a COVID-QU-Ex
    folder, through the same preprocessing and runtime as inference. A classifier gets accuracy,
    per-class precision / recall / F1 / support (the study's table layout), macro and weighted
    averages, ROC-AUC and the confusion matrix; a segmenter gets lung and infection Dice / IoU,
    the false-positive infected area on infection-free images and the severity error.

    \b
    Example:
      covidedge evaluate runs/cls/best.pt --data COVID-QU-Ex --split Val --out reports/cls-val
      covidedge evaluate build/seg-best.int8.onnx --data COVID-QU-Ex --split Val --json
    """
    from covidedge.evaluation import EvaluationOptions, EvaluationReport, evaluate

    if out_dir:  # an earlier report is refused before the evaluation, not after it
        EvaluationReport.check_out_dir(out_dir, overwrite=overwrite)
    options = EvaluationOptions(batch_size=batch_size, limit_per_class=limit_per_class, threshold=threshold,
                                backend=backend, seed=seed, allow_missing_classes=allow_missing_classes)
    report = evaluate(model, data_root, split=split, options=options, progress=True)
    if out_dir:
        report.save(out_dir, overwrite=overwrite)
        click.echo(f"report written to {out_dir}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text(), nl=False)
