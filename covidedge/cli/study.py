"""``covidedge study losses``: compare segmentation losses with the same seed and budget."""

from __future__ import annotations

import json

import click

from covidedge.cli.train import variant_option
from covidedge.spec import AMP_MODES
from covidedge.train.options import StudyOptions


@click.group(name="study")
def command():
    """Reproducible comparisons that train several models under identical conditions and put
    their Val numbers side by side.

    \b
    Example:
      covidedge study losses --data COVID-QU-Ex --out runs/loss-study --losses all --epochs 10
    """


@command.command(name="losses")
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, path_type=str),
              help="COVID-QU-Ex folder with Train and Val splits.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Study folder: one run folder per loss plus comparison.md/.json/.png.")
@click.option("--losses", default="all", show_default=True,
              help="Comma-separated loss names (bce,dice,bce_dice,focal,tversky,focal_tversky,jaccard) or 'all'.")
@click.option("--epochs", default=StudyOptions.epochs, show_default=True, type=int, help="Epochs per loss (no early stopping).")
@variant_option("segmenter")
@click.option("--image-size", default=None, type=int, help="Square input size in px. [default: the variant's]")
@click.option("--base-width", default=None, type=int,
              help="Channels of the first U-Net stage. [default: the variant's]")
@click.option("--depth", default=None, type=int, help="U-Net down-sampling stages. [default: the variant's]")
@click.option("--batch-size", default=StudyOptions.batch_size, show_default=True, type=int, help="Images per step.")
@click.option("--lr", default=StudyOptions.lr, show_default=True, type=float, help="Peak learning rate.")
@click.option("--limit-per-class", default=None, type=int, help="At most N images per class (quick studies).")
@click.option("--seed", default=StudyOptions.seed, show_default=True, type=int, help="The one seed every loss trains with.")
@click.option("--device", default=StudyOptions.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", default=StudyOptions.amp, show_default=True,
              type=click.Choice(AMP_MODES, case_sensitive=False),
              help="Mixed precision (see covidedge train --help).")
@click.option("--overwrite", is_flag=True,
              help="Retrain every loss, even where a finished run with the same settings exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
def losses(data_root, out_dir, losses, as_json, **kw):
    """Train the residual U-Net once per loss with the same seed, images and epoch budget, and
    compare lung Dice, infection Dice / IoU (COVID-19 images), the false-positive infected area
    on infection-free images and the severity error on Val. Writes comparison.md,
    comparison.json and comparison.png (grouped bars) into --out; finished runs with the same
    settings are reused, so an interrupted study continues where it stopped.

    \b
    Example (a quick CPU study):
      covidedge study losses --data COVID-QU-Ex --out runs/loss-study \\
          --losses bce,dice,focal_tversky --epochs 5 --variant resunet128-small --limit-per-class 100
    """
    from covidedge.train.study import study_losses

    names = None if losses.strip().lower() == "all" else [n for n in losses.split(",") if n.strip()]
    overwrite = kw.pop("overwrite")
    result = study_losses(data_root, out_dir, StudyOptions(**kw), losses=names, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.to_markdown(), nl=False)
