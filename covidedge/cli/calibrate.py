"""``covidedge calibrate``: pick INT8 calibration images and pin them in a manifest."""

from __future__ import annotations

import json

import click


@click.command(name="calibrate")
@click.option("--data", "data_root", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=str),
              help="COVID-QU-Ex folder (the one holding the split folders, or a parent of it).")
@click.option("--count", required=True, type=int,
              help="Number of images (a few hundred is typical).")
@click.option("--split", default="Train", show_default=True, help="Split to draw from.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the per-class pick.")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Manifest to write "
                   "[default: calibration/<dataset>-<split>-<count>-seed<seed>.json].")
@click.option("--input-size", default=256, show_default=True, type=int,
              help="Model input side in px; the images are preprocessed to it when used.")
@click.option("--overwrite", is_flag=True, help="Replace an existing manifest (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def command(data_root, count, split, seed, out, input_size, overwrite, as_json):
    """Make an INT8 calibration set: COUNT images of one split, stratified by class (equal
    shares where the classes have enough), chosen deterministically from SEED. The manifest
    lists each image's path relative to the data folder with its sha256, the class balance,
    the preprocessing id and the input size; its own sha256 is what an int8 model records.
    Loading it later verifies every image, so a calibration never changes silently.

    \b
    Example:
      covidedge calibrate --data COVID-QU-Ex --count 500
      covidedge export runs/cls/best.pt --out build/cls-best.int8.onnx --precision int8 \\
          --calibration calibration/covid-qu-ex-train-500-seed0.json
    """
    from covidedge.export.calibration import make_calibration_set

    cset = make_calibration_set(data_root, count, split=split, seed=seed,
                                input_size=(input_size, input_size), out=out, overwrite=overwrite)
    summary = cset.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    balance = ", ".join(f"{k} {v}" for k, v in summary["class_balance"].items())
    click.echo(f"manifest  {summary['manifest']}")
    click.echo(f"sha256    {summary['sha256']}")
    click.echo(f"images    {summary['count']} of {summary['split']} ({balance}), "
               f"seed {summary['seed']}")
    click.echo(f"input     {summary['input_size'][0]}x{summary['input_size'][1]} px, "
               f"{summary['preprocessing']}")
