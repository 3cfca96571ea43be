"""``covidedge data``: inspect a COVID-QU-Ex dataset folder (``data summary DIR``)."""

from __future__ import annotations

import json
from typing import Dict, List

import click

from covidedge.data.covidqu import CLASSES, CovidQuDataset


def summary_table(summary: Dict[str, object]) -> str:
    """Plain-text table of a ``CovidQuDataset.summary()``: images per split x class, masks."""
    headers = ["split", *CLASSES, "total", "lung masks", "infection masks"]
    rows: List[List[str]] = []
    totals = [0] * (len(CLASSES) + 3)
    for split, info in summary["splits"].items():
        values = [info["classes"][c]["images"] for c in CLASSES]
        values += [info["images"], info["lung_masks"], info["infection_masks"]]
        totals = [a + b for a, b in zip(totals, values)]
        rows.append([split, *(str(v) for v in values)])
    if len(rows) > 1:
        rows.append(["all", *(str(v) for v in totals)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: List[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(headers), *(line(r) for r in rows)]
    subset = summary.get("subset") or "unnamed subset"
    return f"dataset: {summary['root']}  ({subset})\n" + "\n".join(lines)


@click.group(name="data")
def command():
    """Inspect COVID-QU-Ex dataset folders (the real download or a synthetic twin).

    \b
    Example:
      covidedge data summary ~/datasets/COVID-QU-Ex
    """


@command.command(name="summary")
@click.argument("directory", metavar="DIR", type=click.Path(exists=False, file_okay=False))
@click.option("--subset", type=click.Choice(["infection", "lung"]), default=None,
              help="Which subset to read when the folder holds both (default: infection).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def summary(directory, subset, as_json):
    """Count the images of each split and class in DIR and how many have lung and infection
    masks, and show the folder that was resolved as the dataset root. DIR may be the folder
    holding Train/Val/Test, the 'Infection Segmentation Data' (or 'Lung Segmentation Data')
    folder, its parent, or the Kaggle download with its doubled nesting.

    \b
    Example:
      covidedge data summary "COVID-QU-Ex/Infection Segmentation Data" --json
    """
    info = CovidQuDataset(directory, subset=subset).summary()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(summary_table(info))
