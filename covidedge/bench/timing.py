"""Honest latency measurement: warm-up, then many timed runs, then order statistics.

``time_runner`` times one Runner at one batch size the way trtexec reports an engine: wall-clock
time per ``infer`` call with ``time.perf_counter`` (plus the device stages h2d / compute / d2h that
GPU runners measure with CUDA events), summarised as min / mean / median / p90 / p95 / p99 / max
in milliseconds per batch, milliseconds per image, throughput in images per second and the
coefficient of variation, with a warning when the runs vary by more than 10 %.

``time_end_to_end`` times what a user waits for per image file: decode + preprocess + inference +
postprocess, and reports per-stage medians.

Percentiles use linear interpolation between the two nearest ranks (numpy's default "linear"
method): for sorted samples s of length n, the q-th percentile is at position (n - 1) * q / 100.
The math is plain Python so that it can be checked by hand.
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from covidedge.errors import BadInputError, UsageError

#: Coefficient of variation (standard deviation / mean of the per-batch latency) above which a
#: measurement is flagged unstable: 0.10 = 10 %.
UNSTABLE_CV = 0.10

#: Timed runs made when neither ``iterations`` nor ``duration_s`` is given, and the least number
#: of runs a ``duration_s`` measurement makes however slow the model is.
DEFAULT_ITERATIONS = 50
MIN_ITERATIONS = 10

#: Percentiles reported for every distribution.
PERCENTILES = (50, 90, 95, 99)

#: Stages of one image in ``time_end_to_end``, in order.
END_TO_END_STAGES = ("decode", "preprocess", "inference", "postprocess", "total")


# -- statistics (pure Python) -------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation between the two
    nearest ranks: position (n - 1) * q / 100 in the sorted values."""
    if not values:
        raise BadInputError("cannot take a percentile of no values", hint="time at least one run")
    if not 0.0 <= q <= 100.0:
        raise BadInputError(f"percentile {q} is outside 0..100")
    s = sorted(float(v) for v in values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise BadInputError("cannot average no values", hint="time at least one run")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (divides by n - 1); 0.0 for a single value."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """n, min, mean, median, p90, p95, p99, max, std and cv (std / mean, a fraction) of ``values``."""
    m = mean(values)
    sd = stdev(values)
    return {
        "n": len(values), "min": float(min(values)), "mean": m, "median": percentile(values, 50),
        "p90": percentile(values, 90), "p95": percentile(values, 95), "p99": percentile(values, 99),
        "max": float(max(values)), "std": sd, "cv": sd / m if m > 0 else 0.0,
    }


def stability_warning(cv: float, threshold: float = UNSTABLE_CV) -> Optional[str]:
    """A one-line warning when the coefficient of variation exceeds ``threshold``, else None."""
    if cv <= threshold:
        return None
    return (f"unstable timing: coefficient of variation {cv * 100:.1f} % is above the "
            f"{threshold * 100:.0f} % threshold; close other programs, lock the clocks "
            "(jetson_clocks / nvidia-smi --lock-gpu-clocks) or run longer (--duration)")


# -- one runner, one batch size -----------------------------------------------------------------
@dataclass
class LatencyStats:
    """Latency of one runner at one batch size. Times are milliseconds per batch unless the name
    says otherwise; ``throughput`` is images per second over all timed runs."""

    batch: int
    n: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float
    ms_per_image: float
    throughput: float
    warmup: int
    total_s: float
    unstable: bool = False
    warning: Optional[str] = None
    #: Device stages the runner measured (h2d / compute / d2h on GPUs): name -> summarize() dict.
    stages: Dict[str, Dict[str, float]] = field(default_factory=dict)
    #: Every timed run (ms per batch), in order; kept for plots and re-analysis.
    samples_ms: List[float] = field(default_factory=list)

    @property
    def batches_per_s(self) -> float:
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else 0.0

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], batch: int, *, warmup: int = 0,
                     stages: Optional[Dict[str, Sequence[float]]] = None) -> "LatencyStats":
        """Summarise per-batch times (ms). ms per image is the median divided by the batch;
        throughput is images / s over the summed run times (batch * n / total)."""
        if batch < 1:
            raise BadInputError(f"batch size {batch} is not positive")
        s = summarize(samples_ms)
        total_ms = math.fsum(samples_ms)
        warning = stability_warning(s["cv"])
        return cls(
            batch=int(batch), n=s["n"], min_ms=s["min"], mean_ms=s["mean"], median_ms=s["median"],
            p90_ms=s["p90"], p95_ms=s["p95"], p99_ms=s["p99"], max_ms=s["max"], std_ms=s["std"],
            cv=s["cv"], ms_per_image=s["median"] / batch,
            throughput=batch * s["n"] * 1000.0 / total_ms if total_ms > 0 else 0.0,
            warmup=int(warmup), total_s=total_ms / 1000.0, unstable=warning is not None,
            warning=warning,
            stages={k: summarize(v) for k, v in (stages or {}).items() if v},
            samples_ms=[float(v) for v in samples_ms],
        )

    def to_dict(self, samples: bool = True) -> Dict[str, Any]:
        d = asdict(self)
        d["batches_per_s"] = self.batches_per_s
        if not samples:
            d.pop("samples_ms")
        return d


def _check_budget(iterations: Optional[int], duration_s: Optional[float], warmup: int) -> None:
    if iterations is not None and duration_s is not None:
        raise UsageError("iterations and duration are exclusive: give one or the other",
                         hint="--iterations N counts runs, --duration S times for S seconds")
    if iterations is not None and iterations < 1:
        raise BadInputError(f"iterations {iterations} is not positive")
    if duration_s is not None and not duration_s > 0:
        raise BadInputError(f"duration {duration_s} s is not positive")
    if warmup < 0:
        raise BadInputError(f"warm-up {warmup} is negative")


def sample_batch(spec, batch: int, seed: int = 0) -> np.ndarray:
    """A deterministic float32 batch in [0, 1) of the spec's input shape (timing does not depend on
    pixel values for these models, but NaN-free realistic ranges keep every backend on its fast path)."""
    shape = spec.input_shape(batch)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def time_callable(fn: Callable[[], Any], batch: int, *, warmup: int = 10,
                  iterations: Optional[int] = None, duration_s: Optional[float] = None,
                  stage_reader: Optional[Callable[[], Dict[str, float]]] = None) -> LatencyStats:
    """Time ``fn()`` (which processes one batch of ``batch`` images): ``warmup`` untimed calls,
    then ``iterations`` timed calls, or as many as fit in ``duration_s`` seconds (at least
    MIN_ITERATIONS). ``stage_reader()`` returns the device stage times of the last call (ms).
    The garbage collector is paused while timing so its pauses do not land in one sample."""
    _check_budget(iterations, duration_s, warmup)
    if iterations is None and duration_s is None:
        iterations = DEFAULT_ITERATIONS
    for _ in range(warmup):
        fn()
    samples: List[float] = []
    stages: Dict[str, List[float]] = {}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
            if stage_reader is not None:
                for k, v in (stage_reader() or {}).items():
                    if k != "total" and v is not None:
                        stages.setdefault(k, []).append(float(v))
            if iterations is not None:
                if len(samples) >= iterations:
                    break
            elif len(samples) >= MIN_ITERATIONS and time.perf_counter() - start >= duration_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return LatencyStats.from_samples(samples, batch, warmup=warmup, stages=stages)


def time_alternating(fns: Dict[str, Callable[[], Any]], batch: int, *, rounds: int = 5, warmup: int = 2,
                     iterations: int = 5) -> Dict[str, LatencyStats]:
    """Time several callables fairly: ``rounds`` rounds, each running every callable in turn
    for ``iterations`` timed calls (after ``warmup`` untimed ones in the first round), so a
    slow phase of the machine (another process, a clock change) lands on all of them alike.
    Returns each name's LatencyStats over all its timed calls."""
    if rounds < 1 or iterations < 1:
        raise BadInputError(f"rounds {rounds} and iterations {iterations} must be >= 1")
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            stats = time_callable(fn, batch, warmup=warmup if r == 0 else 0, iterations=iterations)
            samples[name] += stats.samples_ms
    return {name: LatencyStats.from_samples(v, batch, warmup=warmup) for name, v in samples.items()}


def time_runner(runner, batch: int, *, warmup: int = 10, iterations: Optional[int] = None,
                duration_s: Optional[float] = None, inputs: Optional[np.ndarray] = None) -> LatencyStats:
    """Latency of ``runner.infer`` at ``batch`` images per call.

    ``inputs`` is the NCHW float32 batch to feed (its first axis must equal ``batch``); by default
    a deterministic random batch of the runner's input shape. An inactive runner is activated for
    the measurement and deactivated afterwards. ``iterations`` and ``duration_s`` are exclusive;
    with neither, DEFAULT_ITERATIONS runs are timed.
    """
    _check_budget(iterations, duration_s, warmup)
    if int(batch) < 1:
        raise BadInputError(f"batch size {batch} is not positive")
    batch = int(batch)
    if inputs is None:
        inputs = sample_batch(runner.spec, batch)
    elif not isinstance(inputs, np.ndarray) or inputs.ndim != 4 or inputs.shape[0] != batch:
        got = getattr(inputs, "shape", type(inputs).__name__)
        raise BadInputError(f"timing inputs have shape {got}, expected a batch of {batch} NCHW images")
    was_active = runner.is_active
    if not was_active:
        runner.activate()
    try:
        return time_callable(lambda: runner.infer(inputs), batch, warmup=warmup,
                             iterations=iterations, duration_s=duration_s,
                             stage_reader=lambda: runner.last_timings_ms)
    finally:
        if not was_active:
            runner.deactivate()


# -- end to end from files ----------------------------------------------------------------------
@dataclass
class EndToEndStats:
    """Per-image time from a file on disk to a result, per stage (ms): decode, preprocess,
    inference, postprocess and their total; ``images_per_s`` is 1000 / mean total."""

    n_images: int
    stages: Dict[str, Dict[str, float]]
    images_per_s: float
    source: str
    warmup: int

    def median(self, stage: str) -> float:
        return self.stages[stage]["median"]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["medians_ms"] = {k: v["median"] for k, v in self.stages.items()}
        return d


def _pipeline_stage_times(result) -> Dict[str, float]:
    for attr in ("timings_ms", "timings"):
        t = getattr(result, attr, None)
        if isinstance(t, dict):
            return {k: float(v) for k, v in t.items() if isinstance(v, (int, float))}
    return {}


def time_end_to_end(target, files: Iterable, *, warmup: int = 1, repeats: int = 1,
                    threshold: Optional[float] = None) -> EndToEndStats:
    """Time each image of ``files`` from disk to result, one image at a time.

    ``target`` is a Pipeline-like object with ``predict(path)`` whose results carry ``timings_ms``
    per stage (its own threshold applies; a different ``threshold`` is refused), or a Runner, which
    is timed inside a :class:`covidedge.runtime.pipeline.Pipeline` made for it (decode, the input
    quality check, preprocessing, inference, then the top class or masks thresholded at
    ``threshold`` and resized back to the image size: what ``infer`` does; ``threshold`` defaults
    to 0.5 and applies to a segmenter runner only). A fixed-batch engine gets the image padded to
    its batch, as the pipeline does. ``warmup`` images are run untimed first; each file is timed
    ``repeats`` times.
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise BadInputError("no image files to time end to end", hint="pass --data DIR with images")
    if repeats < 1 or warmup < 0:
        raise BadInputError(f"repeats {repeats} / warm-up {warmup} must be >= 1 / >= 0")
    per_stage: Dict[str, List[float]] = {k: [] for k in END_TO_END_STAGES}

    if hasattr(target, "predict") and not hasattr(target, "infer"):
        source, pipe = "pipeline", target
        if threshold is not None and threshold != getattr(target, "threshold", None):
            raise UsageError(f"threshold={threshold!r} does not apply to a pipeline, which keeps its "
                             f"own ({getattr(target, 'threshold', None)})",
                             hint="set the threshold when making the pipeline")
    else:
        from covidedge.runtime.pipeline import Pipeline

        source, task = "runner", target.spec.task
        if threshold is not None and task != "segmenter":
            raise UsageError(f"threshold={threshold!r} applies to a segmenter; this runner is a {task}")
        pipe = Pipeline(**{task: target}, threshold=threshold)  # leaves an active runner active

    def one(path):
        t0 = time.perf_counter()
        result = pipe.predict(path)
        total = (time.perf_counter() - t0) * 1e3
        times = _pipeline_stage_times(result)
        times["total"] = total
        return times
    activate = getattr(pipe, "__enter__", None)
    stop = getattr(pipe, "__exit__", None)

    if activate is not None:
        activate()
    try:
        for i in range(warmup):
            one(files[i % len(files)])
        for _ in range(repeats):
            for path in files:
                for k, v in one(path).items():
                    if k in per_stage:
                        per_stage[k].append(v)
    finally:
        if stop is not None:
            stop(None, None, None)
    stages = {k: summarize(v) for k, v in per_stage.items() if v}
    total_mean = stages["total"]["mean"]
    return EndToEndStats(n_images=len(per_stage["total"]), stages=stages,
                         images_per_s=1000.0 / total_mean if total_mean > 0 else 0.0,
                         source=source, warmup=warmup)
