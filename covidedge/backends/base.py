"""The one Runner interface every backend implements (TensorRT, ONNX Runtime, torch).

A runner is created cheaply, does its heavy work in ``activate()`` and frees it in
``deactivate()``; it is also a context manager. ``infer`` takes an NCHW float32 batch (or a
``{input_name: array}`` feed) and returns ``{output_name: array}``. Input checks name the
tensor, what arrived and what was expected.
"""

from __future__ import annotations

import time
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
