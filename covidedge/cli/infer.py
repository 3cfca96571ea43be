"""``covidedge infer``: classify and segment chest X-rays from files, folders and globs."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import click

from covidedge.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BadInputError

FORMATS = ("table", "json", "csv")
from covidedge.runtime.select import BACKENDS


class _OneLineUsageError(click.UsageError):
    """A usage error shown as one ``error: ...`` line (exit code 2), without the usage block."""

    exit_code = EXIT_USAGE

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


class _EchoStream:
    """A text stream that writes through click.echo (so CliRunner captures it)."""

    def write(self, text: str) -> int:
        click.echo(text, nl=False)
        return len(text)

    def flush(self) -> None:
        pass


class _NoBar:
    """Stands in for a tqdm bar when none is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _backend_line(pipe) -> str:
    """One line saying which backend runs each model."""
    parts = []
    for m in pipe.models:
        d = m.describe()
        device = d.get("device") or ""
        what = f"{m.backend} {m.precision}" + (f" on {device}" if device else "")
        parts.append((m.task, Path(m.source).name, what))
    if len({p[2] for p in parts}) == 1:
        models = ", ".join(f"{task} {name}" for task, name, _ in parts)
        return f"backend: {parts[0][2]} ({models})"
    return "backend: " + "; ".join(f"{task} {name}: {what}" for task, name, what in parts)


@click.command(name="infer")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--classifier", "-c", "classifier", metavar="MODEL",
              help="Classifier: TensorRT engine, ONNX model (.onnx) or checkpoint (.pt).")
@click.option("--segmenter", "-s", "segmenter", metavar="MODEL",
              help="Lungs + infection segmenter: engine, .onnx or .pt.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=str),
              help="Folder for <name>_lungs.png, <name>_infection.png, <name>_overlay.png and the "
                   "results file. Without it nothing is written to disk (except --results).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="stdout: a compact table, one JSON list, or CSV. Also picks the results file: "
                   "results.jsonl for json, results.csv otherwise.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Mask probability threshold of the segmenter.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per inference call.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: TensorRT for engines where it exists, ONNX Runtime for .onnx, torch for .pt.")
@click.option("--no-overlay", is_flag=True, help="Write the masks but not the overlay pictures.")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=str),
              help="Results file written as the run goes (.csv or .jsonl); default: "
                   "OUT/results.csv or OUT/results.jsonl when --out is given.")
@click.pass_context
def command(ctx, inputs, classifier, segmenter, out_dir, fmt, as_json, threshold, batch_size, backend,
            no_overlay, results_path):
    """Classify chest X-rays (COVID-19 / Non-COVID / Normal) and segment lungs and infection.

    INPUT is an image file (PNG, JPEG, BMP, TIFF, DICOM; 8- or 16-bit, gray or colour, any size),
    a folder (searched recursively) or a quoted glob. Give --classifier, --segmenter or both.
    Each image gets its class with probabilities, the lung fraction of the image, the infected
    fraction of the lungs (severity) and per-stage timings in ms. With --out, masks at the
    image's own size and an overlay (infection in red, lung outline in green) are saved, and a
    results file is written line by line, so an interrupted run keeps what it finished. A bad
    file is reported on one 'skipped:' line and the run goes on.

    \b
    Examples:
      covidedge infer xray.png --classifier build/cls.onnx
      covidedge infer scans/ --classifier build/cls.engine --segmenter build/seg.engine --out results/
      covidedge infer 'scans/**/*.dcm' -c cls.onnx -s seg.onnx --format csv > results.csv

    \b
    Exit codes: 0 all images done, 1 some inputs failed, 3 all failed or no images found,
      4 a model that does not fit (e.g. a segmenter given as --classifier).
    """
    from covidedge.inputs import expand_inputs
    from covidedge.runtime.pipeline import Pipeline
    from covidedge.runtime.results import (CsvResultsWriter, TableFormatter, open_results_writer)

    if not classifier and not segmenter:
        raise _OneLineUsageError(
            "no model given: pass --classifier MODEL and/or --segmenter MODEL "
            "(make models with 'covidedge demo' or 'covidedge build-engine')", ctx=ctx)
    if as_json:
        fmt = "json"

    # Models first: a model that does not fit stops the run before any image is read.
    pipe = Pipeline(classifier=classifier or None, segmenter=segmenter or None, threshold=threshold,
                    batch_size=batch_size, backend=backend)
    click.echo(_backend_line(pipe), err=True)

    expanded = expand_inputs(inputs, exclude=[out_dir] if out_dir else [])
    for problem in expanded.problems:
        click.echo(f"skipped: {problem}", err=True)
    files = expanded.files
    if not files:
        raise BadInputError("no images to process in " + ", ".join(repr(i) for i in inputs),
                            hint="pass image files (.png .jpg .jpeg .bmp .tif .tiff .dcm) or "
                                 "folders holding them")

    saving = out_dir is not None
    if pipe.segmenter is not None and not saving and not no_overlay:
        click.echo("note: masks and overlays are not saved without --out DIR", err=True)
    if results_path is None and saving:
        results_path = str(Path(out_dir) / ("results.jsonl" if fmt == "json" else "results.csv"))
    if saving:
        Path(out_dir).mkdir(parents=True, exist_ok=True)

    labels = pipe.labels
    writer = open_results_writer(results_path, labels, fmt="jsonl" if fmt == "json" else None) \
        if results_path else None
    table = TableFormatter(labels, segmentation=pipe.segmenter is not None,
                           name_width=max(len(f.name) for f in files))
    stdout_csv = CsvResultsWriter(_EchoStream(), labels) if fmt == "csv" else None
    collected = []
    ok = failed = 0
    t_start = time.perf_counter()

    show_bar = len(files) > 1 and sys.stderr.isatty()
    if show_bar:  # tqdm is imported only when a bar is shown: it costs start-up time
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
    else:
        bar = _NoBar()

    def note(msg: str) -> None:
        if show_bar:
            bar.write(msg, file=sys.stderr)
        else:
            click.echo(msg, err=True)

    debug = bool((ctx.find_root().obj or {}).get("debug"))
    try:
        with pipe, warnings.catch_warnings():
            if not debug:  # decoders' warnings (e.g. pydicom's) would break "one line per file"
                warnings.simplefilter("ignore")
            for result in pipe.predict_many(files, batch_size=batch_size, out_dir=out_dir,
                                            overlay=not no_overlay):
                bar.update(1)
                if writer is not None:
                    writer.write(result)
                if result.ok:
                    ok += 1
                else:
                    failed += 1
                    note(f"skipped: {result.error}")
                if fmt == "json":
                    collected.append(result.to_dict())
                elif fmt == "csv":
                    stdout_csv.write(result)
                elif result.ok:
                    if ok == 1:
                        click.echo(table.header())
                    click.echo(table.row(result))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if fmt == "json":
        click.echo(json.dumps(collected, indent=2))

    failed_total = failed + len(expanded.problems)
    seconds = time.perf_counter() - t_start
    plural = "s" if len(files) != 1 else ""
    summary = f"{len(files)} image{plural}: {ok} ok, {failed} failed in {seconds:.1f} s"
    if writer is not None:
        summary += f"; results in {writer.path}"
    if saving and pipe.segmenter is not None:
        summary += f"; masks in {out_dir}"
    click.echo(summary, err=True)
    if ok == 0:
        click.echo(f"error: all {len(files)} input image{plural} failed", err=True)
        ctx.exit(EXIT_BAD_INPUT)
    ctx.exit(EXIT_PARTIAL if failed_total else EXIT_OK)
