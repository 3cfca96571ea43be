"""``covidedge synth``: write a small synthetic dataset in the COVID-QU-Ex layout."""

from __future__ import annotations

import json

import click

from covidedge.cli.data import summary_table
from covidedge.data.covidqu import CLASSES, CovidQuDataset
from covidedge.data.synth import make_synthetic_dataset


@click.command(name="synth")
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False))
@click.option("--per-class", default=8, show_default=True, type=click.IntRange(1, 99999),
              help="Images per split and class.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
              help="Random seed; the same seed gives the same files.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(16, 4096),
              help="Image side in pixels.")
@click.option("--splits", default="Train,Val,Test", show_default=True,
              help="Comma-separated splits to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(out_dir, per_class, seed, size, splits, as_json):
    """Write a synthetic chest X-ray dataset into OUT_DIR in exactly the COVID-QU-Ex layout
    (Infection Segmentation Data/<split>/<class>/{images,lung masks,infection masks}), with
    lung masks and COVID-19 infection masks. The images are drawings for tests, demos and CI,
    never for judging a model. A previous synthetic dataset in OUT_DIR is replaced.

    \b
    Example:
      covidedge synth demo/data --per-class 16 --size 128 --splits Train,Val
    """
    from covidedge.progress import bar as progress_bar

    n_splits = len([s for s in splits.split(",") if s.strip()])
    total = n_splits * len(CLASSES) * per_class
    with progress_bar(total=total, unit="img", desc="synth", enabled=True) as bar:
        root = make_synthetic_dataset(out_dir, per_class=per_class, seed=seed, splits=splits,
                                      size=size, progress=bar.update)
    info = CovidQuDataset(root).summary()
    click.echo(f"wrote a synthetic dataset to {root} (seed {seed}, {size}x{size} px)", err=True)
    if as_json:
        click.echo(json.dumps({"root": str(root), "seed": seed, "size": size,
                               "per_class": per_class, "summary": info}, indent=2))
    else:
        click.echo(summary_table(info))
