"""Latency and throughput reports for checkpoints, ONNX models and engines.

``run_bench(models, batches)`` opens each model with ``covidedge.runtime.load``, optionally scores
it on a data split (``covidedge.evaluation.run.evaluate``), times it at each batch size
(``covidedge.bench.timing.time_runner``) and returns a ``BenchReport`` (``covidedge.bench.report``)
that prints as trtexec-like blocks plus one comparison table and saves JSON, Markdown and a plot.
Nothing here imports torch unless a checkpoint is benchmarked.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from covidedge import backends
from covidedge.bench.report import BenchReport, BenchRow, file_size_mb
from covidedge.bench.timing import (
    EndToEndStats, LatencyStats, UNSTABLE_CV, percentile, summarize, time_end_to_end, time_runner,
)
from covidedge.errors import BadInputError, UsageError
from covidedge.spec import MAX_BATCH, Options

__all__ = ["run_bench", "BenchOptions", "batch_skip_reason", "metric_from_evaluation", "BenchReport", "BenchRow",
           "LatencyStats", "EndToEndStats", "time_runner", "time_end_to_end", "percentile",
           "summarize", "UNSTABLE_CV"]

#: Images per class decoded for ``end_to_end`` timing when no ``limit_per_class`` is given.
END_TO_END_PER_CLASS = 4


def batch_skip_reason(runner, batch: int) -> Optional[str]:
    """Why ``runner`` cannot take ``batch`` images per call (its engine / graph batch range), or None."""
    lo = getattr(runner, "min_batch", 1) or 1
    hi = getattr(runner, "max_batch", None)
    if lo <= batch and (hi is None or batch <= hi):
        return None
    if hi == lo:
        how = (f"it has a fixed batch of {lo}; export with a dynamic batch or build an engine "
               f"for batch {batch} to time it")
    elif batch > (hi or batch):
        how = f"rebuild the engine with --max-batch {batch} to time it"
    else:
        how = f"rebuild the engine with --min-batch {batch} to time it"
    return f"batch {batch} is outside this model's batch range {lo}..{'' if hi is None else hi}; {how}"


def metric_from_evaluation(report) -> Dict[str, object]:
    """The one number a benchmark table shows from a covidedge.evaluation.EvaluationReport:
    accuracy for a classifier; infection Dice over COVID-19 images for a segmenter (lung Dice
    alongside, and in its place when the split had no COVID-19 image). Returns {"name", "value",
    "split", "n_images", ...}."""
    metrics = dict(getattr(report, "metrics", None) or {})
    extra = {"split": getattr(report, "split", None), "n_images": getattr(report, "num_images", None)}
    if getattr(report, "task", None) == "classifier":
        return {"name": "accuracy", "value": _number(metrics.get("accuracy")), **extra}
    lungs = _number(metrics.get("lung_dice"))
    infection = _number(metrics.get("infection_dice"))
    if infection is not None:
        return {"name": "infection Dice", "value": infection, "lung_dice": lungs, **extra}
    return {"name": "lung Dice", "value": lungs, **extra}


def _number(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def _end_to_end_files(data_root, split: str, limit_per_class: Optional[int],
                      tmp: List) -> Tuple[List[Path], str]:
    """Image files to time end to end: from the data split, or a few synthetic ones."""
    per_class = limit_per_class or END_TO_END_PER_CLASS
    if data_root is None:
        from covidedge.data.synth import make_synthetic_dataset

        tmpdir = tempfile.TemporaryDirectory(prefix="covidedge-bench-")
        tmp.append(tmpdir)
        root = make_synthetic_dataset(tmpdir.name, per_class=per_class, seed=0, splits=(split,))
        what = f"{3 * per_class} synthetic 256x256 PNGs (pass --data for real images)"
    else:
        root, what = data_root, None
    from covidedge.data.covidqu import CovidQuDataset

    ds = CovidQuDataset(root)
    files, counts = [], {}
    for s in ds.samples(split):
        if counts.get(s.label, 0) < per_class:
            counts[s.label] = counts.get(s.label, 0) + 1
            files.append(s.image)
    return files, what or f"{len(files)} images of {split} in {data_root}"


def _thread_options(backend: str, threads: Optional[int]) -> Dict[str, object]:
    """Options for covidedge.runtime.load: the runner option that caps the backend's CPU threads
    (ONNX Runtime's intra-op count, OpenVINO's inference count), if it has one."""
    option = backends.get(backend).thread_option
    if threads is None or option is None:
        return {}
    return {option: int(threads)}


#: Bounds on what one bench run may ask for: a batch in images, a duration per batch size in
#: seconds, timed runs per batch size. Beyond them a run would exhaust memory or never end.
MAX_DURATION_S = 3600.0
MAX_ITERATIONS = 1_000_000


@dataclass(frozen=True)
class BenchOptions(Options):
    """How a bench run times: ``warmup`` untimed runs, then ``iterations`` timed runs or
    ``duration_s`` seconds per batch size (exclusive); ``data_root`` (with ``split``, default
    Val, and ``limit_per_class``) adds the metric column; ``end_to_end`` adds file-to-result
    timing; ``backend`` and ``threads`` (CPU threads, where the backend takes them) open the models.
    ``folder`` (images, searched recursively) adds what ``covidedge infer FOLDER`` achieves end to
    end with the classifier and segmenter among the models: images per second from files to
    masks (decode, preprocess, both models, masks; no files written)."""

    warmup: int = 10
    iterations: Optional[int] = None
    duration_s: Optional[float] = None
    data_root: Any = None
    split: Optional[str] = None
    limit_per_class: Optional[int] = None
    end_to_end: bool = False
    backend: str = "auto"
    threads: Optional[int] = None
    folder: Any = None

    def validate(self) -> None:
        if self.iterations is not None and self.duration_s is not None:
            raise UsageError("--iterations and --duration are exclusive: give one or the other",
                             hint="--iterations N counts timed runs, --duration S times for S seconds")
        if self.data_root is None and self.limit_per_class is not None:
            raise UsageError("--limit-per-class picks images of --data; give --data DIR or drop it")
        if self.data_root is None and self.split is not None and not self.end_to_end:
            raise UsageError(f"--split {self.split} picks images of --data (or --end-to-end); give --data DIR "
                             "or drop it")


def run_bench(models: Sequence, batches: Sequence[int] = (1,), options: Optional[BenchOptions] = None, *,
              progress: bool = False, notify: Optional[Callable[[str], None]] = None,
              **overrides: Any) -> BenchReport:
    """Benchmark each model file at each batch size, as ``options`` (a :class:`BenchOptions`, its
    fields also accepted as keywords) says, and return the report.

    With no ``models``, the default models for this machine
    (covidedge.runtime.defaults.default_models; its line goes to ``notify``).
    ``iterations`` and ``duration_s`` are exclusive (UsageError when both are given), and so are
    ``split`` (default Val) / ``limit_per_class`` without ``data_root`` (``split`` also picks the
    ``end_to_end`` images). A batch
    size outside a model's batch range (an engine built for 1..8, a static-batch graph) is not
    timed: a note goes to ``notify`` and ``report.skipped``. With ``data_root`` the metric column
    comes from covidedge.evaluation.run.evaluate on ``split`` (``limit_per_class`` images per class
    when given); ``end_to_end`` adds file-to-result timing per image on that split (or on a few
    synthetic images without ``data_root``).
    """
    o = BenchOptions.of(options, **overrides)
    warmup, iterations, duration_s, data_root = o.warmup, o.iterations, o.duration_s, o.data_root
    limit_per_class, end_to_end, backend, threads = o.limit_per_class, o.end_to_end, o.backend, o.threads
    split = o.split or "Val"
    say = notify or (lambda msg: None)
    if not models:  # the default models for this machine, said in one line
        from covidedge.runtime.defaults import default_models

        chosen = default_models(backend=backend)
        say(chosen.line)
        models = [str(p) for p in chosen.paths()]
    if not models:
        raise BadInputError("no model to benchmark", hint="pass a checkpoint, an ONNX model or an engine")
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise BadInputError(f"batch sizes {batches} must be positive integers", hint="e.g. --batch 1,8,32")
    too_big = [b for b in batches if b > MAX_BATCH]
    if too_big:
        raise BadInputError(f"batch size {too_big[0]} is above {MAX_BATCH} images (a 256-px batch of "
                            f"{too_big[0]} needs {too_big[0] * 256 * 256 * 4 / 2**30:.1f} GiB for its input alone)",
                            hint=f"time batches up to {MAX_BATCH}")
    if duration_s is not None and not (math.isfinite(float(duration_s)) and 0 < float(duration_s) <= MAX_DURATION_S):
        raise BadInputError(f"--duration {duration_s} s is outside (0, {MAX_DURATION_S:g}] s",
                            hint="time each batch size for a few seconds, e.g. --duration 5")
    if iterations is not None and not 1 <= int(iterations) <= MAX_ITERATIONS:
        raise BadInputError(f"--iterations {iterations} is outside 1..{MAX_ITERATIONS}",
                            hint="e.g. --iterations 50, or --duration S")
    if int(warmup) < 0 or int(warmup) > MAX_ITERATIONS:
        raise BadInputError(f"--warmup {warmup} is outside 0..{MAX_ITERATIONS}")
    if threads is not None and int(threads) < 1:
        raise BadInputError(f"--threads {threads} is not positive")
    from covidedge.runtime import load
    from covidedge.runtime.select import backend_of

    report = BenchReport.for_this_machine(settings={
        "warmup": warmup, "iterations": iterations, "duration_s": duration_s, "batches": batches,
        "backend": backend, "threads": threads, "data_root": None if data_root is None else str(data_root),
        "split": split if (data_root is not None or end_to_end) else None,
        "limit_per_class": limit_per_class, "end_to_end": end_to_end})
    from covidedge.progress import bar as progress_bar

    tmp: List = []
    bar = progress_bar(total=len(models) * len(batches), desc="bench", unit="run", enabled=progress)
    try:
        for model in models:
            path = os.fspath(model)
            name = Path(path).name
            chosen = backends.get(backend_of(path, backend))
            runner = load(path, backend=backend, **_thread_options(chosen.name, threads))
            if threads is not None and chosen.threads_note:
                say(f"note: {name}: {chosen.threads_note}")
                report.notes.append(f"{name}: {chosen.threads_note}")
            with chosen.threads(threads), runner:
                metric = None
                if data_root is not None:
                    from covidedge.evaluation import evaluate

                    evaluation = evaluate(runner, data_root, split=split, limit_per_class=limit_per_class,
                                          progress=progress)
                    metric = metric_from_evaluation(evaluation)
                e2e = None
                if end_to_end:
                    files, what = _end_to_end_files(data_root, split, limit_per_class, tmp)
                    e2e = time_end_to_end(runner, files, warmup=min(2, len(files)))
                    report.notes.append(f"{name}: end-to-end timing over {what}")
                first = True
                for batch in batches:
                    reason = batch_skip_reason(runner, batch)
                    if reason:
                        say(f"skipped: {name} batch {batch}: {reason}")
                        report.skip(name, batch, reason)
                        bar.update(1)
                        continue
                    stats = time_runner(runner, batch, warmup=warmup, iterations=iterations,
                                        duration_s=duration_s)
                    row = BenchRow(
                        model=name, path=path, task=runner.spec.task, backend=runner.backend,
                        precision=runner.compute_precision, batch=batch, latency=stats,
                        size_mb=file_size_mb(path), settings=runner.describe(),
                        end_to_end=e2e if first else None)
                    if metric is not None and metric.get("value") is not None:
                        row.metric_name = str(metric["name"])
                        row.metric_value = float(metric["value"])
                        row.metric_detail = {k: v for k, v in metric.items() if k not in ("name", "value")}
                    report.add(row)
                    if stats.warning:
                        say(f"warning: {name} batch {batch}: {stats.warning}")
                    first = False
                    bar.update(1)
    finally:
        bar.close()
        for t in tmp:
            t.cleanup()
    if o.folder is not None:
        line = folder_throughput(models, o.folder, backend)
        say(line)
        report.notes.append(line)
    return report


def folder_throughput(models: Sequence, folder, backend: str = "auto", batch_size: int = 8) -> str:
    """One line: images per second of ``covidedge infer FOLDER`` end to end (decode, preprocess,
    the classifier and the segmenter among ``models``, masks; nothing written) over ``folder``."""
    import time

    from covidedge.runtime import load
    from covidedge.runtime.run import run_inference

    by_task: Dict[str, str] = {}
    for m in models:
        with load(os.fspath(m), backend=backend) as r:
            by_task.setdefault(r.spec.task, os.fspath(m))
    t0 = time.perf_counter()
    summary = run_inference([os.fspath(folder)], classifier=by_task.get("classifier"),
                            segmenter=by_task.get("segmenter"), batch_size=batch_size, backend=backend)
    seconds = time.perf_counter() - t0
    what = " and ".join(f"{Path(p).name}" for p in by_task.values())
    return (f"infer {folder} end to end: {summary.ok} images in {seconds:.1f} s = {summary.ok / seconds:.1f} "
            f"images/s ({what}; decode, preprocess, models, masks; batch {batch_size}, decode prefetched)")
