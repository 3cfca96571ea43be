"""``covidedge demo``: the whole pipeline once, end to end, on this machine."""

from __future__ import annotations

import json
import sys

import click

from covidedge.demo import REAL_DATA_SETTINGS, DemoSettings, input_size, run_demo
from covidedge.spec import ENGINE_BACKEND_CHOICES, PRECISIONS

_SYNTH, _REAL = DemoSettings(), REAL_DATA_SETTINGS


@click.command(name="demo")
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo makes.")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="A COVID-QU-Ex folder. Without it a small synthetic dataset is made.")
@click.option("--image-size", type=int, help="Training and engine input size in px "
              f"(default: the variants' own, {input_size(_SYNTH)} synthetic, "
              f"{input_size(DemoSettings(**_REAL))} real).")
@click.option("--epochs", type=int, help=f"Training epochs per model (default {_SYNTH.epochs} synthetic, {_REAL['epochs']} real).")
@click.option("--limit-per-class", type=int, help="Train on at most this many images per class "
              f"(default: all synthetic, {_REAL['limit_per_class']} real).")
@click.option("--precisions", default=",".join(PRECISIONS), show_default=True,
              help="Engine precisions to build, comma-separated.")
@click.option("--backend", type=click.Choice(ENGINE_BACKEND_CHOICES), default="auto",
              show_default=True, help="Engine backend; auto = TensorRT where present, else ONNX Runtime "
                                      "(OpenVINO: its CPU engines, with the openvino extra).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def command(out_dir, data, image_size, epochs, limit_per_class, precisions, backend, overwrite, as_json):
    """Run covidedge end to end: make (or take) a dataset, train a small classifier and segmenter,
    build engines in fp32 / fp16 / int8 (TensorRT where present, ONNX Runtime on the CPU
    elsewhere), evaluate every precision on Val, run inference with masks and overlays on a few
    images, and time every model. Ends with a summary of where everything went.

    \b
    Examples:
      covidedge demo                                  # synthetic data, a few minutes on a CPU
      covidedge demo --data /data/COVID-QU-Ex --out demo-real
    """
    kw = {k: v for k, v in dict(image_size=image_size, epochs=epochs,
                                 limit_per_class=limit_per_class).items() if v is not None}
    kw["precisions"] = tuple(p.strip() for p in precisions.split(",") if p.strip())
    settings = DemoSettings(**kw) if data is None else DemoSettings.for_real_data(**kw)
    result = run_demo(out_dir, data=data, settings=settings, backend=backend, overwrite=overwrite,
                      progress=sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    click.echo(result.summary_md.read_text())
    click.echo(f"Summary written to {result.summary_md}")
