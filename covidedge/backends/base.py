"""The one Runner interface every backend implements (TensorRT, ONNX Runtime, OpenVINO, torch).

A runner is created cheaply, does its heavy work in ``activate()`` and frees it in
``deactivate()``; it is also a context manager. ``infer`` takes an NCHW float32 batch (or a
``{input_name: array}`` feed) and returns ``{output_name: array}``. Input checks name the
tensor, what arrived and what was expected.

Two things every backend shares live here too: :func:`infer_fitted` fits a batch of any size
to a runner's batch range, and :func:`self_check` accepts or deletes an engine just built by
comparing it with ONNX Runtime on its source graph.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.spec import ModelSpec

Feed = Union[np.ndarray, Mapping[str, np.ndarray]]


class Runner:
    """Base class. Subclasses set ``backend`` and implement ``_activate``, ``_infer``,
    ``_deactivate``; they may narrow the batch range with ``min_batch`` / ``max_batch``."""

    backend: str = "base"

    def __init__(self, spec: ModelSpec, source: object, precision: str = "fp32",
                 min_batch: int = 1, max_batch: Optional[int] = None):
        self.spec = spec
        self.source = str(source)
        self.precision = precision
        self.min_batch = int(min_batch)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.is_active = False
        #: Milliseconds of the last ``infer`` call, per stage the backend can see
        #: (always "total"; GPU backends add "h2d", "compute", "d2h").
        self.last_timings_ms: Dict[str, float] = {}

    # -- life cycle -----------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference ------------------------------------------------------------------------
    def check_input(self, feed: Feed) -> np.ndarray:
        """Return the input batch as a C-contiguous float32 NCHW array, or raise BadInputError
        naming the tensor, what arrived and what was expected."""
        name = self.spec.input_name
        if isinstance(feed, Mapping):
            extra = sorted(set(feed) - {name})
            if name not in feed or extra:
                raise BadInputError(
                    f"feed has tensors {sorted(feed)}, expected exactly ['{name}']",
                    path=self.source)
            x = feed[name]
        else:
            x = feed
        if not isinstance(x, np.ndarray):
            raise BadInputError(f"input '{name}' is a {type(x).__name__}, expected a numpy array",
                                path=self.source)
        expected = self.spec.input_shape()
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(expected[1:]):
            want = "(N, " + ", ".join(str(v) for v in expected[1:]) + ")"
            raise BadInputError(f"input '{name}' has shape {tuple(x.shape)}, expected {want}",
                                path=self.source, hint="preprocess images with covidedge.data.preprocess")
        if x.dtype != np.float32:
            if not np.issubdtype(x.dtype, np.floating):
                raise BadInputError(f"input '{name}' has dtype {x.dtype}, expected float32",
                                    path=self.source)
            x = x.astype(np.float32)
        n = x.shape[0]
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            hi = "" if self.max_batch is None else str(self.max_batch)
            raise BadInputError(
                f"input '{name}' has batch {n}, this model accepts batch {self.min_batch}..{hi}",
                path=self.source, hint="split the batch or rebuild with a larger --max-batch")
        if not np.isfinite(x).all():
            raise BadInputError(f"input '{name}' contains NaN or infinite values", path=self.source)
        return np.ascontiguousarray(x)

    def infer(self, feed: Feed) -> Dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeFailure("runner is not active; call activate() or use it in a 'with' block",
                                 path=self.source)
        x = self.check_input(feed)
        t0 = time.perf_counter()
        out = self._infer(x)
        total = (time.perf_counter() - t0) * 1e3
        timings = dict(getattr(self, "_stage_ms", {}) or {})
        timings["total"] = total
        self.last_timings_ms = timings
        return out

    def describe(self) -> Dict[str, Any]:
        """What this runner is, for reports: backend, precision, device and settings."""
        return {"backend": self.backend, "precision": self.precision, "source": self.source,
                "task": self.spec.task, "batch_range": [self.min_batch, self.max_batch]}

    # -- to implement ---------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


# -- shared by every backend -----------------------------------------------------------------
def infer_fitted(runner: Runner, batch: np.ndarray) -> Dict[str, np.ndarray]:
    """``runner.infer`` for a batch of any size: it runs in pieces of at most
    ``runner.max_batch`` images, and a piece below ``runner.min_batch`` (a fixed-batch engine)
    is padded up to it with copies of its last image (an image like the others, never a blank
    one a model may treat oddly). The padding is dropped from the outputs, which come back
    joined in order along the batch axis, one row per image of ``batch``."""
    n = int(batch.shape[0])
    lo = max(1, int(getattr(runner, "min_batch", 1) or 1))
    hi = getattr(runner, "max_batch", None)
    step = n if hi is None else max(1, int(hi))
    if n == 0 or lo <= n <= step:  # as it is (an empty batch: the runner says what it accepts)
        return runner.infer(batch)
    pieces = []
    for i in range(0, n, step):
        x = batch[i:i + step]
        m = int(x.shape[0])
        if m < lo:
            x = np.concatenate([x, np.repeat(x[-1:], lo - m, axis=0)], axis=0)
        pieces.append({k: np.asarray(v)[:m] for k, v in runner.infer(x).items()})
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces], axis=0) for k in pieces[0]}


#: Seed of the batch a build's self-check runs: uniform noise in [0, 1), the input range.
SELF_CHECK_SEED = 0


def self_check(built: Runner, source_onnx, precision: str, limits: Mapping[str, float], *,
               batch: int, out, engine_name: str) -> Dict[str, Any]:
    """Accept or delete an engine just built: run ``built`` (a runner on the engine file) and
    ONNX Runtime (CPU) on its source graph ``source_onnx`` with one seeded batch of ``batch``
    images, and compare the probabilities.

    Within ``limits[precision]`` (largest |probability| difference) the engine file moves to
    ``out`` (it may be there already) and the numbers for the manifest are returned. Otherwise,
    or when either side fails to run, the engine file is deleted and RuntimeFailure (or the
    runner's own error) is raised; ``engine_name`` ('TensorRT') names the engine in the message."""
    from covidedge.backends.onnxruntime import OrtRunner

    spec = built.spec
    engine = Path(built.source)
    x = np.random.default_rng(SELF_CHECK_SEED).random((int(batch), spec.in_chans, *spec.input_size),
                                                       dtype=np.float32)
    try:
        with built as run, OrtRunner(source_onnx, spec=spec) as reference:
            got, ref = run.infer(x), reference.infer(x)
    except BaseException:
        engine.unlink(missing_ok=True)
        raise
    diffs = {k: float(np.max(np.abs(ref[k].astype(np.float64) - got[k].astype(np.float64))))
             for k in spec.output_names}
    prob, limit = spec.output_names[1], float(limits[precision])
    if not np.isfinite(diffs[prob]) or diffs[prob] > limit:
        engine.unlink(missing_ok=True)
        raise RuntimeFailure(f"the {engine_name} engine's {prob} differ from ONNX Runtime's on its source "
                             f"graph by {diffs[prob]:.3g} (limit {limit:g} for {precision})", path=out)
    if engine.resolve() != Path(os.fspath(out)).resolve():
        os.replace(engine, out)
    return {"batch": int(batch), "max_abs_diff": diffs, "reference": "source ONNX graph, ONNX Runtime CPU"}


__all__ = ["Feed", "Runner", "infer_fitted", "self_check", "SELF_CHECK_SEED"]
