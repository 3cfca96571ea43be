"""``covidedge infer``: classify and segment chest X-rays from files, folders and globs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from covidedge.errors import EXIT_BAD_INPUT, UsageError

from covidedge.spec import RUNNER_BACKEND_CHOICES

FORMATS = ("table", "json", "csv")


class _EchoStream:
    """A text stream that writes through click.echo (so CliRunner captures it)."""

    def write(self, text: str) -> int:
        click.echo(text, nl=False)
        return len(text)

    def flush(self) -> None:
        pass


def _backend_line(pipe) -> str:
    """One line saying which backend runs each model, in the precision it computes in (an
    OpenVINO engine built for bf16 runs its fp32 graph in bf16: its manifest says so)."""
    parts = []
    for m in pipe.models:
        d = m.describe()
        device = d.get("device") or ""
        what = f"{m.backend} {d.get('compute_precision') or m.precision}" + (f" on {device}" if device else "")
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
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.0, min_open=True), default=60.0,
              show_default=True,
              help="With --server: seconds to wait for each answer. When the server leaves two requests "
                   "in a row unanswered the run stops, saying how many images were done.")
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
              help="Replace the results file an earlier run left in --out / --results; without it "
                   "it is never overwritten. Masks and overlays never replace existing files: a "
                   "taken name gets _2, _3 ...")
@click.option("--show-patient-ids", is_flag=True,
              help="Show patient name and ID of DICOM inputs (stderr, DICOM index.csv); hidden by default.")
@click.pass_context
def command(ctx, inputs, classifier, segmenter, out_dir, fmt, as_json, threshold, batch_size, backend,
            no_overlay, results_path, dicom_out, modality, view_position, body_part, strict, overwrite,
            show_patient_ids, server, timeout_s):
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
      covidedge infer xray.png --classifier build/cls-best.fp32.onnx
      covidedge infer scans/ --classifier build/cls-best.fp16.trt10.3.sm87.engine \\
          --segmenter build/seg-best.fp16.trt10.3.sm87.engine --out results/
      covidedge infer 'scans/**/*.dcm' -c build/cls-best.fp32.ort.onnx -s build/seg-best.fp32.ort.onnx \\
          --format csv > results.csv
      covidedge infer pacs_export/ --view-position PA --dicom-out to_pacs/

    \b
    Exit codes: 0 all images done, 1 some inputs failed, 2 options that cannot be used together,
      3 all failed or no images found, 4 a model that does not fit (e.g. a segmenter given as
      --classifier).
    """
    from covidedge.dicom import SeriesFilter
    from covidedge.runtime.results import CsvResultsWriter, TableFormatter
    from covidedge.progress import bar as progress_bar
    from covidedge.runtime.options import InferenceOptions
    from covidedge.runtime.run import run_inference

    if not server and ctx.get_parameter_source("timeout_s").name != "DEFAULT":
        raise UsageError("--timeout applies to --server", hint="drop --timeout, or add --server URL")
    if server and strict:
        raise UsageError("--strict applies to local models; the server does not run the input "
                                 "quality check")
    if server and (classifier or segmenter or backend != "auto"):
        raise UsageError("--server runs the models the server serves; drop --classifier / "
                                 "--segmenter / --backend")
    models_line = None
    if not classifier and not segmenter and not server:
        from covidedge.runtime.defaults import default_models

        chosen = default_models(backend=backend)
        models_line = chosen.line  # says which models run, on what: the one line, printed below
        classifier = str(chosen.classifier) if chosen.classifier else None
        segmenter = str(chosen.segmenter) if chosen.segmenter else None
    if as_json:
        fmt = "json"
    # the default threshold is the models' own; only a threshold the user gave is passed on
    explicit_threshold = threshold if ctx.get_parameter_source("threshold").name != "DEFAULT" else None

    # Models first: a model that does not fit stops the run before any image is read.
    if server:
        from covidedge.serve.client import server_pipeline

        pipe = server_pipeline(server, threshold=explicit_threshold, batch_size=batch_size, timeout_s=timeout_s)
    else:
        from covidedge.runtime.pipeline import Pipeline

        pipe = Pipeline(classifier=classifier or None, segmenter=segmenter or None,
                        threshold=explicit_threshold, batch_size=batch_size, backend=backend, strict=strict)
    click.echo(models_line or _backend_line(pipe), err=True)
    series_filter = SeriesFilter.parse(modality, view_position, body_part)

    stdout_csv = CsvResultsWriter(_EchoStream(), pipe.labels) if fmt == "csv" else None
    collected, shown = [], [0]
    state = {"bar": progress_bar(), "table": None}

    def on_files(files) -> None:
        # images shown relative to the input folder: same names in subfolders stay apart
        state["table"] = TableFormatter.for_files(files, pipe.labels, segmentation=pipe.segmenter is not None)
        # a bar on a terminal only (covidedge.progress; tqdm is imported only when one is shown)
        state["bar"] = progress_bar(total=len(files), unit="img", enabled=len(files) > 1)

    def note(msg: str) -> None:
        if not hasattr(state["bar"], "write"):  # no bar on screen
            click.echo(msg, err=True)
        else:
            state["bar"].write(msg, file=sys.stderr)

    def on_result(result) -> None:
        state["bar"].update(1)
        if fmt == "json":  # streamed: each object is on stdout (flushed) as soon as it is done
            text = "\n".join("  " + ln for ln in json.dumps(result.to_dict(), indent=2).splitlines())
            click.echo(("[\n" if not collected else ",\n") + text, nl=False)
            collected.append(True)
        elif fmt == "csv":
            stdout_csv.write(result)
        elif result.ok:
            shown[0] += 1
            if shown[0] == 1:
                click.echo(state["table"].header())
            click.echo(state["table"].row(result))

    debug = bool((ctx.find_root().obj or {}).get("debug"))
    try:
        options = InferenceOptions(
            batch_size=batch_size, out_dir=out_dir, results=results_path,
            results_format="jsonl" if fmt == "json" and out_dir and not results_path else None,
            overlay=not no_overlay, overwrite=overwrite, dicom_out=dicom_out, series_filter=series_filter,
            show_patient_ids=show_patient_ids, suppress_warnings=not debug)
        summary = run_inference(inputs, options, pipeline=pipe, on_files=on_files, on_result=on_result,
                                on_note=note)
    finally:
        state["bar"].close()
        if fmt == "json" and collected:  # close the list even when the run stops early
            click.echo("\n]")
    if fmt == "json" and not collected:
        click.echo("[]")
    click.echo(summary.line(), err=True)
    if summary.exit_code == EXIT_BAD_INPUT:
        plural = "s" if summary.images != 1 else ""
        click.echo(f"error: all {summary.images} input image{plural} failed", err=True)
    ctx.exit(summary.exit_code)
