"""``covidedge parity``: accuracy of a checkpoint against its fp32 / fp16 / int8 graphs."""

from __future__ import annotations

import json

import click

from covidedge.errors import BadInputError
from covidedge.export.calibrators import DEFAULT_PERCENTILE
from covidedge.spec import CALIBRATION_METHODS, DEFAULT_CALIBRATION_COUNT


def _methods(value: str):
    items = [m.strip().lower() for m in value.split(",") if m.strip()]
    if not items:
        raise BadInputError("--methods is empty", hint="pass e.g. minmax,entropy,percentile")
    return items


@click.command(name="parity")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--data", "data_root", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=str),
              help="COVID-QU-Ex folder to evaluate on.")
@click.option("--split", default="Val", show_default=True, help="Split to evaluate on.")
@click.option("--calib-data", type=click.Path(exists=True, file_okay=False, path_type=str),
              default=None,
              help="Folder to draw int8 calibration images from [default: --data, Train split].")
@click.option("--calib-count", type=int, default=None,
              help=f"Calibration images [default: {DEFAULT_CALIBRATION_COUNT}, or all the Train split has].")
@click.option("--calibration", "manifest", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=str), help="A calibration manifest from 'covidedge calibrate' instead.")
@click.option("--methods", default=",".join(CALIBRATION_METHODS), show_default=True,
              help="int8 calibration methods, comma-separated (one int8 graph each).")
@click.option("--percentile", type=float, default=None,
              help=f"Percent of |x| kept by the percentile method [default: {DEFAULT_PERCENTILE}].")
@click.option("--limit-per-class", type=int, default=None,
              help="At most N evaluation images per class (picked with seed 0).")
@click.option("--out", "out_dir", default="build/parity", show_default=True,
              type=click.Path(file_okay=False, path_type=str),
              help="Folder for the graphs, parity.md and parity.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def command(checkpoint, data_root, split, calib_data, calib_count, manifest, methods, percentile,
            limit_per_class, out_dir, as_json):
    """Export CHECKPOINT to fp32, fp16 and one int8 graph per calibration method, evaluate the
    checkpoint (torch) and every graph (ONNX Runtime, CPU) on the same split, and print one
    table: size, accuracy (classifier) or lung / infection Dice (segmenter), the change against
    the checkpoint in points, how often the graph agrees with the checkpoint (argmax agreement,
    or the mean Dice between their masks), and the best int8 method marked.

    \b
    Example:
      covidedge parity runs/cls/best.pt --data COVID-QU-Ex --split Val --limit-per-class 100
      covidedge parity runs/seg/best.pt --data COVID-QU-Ex --methods entropy,percentile --json
    """
    from covidedge.evaluation.parity import ParityOptions, compare_precisions

    options = ParityOptions(methods=_methods(methods), limit_per_class=limit_per_class, out_dir=out_dir,
                            calib_data=calib_data, calib_count=calib_count, percentile=percentile)
    table = compare_precisions(checkpoint, data_root, split, calibration=manifest, options=options, progress=True)
    if as_json:
        click.echo(json.dumps(table.to_dict(), indent=2))
    else:
        click.echo(table.to_markdown(), nl=False)
        click.echo(f"written to {table.meta['files']['markdown']} and "
                   f"{table.meta['files']['json']}", err=True)
