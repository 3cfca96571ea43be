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
from covidedge.spec import RUNNER_BACKEND_CHOICES


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
@click.option("--backend", type=click.Choice(RUNNER_BACKEND_CHOICES), default="auto", show_default=True,
              help="auto: TensorRT for engines where it exists, ONNX Runtime for .onnx, torch for .pt.")
@click.option("--server", metavar="URL",
              help="Send the images to a Triton server running a covidedge repository "
                   "(http://HOST:8000 or grpc://HOST:8001, see 'covidedge serve') instead of running "
                   "models here; results are printed and written as a local run writes them.")
@click.option("--no-overlay", is_flag=True, help="Write the masks but not the overlay pictures.")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=str),
              help="Results file written as the run goes (.csv or .jsonl); default: "
                   "OUT/results.csv or OUT/results.jsonl when --out is given.")
@click.option("--dicom-out", type=click.Path(file_okay=False, path_type=str),
              help="Folder for DICOM results of DICOM inputs, for a PACS: per image a Segmentation "
                   "(lungs, infection), a TID 1500 Structured Report and a Secondary Capture overlay, "
                   "in the source's study, plus index.csv. Needs the dicom extra.")
@click.option("--modality", default="CR,DX", show_default=True,
              help="DICOM inputs: Modality values to run on (comma-separated, or 'any').")
@click.option("--view-position", default="PA,AP", show_default=True,
              help="DICOM inputs: ViewPosition values to run on (comma-separated, or 'any').")
@click.option("--body-part", default=None,
              help="DICOM inputs: BodyPartExamined values to run on, e.g. CHEST (default: any). "
                   "Filters check files that have the attribute; the others are listed as not selected.")
@click.option("--strict", is_flag=True,
              help="Refuse images that fail the input quality check (blank, under 64 px, a strip beyond 4:1) "
                   "instead of flagging their results.")
@click.option("--overwrite", is_flag=True,
              help="Replace the results file (and masks of the same names) an earlier run left in "
                   "--out / --results; without it they are never overwritten.")
@click.option("--show-patient-ids", is_flag=True,
              help="Show patient name and ID of DICOM inputs (stderr, DICOM index.csv); hidden by default.")
@click.pass_context
def command(ctx, inputs, classifier, segmenter, out_dir, fmt, as_json, threshold, batch_size, backend,
            no_overlay, results_path, dicom_out, modality, view_position, body_part, strict, overwrite,
            show_patient_ids, server):
    """Classify chest X-rays (COVID-19 / Non-COVID / Normal) and segment lungs and infection.

    INPUT is an image file (PNG, JPEG, BMP, TIFF, DICOM; 8- or 16-bit, gray or colour, any size),
    a folder (searched recursively) or a quoted glob. Give --classifier, --segmenter or both;
    with neither, the default models run: the engines 'covidedge build-engine' built in build/
    for this machine, else the models covidedge ships, on ONNX Runtime (one line says which).
    Each image gets its class with probabilities, the lung fraction of the image, the infected
    fraction of the lungs (severity) and per-stage timings in ms. With --out, masks at the
    image's own size and an overlay (infection in red, lung outline in green) are saved, and a
    results file is written line by line, so an interrupted run keeps what it finished. A bad
    file is reported on one 'skipped:' line and the run goes on.

    \b
    Examples:
      covidedge infer xray.png
      covidedge infer xray.png --classifier build/cls.onnx
      covidedge infer scans/ --classifier build/cls.engine --segmenter build/seg.engine --out results/
      covidedge infer 'scans/**/*.dcm' -c cls.onnx -s seg.onnx --format csv > results.csv
      covidedge infer pacs_export/ -c cls.onnx -s seg.onnx --view-position PA --dicom-out to_pacs/

    \b
    Exit codes: 0 all images done, 1 some inputs failed, 3 all failed or no images found,
      4 a model that does not fit (e.g. a segmenter given as --classifier).
    """
    from covidedge.inputs import expand_inputs
    from covidedge.runtime.pipeline import Pipeline
    from covidedge.runtime.results import (CsvResultsWriter, OutputLock, TableFormatter, open_results_writer,
                                           printable)

    if server and strict:
        raise _OneLineUsageError("--strict applies to local models; the server does not run the input "
                                 "quality check", ctx=ctx)
    if server and (classifier or segmenter or backend != "auto"):
        raise _OneLineUsageError("--server runs the models the server serves; drop --classifier / "
                                 "--segmenter / --backend", ctx=ctx)
    if not classifier and not segmenter and not server:
        from covidedge.engine.defaults import default_models

        chosen = default_models()
        click.echo(chosen.line, err=True)
        classifier = str(chosen.classifier) if chosen.classifier else None
        segmenter = str(chosen.segmenter) if chosen.segmenter else None
    if as_json:
        fmt = "json"

    # Models first: a model that does not fit stops the run before any image is read.
    if server:
        from covidedge.serve.client import server_pipeline

        explicit = ctx.get_parameter_source("threshold").name != "DEFAULT"
        pipe = server_pipeline(server, threshold=threshold if explicit else None, batch_size=batch_size)
    else:
        pipe = Pipeline(classifier=classifier or None, segmenter=segmenter or None, threshold=threshold,
                        batch_size=batch_size, backend=backend, strict=strict)
    click.echo(_backend_line(pipe), err=True)

    from covidedge.dicom import AlgorithmInfo, DicomOutputs, SeriesFilter, select_instances

    series_filter = SeriesFilter.parse(modality, view_position, body_part)
    dicom = (DicomOutputs(dicom_out, AlgorithmInfo.from_pipeline(pipe), show_patient_ids=show_patient_ids,
                          overlay=not no_overlay) if dicom_out else None)
    expanded = expand_inputs(inputs, exclude=[d for d in (out_dir, dicom_out) if d])
    for problem in expanded.problems:
        click.echo(f"skipped: {printable(problem)}", err=True)
    selection = select_instances(expanded.files, series_filter)
    for line in selection.lines():
        click.echo(line, err=True)
    files = selection.files
    if not files:
        raise BadInputError("no images to process in " + ", ".join(repr(i) for i in inputs),
                            hint="pass image files (.png .jpg .jpeg .bmp .tif .tiff .dcm) or "
                                 "folders holding them")

    saving = out_dir is not None
    if pipe.segmenter is not None and not saving and not no_overlay:
        click.echo("note: masks and overlays are not saved without --out DIR", err=True)
    if results_path is None and saving:
        results_path = str(Path(out_dir) / ("results.jsonl" if fmt == "json" else "results.csv"))
    lock = OutputLock(out_dir).acquire() if saving else None  # one run at a time per --out

    labels = pipe.labels
    try:
        from covidedge.formats.manifest import manifest_path_for

        models = [Path(m) for m in (classifier, segmenter) if m]
        writer = open_results_writer(results_path, labels, fmt="jsonl" if fmt == "json" else None,
                                     overwrite=overwrite,
                                     protected=[*files, *models, *(manifest_path_for(m) for m in models)]) \
            if results_path else None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
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
                for line in (dicom.write(result) if dicom is not None else ()):
                    note(line)
                if writer is not None:
                    writer.write(result)
                if result.ok:
                    ok += 1
                    if result.quality_flags:
                        from covidedge.data.quality import describe_flags

                        note(f"warning: {printable(result.name)}: do not trust this result, the input fails the "
                             f"quality check ({describe_flags(result.quality_flags)}; --strict refuses such images)")
                else:
                    failed += 1
                    note(f"skipped: {printable(result.error)}")
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
        if lock is not None:
            lock.release()
        if dicom is not None:
            dicom.close()
    if fmt == "json":
        click.echo(json.dumps(collected, indent=2))

    failed_total = failed + len(expanded.problems) + (dicom.failed if dicom is not None else 0)
    seconds = time.perf_counter() - t_start
    plural = "s" if len(files) != 1 else ""
    summary = f"{len(files)} image{plural}: {ok} ok, {failed} failed in {seconds:.1f} s"
    if writer is not None:
        summary += f"; results in {writer.path}"
    if saving and pipe.segmenter is not None:
        summary += f"; masks in {out_dir}"
    summary += selection.summary() + (dicom.summary() if dicom is not None else "")
    click.echo(summary, err=True)
    if ok == 0:
        click.echo(f"error: all {len(files)} input image{plural} failed", err=True)
        ctx.exit(EXIT_BAD_INPUT)
    ctx.exit(EXIT_PARTIAL if failed_total else EXIT_OK)
