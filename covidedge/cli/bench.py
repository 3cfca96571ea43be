"""``covidedge bench``: latency, throughput and (optionally) accuracy of models and engines."""

from __future__ import annotations

import click

from covidedge.errors import BadInputError

from covidedge.spec import RUNNER_BACKEND_CHOICES


def parse_batches(text: str):
    """"1,8,32" -> [1, 8, 32]; duplicates dropped, order kept."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise BadInputError(f"--batch {text!r}: {part!r} is not an integer", hint="e.g. --batch 1,8,32")
        if value < 1:
            raise BadInputError(f"--batch {text!r}: {value} is not a positive batch size", hint="e.g. --batch 1,8,32")
        if value not in out:
            out.append(value)
    if not out:
        raise BadInputError(f"--batch {text!r} names no batch size", hint="e.g. --batch 1,8,32")
    return out


@click.command(name="bench")
@click.argument("models", nargs=-1, required=False, type=click.Path(dir_okay=False))
@click.option("--batch", "batch_text", default="1", show_default=True, metavar="N[,N...]",
              help="Batch sizes to time, comma separated.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0),
              help="Untimed runs before timing each batch size.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Timed runs per batch size (default 50). Exclusive with --duration.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Time each batch size for this many seconds (at least 10 runs). Exclusive with --iterations.")
@click.option("--data", "data_root", type=click.Path(file_okay=False, exists=True), default=None,
              help="COVID-QU-Ex folder: adds accuracy (classifier) or Dice (segmenter) on --split.")
@click.option("--split", default=None, help="Data split for --data and --end-to-end [default: Val].")
@click.option("--limit-per-class", type=click.IntRange(min=1), default=None,
              help="Use at most N images per class of the split.")
@click.option("--end-to-end", is_flag=True,
              help="Also time decode + preprocess + inference + postprocess per image file "
                   "(on --data images, else on a few synthetic ones).")
@click.option("--backend", type=click.Choice(RUNNER_BACKEND_CHOICES), default="auto", show_default=True,
              help="Runtime to use; auto picks from the file and the machine.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads: ONNX Runtime intra-op threads, or torch threads for a checkpoint.")
@click.option("--folder", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also run 'infer FOLDER' end to end with the classifier and segmenter given (or the "
                   "defaults) and report images per second (decode, preprocess, both models, masks).")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON on stdout.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write bench.json, bench.md and bench.png into this folder.")
def command(models, batch_text, warmup, iterations, duration_s, data_root, split, limit_per_class,
            end_to_end, backend, threads, folder, as_json, report_dir):
    """Time checkpoints, ONNX models and engines the way trtexec does - warm-up, then many runs,
    throughput and latency min / mean / median / p90 / p95 / p99 (plus H2D / compute / D2H on a
    GPU) with a warning when results are unstable - and print one comparison table of
    model | backend | precision | size MB | batch | metric | ms/image | p50 | p99 | FPS.
    MODEL is a checkpoint (.pt, run with torch), an ONNX model or an engine with its manifest.
    Without MODEL it times the defaults: the engines 'covidedge build-engine' built in build/
    for this machine, else the shipped models on ONNX Runtime (one line says which).
    Batch sizes outside an engine's batch range are skipped with a note.

    \b
    Examples:
      covidedge bench
      covidedge bench build/cls-best.fp16.trt10.3.sm87.engine build/cls-best.int8.trt10.3.sm87.engine \\
          --batch 1,8 --duration 5
      covidedge bench runs/cls/best.pt build/cls-best.fp32.onnx --data COVID-QU-Ex --limit-per-class 50 \\
          --report out/bench
    """
    from covidedge.bench import BenchOptions, run_bench

    batches = parse_batches(batch_text)
    if not models:
        from covidedge.runtime.defaults import default_models

        chosen = default_models(backend=backend)
        click.echo(chosen.line, err=True)
        models = [str(p) for p in chosen.paths()]
    options = BenchOptions(warmup=warmup, iterations=iterations, duration_s=duration_s, data_root=data_root,
                           split=split, limit_per_class=limit_per_class, end_to_end=end_to_end,
                           backend=backend, threads=threads, folder=folder)
    report = run_bench(list(models), batches, options, progress=True,
                       # the text report repeats every note; with --json they go to stderr as they happen
                       notify=(lambda msg: click.echo(msg, err=True)) if as_json else None)
    paths = None
    if report_dir:
        paths = report.save(report_dir)
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(report.to_text())
    if paths:
        written = ", ".join(str(p) for p in paths.values() if p is not None)
        click.echo(f"report written: {written}", err=True)
    if not report.rows:
        raise BadInputError("nothing was timed: every batch size was outside the models' batch ranges",
                            hint="pick --batch sizes the engines were built for")
