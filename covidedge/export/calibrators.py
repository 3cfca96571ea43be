"""int8 calibrators: how the range of every activation tensor is chosen from calibration images.

One small interface, one class per method, one factory, as ONNX Runtime's ``CalibraterBase``:

* :meth:`Calibrator.collect` takes activations, an iterable of ``{tensor name: ndarray}`` (one
  batch each; it may be called again with more), and keeps only running statistics, so memory
  stays at one batch of activations however large the calibration set is;
* :meth:`Calibrator.compute_ranges` returns ``{tensor name: (lowest, highest)}``;
* :func:`create_calibrator` builds one by its name in :data:`covidedge.spec.CALIBRATION_METHODS`
  and refuses an option the method cannot honour.

The methods: ``minmax`` (the values seen), ``entropy`` (the |x| threshold minimising KL
divergence, TensorRT's entropy calibration) and ``percentile`` (a percentile of |x|). The
histogram methods give thresholds on |x| clipped to the values seen, so one set of ranges serves
signed symmetric (TensorRT) and unsigned asymmetric (ONNX Runtime CPU) activations alike.
:func:`collect_ranges` runs a graph over a calibration stream and files a calibrator's ranges the
way ``onnxruntime.quantization.quantize_static`` reads them.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.export.options import KEYWORDS, OptionNames
from covidedge.spec import CALIBRATION_METHODS, check_choice

PathLike = Union[str, Path]
Range = Tuple[np.ndarray, np.ndarray]

#: The method used unless one is asked for.
DEFAULT_METHOD = "entropy"
#: Histogram bins for entropy / percentile calibration (TensorRT's entropy calibrator uses 2048;
#: with as few bins as int8 levels, 128, entropy could only pick the full range = minmax).
HISTOGRAM_BINS = 2048
#: int8 levels the entropy search quantizes a histogram into.
QUANTIZED_BINS = 128
#: The percentile of |x| kept by percentile calibration unless told otherwise.
DEFAULT_PERCENTILE = 99.99


# -- histograms ----------------------------------------------------------------------------------
class AbsHistogram:
    """A running histogram of |x| for one tensor, in a fixed number of bins (fractions of the
    largest |x| seen so far) plus its signed min and max.

    When a batch exceeds the range, the bin width grows by a whole factor and old bins merge,
    so the counts stay exact and the size stays ``bins``. Values below 1e-30 count as zero,
    so a tensor of (almost) only zeros never makes a degenerate range.
    """

    TINY = 1e-30

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.bins = int(bins)
        self.hist = np.zeros(self.bins, np.float64)
        self.width: Optional[float] = None  # bin width, set by the first non-zero batch
        self.zeros = 0.0                    # zeros seen before the first non-zero batch
        self.lo, self.hi = np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        a = np.asarray(x, np.float32).ravel()
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        self.lo = min(self.lo, float(a.min()))
        self.hi = max(self.hi, float(a.max()))
        a = np.abs(a)
        amax = float(a.max())
        if amax < self.TINY:
            if self.width is None:
                self.zeros += a.size
            else:
                self.hist[0] += a.size
            return
        if self.width is None:
            self.width = amax / self.bins
            self.hist[0] += self.zeros
        elif amax > self.width * self.bins:
            factor = int(np.ceil(amax / (self.width * self.bins)))
            self.hist = np.bincount(np.arange(self.bins) // factor, weights=self.hist,
                                    minlength=self.bins)
            self.width *= factor
        idx = np.minimum((a / self.width).astype(np.int64), self.bins - 1)
        self.hist += np.bincount(idx, minlength=self.bins)

    @property
    def empty(self) -> bool:
        """True while nothing but (near) zeros has been seen."""
        return self.width is None

    @property
    def edges(self) -> np.ndarray:
        return np.arange(self.bins + 1, dtype=np.float64) * (self.width or 0.0)

    def percentile(self, percent: float) -> float:
        """The ``percent`` percentile of |x|: the right edge of the bin where it falls."""
        if self.empty:
            return 0.0
        cdf = np.cumsum(self.hist) / self.hist.sum()
        idx = int(np.searchsorted(cdf, percent / 100.0 - 1e-12))
        return float(self.edges[min(idx + 1, self.bins)])

    def clipped(self, threshold: float) -> Tuple[float, float]:
        """(lowest, highest) for quantization: the seen min / max clipped to ±threshold."""
        if self.empty:  # nothing but (near) zeros: a zero range (scale 1 in ONNX Runtime)
            return 0.0, 0.0
        return max(self.lo, -threshold), min(self.hi, threshold)


def _smooth(p: np.ndarray, inside: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Rows of ``p`` (each summing to 1 over its ``inside`` bins) with the empty inside bins
    given ``eps`` and that mass taken evenly from the non-empty ones, so KL stays finite."""
    zeros = (p == 0) & inside
    n_zero = zeros.sum(axis=1, keepdims=True)
    n_nonzero = inside.sum(axis=1, keepdims=True) - n_zero
    take = np.where(n_nonzero > 0, eps * n_zero / np.maximum(n_nonzero, 1), 0.0)
    return np.where(inside, np.where(zeros, eps, p - take), 0.0)


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = QUANTIZED_BINS,
                      candidates: int = 256) -> float:
    """The |x| clipping threshold that minimises KL(P || Q) over a histogram of |x|.

    For a threshold at bin ``i``, P is the first ``i`` bins with everything above folded into
    the last one, and Q is those ``i`` bins merged into ``levels`` (the int8 magnitudes) and
    spread back evenly over each group's non-empty bins: the entropy calibration of 8-bit
    inference in TensorRT, with the first bin (exact zeros) levelled to the second as in
    NVIDIA's PyTorch quantization toolkit. About ``candidates`` thresholds are tried on an even
    grid, then every bin around the best one. Returns the threshold in the tensor's units.
    """
    hist = np.array(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    n = len(hist)
    if n > 1:
        # the first bin holds every exact zero (half a ReLU's outputs); left as is, that spike
        # dominates P and the search clips the real tail far too hard
        hist[0] = hist[1]
    total = hist.sum()
    if n <= levels or total <= 0:
        return float(edges[-1])
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    nonzero = hist > 0
    nzsum = np.concatenate([[0], np.cumsum(nonzero)])
    cols = np.arange(n)

    def kl_for(ii: np.ndarray) -> np.ndarray:
        ii = ii[:, None]                                       # (R, 1) thresholds in bins
        inside = cols[None, :] < ii                            # (R, n)
        p = np.where(inside, hist[None, :], 0.0)
        p[np.arange(len(ii)), ii[:, 0] - 1] += total - csum[ii[:, 0]]
        g = np.arange(levels + 1)[None, :]
        bounds = (g * ii) // levels                            # (R, levels + 1)
        gsum = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
        gnz = nzsum[bounds[:, 1:]] - nzsum[bounds[:, :-1]]
        per = np.where(gnz > 0, gsum / np.maximum(gnz, 1), 0.0)
        group = np.minimum((cols[None, :] * levels) // ii, levels - 1)
        q = np.where(inside & nonzero[None, :], np.take_along_axis(per, group, axis=1), 0.0)
        p = p / p.sum(axis=1, keepdims=True)
        qs = q.sum(axis=1, keepdims=True)
        q = np.where(qs > 0, q / np.where(qs > 0, qs, 1.0), 0.0)
        p, q = _smooth(p, inside), _smooth(q, inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(inside & (p > 0) & (q > 0), p * np.log(p / q), 0.0)
        return terms.sum(axis=1)

    grid = np.unique(np.linspace(levels, n, num=min(candidates, n - levels + 1)).astype(int))
    kl = kl_for(grid)
    best = int(grid[int(np.argmin(kl))])
    step = int(np.ceil((n - levels) / max(len(grid) - 1, 1)))
    fine = np.arange(max(levels, best - step), min(n, best + step) + 1)
    kl_fine = kl_for(fine)
    best = int(fine[int(np.argmin(kl_fine))])
    return float(edges[best])


# -- calibrators ---------------------------------------------------------------------------------
class Calibrator:
    """Chooses the quantization range of every tensor it is fed.

    Subclasses set :attr:`method` (a name in ``CALIBRATION_METHODS``), :attr:`options` (the
    keyword options their constructor takes), :attr:`ort_method` (the
    ``onnxruntime.quantization.CalibrationMethod`` their ranges are filed under) and implement
    :meth:`_add` and :meth:`_range`.
    """

    method: str = ""
    options: Tuple[str, ...] = ()
    ort_method: str = ""

    def __init__(self) -> None:
        self.batches_seen = 0
        self._tensors: Dict[str, Any] = {}

    def collect(self, batches: Iterable[Mapping[str, np.ndarray]]) -> None:
        """Add activations: each item is one batch, ``{tensor name: ndarray}``."""
        for activations in batches:
            for name, value in activations.items():
                self._add(name, np.asarray(value))
            self.batches_seen += 1

    def compute_ranges(self) -> Dict[str, Range]:
        """``{tensor name: (lowest, highest)}`` as float32 arrays, in tensor-name order."""
        if self.batches_seen == 0:
            raise BadInputError(f"{self.method} calibration collected no activations",
                                hint="feed it at least one batch of calibration images")
        return {name: self._range(name) for name in sorted(self._tensors)}

    def settings(self) -> Dict[str, Any]:
        """The options that shaped the ranges, as a graph's metadata records them."""
        return {}

    def _add(self, name: str, value: np.ndarray) -> None:
        raise NotImplementedError

    def _range(self, name: str) -> Range:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({opts})"


class MinMaxCalibrator(Calibrator):
    """The smallest and largest value seen; ``symmetric`` gives ±max|x| instead (what signed
    symmetric activations use). Ranges are one-element arrays, as ONNX Runtime's MinMax
    calibrator writes them."""

    method = "minmax"
    options = ("symmetric",)
    ort_method = "MinMax"

    def __init__(self, *, symmetric: bool = True):
        super().__init__()
        self.symmetric = bool(symmetric)

    def _add(self, name, value):
        seen = self._tensors.setdefault(name, [None, None])
        a = np.asarray(value, np.float32)
        if a.size == 0:
            return
        lo, hi = a.min(), a.max()
        seen[0] = lo if seen[0] is None else min(seen[0], lo)
        seen[1] = hi if seen[1] is None else max(seen[1], hi)

    def _range(self, name):
        lo, hi = self._tensors[name]
        if lo is None:
            lo = hi = np.float32(0.0)
        if self.symmetric:
            m = max(abs(lo), abs(hi))
            lo, hi = -m, m
        return np.array([lo], np.float32), np.array([hi], np.float32)

    def settings(self):
        return {"symmetric": self.symmetric}


class HistogramCalibrator(Calibrator):
    """A threshold on |x| chosen from a ``histogram_bins``-bin histogram per tensor (see
    :class:`AbsHistogram`); the range is the values seen clipped to ±threshold."""

    options = ("histogram_bins",)

    def __init__(self, *, histogram_bins: int = HISTOGRAM_BINS):
        super().__init__()
        try:
            bins = int(histogram_bins)
        except (TypeError, ValueError):
            raise BadInputError(f"histogram_bins={histogram_bins!r} is not an integer") from None
        if bins < 256:
            raise BadInputError(f"histogram_bins={histogram_bins}, expected at least 256",
                                hint="entropy calibration needs more bins than the 128 int8 levels")
        self.histogram_bins = bins

    def threshold(self, hist: AbsHistogram) -> float:
        raise NotImplementedError

    def _add(self, name, value):
        hist = self._tensors.get(name)
        if hist is None:
            hist = self._tensors[name] = AbsHistogram(self.histogram_bins)
        hist.add(value)

    def _range(self, name):
        hist = self._tensors[name]
        lo, hi = hist.clipped(0.0 if hist.empty else self.threshold(hist))
        return np.array(lo, np.float32), np.array(hi, np.float32)

    def settings(self):
        return {"histogram_bins": self.histogram_bins}


class EntropyCalibrator(HistogramCalibrator):
    """The |x| threshold that minimises the KL divergence between the histogram and its int8
    version (:func:`entropy_threshold`)."""

    method = "entropy"
    ort_method = "Entropy"

    def threshold(self, hist):
        return entropy_threshold(hist.hist, hist.edges)


class PercentileCalibrator(HistogramCalibrator):
    """The ``percentile`` (in percent, e.g. 99.99) of |x|."""

    method = "percentile"
    options = ("percentile", "histogram_bins")
    ort_method = "Percentile"

    def __init__(self, *, percentile: float = DEFAULT_PERCENTILE, histogram_bins: int = HISTOGRAM_BINS):
        try:
            percentile = float(percentile)
        except (TypeError, ValueError):
            raise BadInputError(f"percentile {percentile!r} is not a number") from None
        if not 0.0 < percentile <= 100.0:
            raise BadInputError(f"percentile {percentile:g} is outside (0, 100]",
                                hint="pass a percent such as 99.99")
        super().__init__(histogram_bins=histogram_bins)
        self.percentile = percentile

    def threshold(self, hist):
        return hist.percentile(self.percentile)

    def settings(self):
        return {"percentile": self.percentile, **super().settings()}


#: The calibrator of each method in ``CALIBRATION_METHODS``.
CALIBRATORS: Dict[str, type] = {c.method: c for c in (MinMaxCalibrator, EntropyCalibrator,
                                                       PercentileCalibrator)}


def calibrator_class(method: str) -> type:
    """The Calibrator subclass for ``method``; an unknown name is refused (exit code 3)."""
    method = str(method).lower()
    check_choice("calibration method", method, CALIBRATION_METHODS)
    return CALIBRATORS[method]


def check_calibration_options(method: str, options: Iterable[str],
                              names: OptionNames = KEYWORDS) -> None:
    """Refuse options ``method`` cannot honour, naming the methods that take each one (in the
    caller's words: ``names`` spells options as keywords or as command-line flags)."""
    cls = calibrator_class(method)
    for option in options:
        if option in cls.options:
            continue
        takers = [m for m in CALIBRATION_METHODS if option in CALIBRATORS[m].options]
        if not takers:
            raise BadInputError(f"{names(option)} is not a calibration option; calibrators take "
                                f"{', '.join(sorted({o for c in CALIBRATORS.values() for o in c.options}))}")
        raise BadInputError(f"{names(option)} applies with "
                            f"{' or '.join(names('method=', m) for m in takers)}",
                            hint=f"drop {names(option)} or {names('add')} {names('method=', takers[0])}")


def create_calibrator(method: str = DEFAULT_METHOD, **options: Any) -> Calibrator:
    """A fresh calibrator for ``method`` (minmax / entropy / percentile) with ``options``:
    ``symmetric`` (minmax), ``histogram_bins`` (entropy, percentile), ``percentile``
    (percentile). An option the method cannot honour is refused, never ignored."""
    check_calibration_options(method, options)
    return calibrator_class(method)(**options)


# -- running a graph over a calibration stream -------------------------------------------------
def calibrator_for(method: str, *, symmetric_activations: bool = True, **options: Any) -> Calibrator:
    """:func:`~covidedge.export.calibrators.create_calibrator` for activations that are signed
    symmetric or not: a method whose ranges depend on that (minmax) is told, the others choose
    thresholds on |x| either way. Options given as None keep the method's defaults."""
    given = {k: v for k, v in options.items() if v is not None}
    if "symmetric" in calibrator_class(method).options:
        given["symmetric"] = bool(symmetric_activations)
    return create_calibrator(method, **given)


def _activations(session, tensors, reader, model_path):
    """``{tensor: ndarray}`` of the calibrated ``tensors`` for each batch of ``reader``."""
    names = [o.name for o in session.get_outputs()]
    reader.rewind()
    for feed in reader:  # raises BadInputError on an empty stream or unreadable image
        try:
            values = session.run(None, feed)
        except Exception as exc:
            raise RuntimeFailure(f"calibration inference failed on batch {reader.batches_read} "
                                 f"({type(exc).__name__}: {exc})", path=model_path) from exc
        yield {name: v for name, v in zip(names, values) if name in tensors}


def collect_ranges(model_path: PathLike, reader, calibrator: Calibrator, *,
                   work_dir: Optional[Path] = None):
    """Run the calibration batches of ``reader`` (a ``CalibrationReader``) through the graph
    ``model_path``, feed every tensor ``quantize_static`` will look up to ``calibrator`` and
    return its ranges as ONNX Runtime's ``TensorsData``.

    ONNX Runtime's histogram calibrater chooses the tensors and makes them graph outputs; the
    graph runs one batch at a time, so memory stays at one batch of activations. An empty
    stream or an unreadable image raises BadInputError (from the reader), a failing run
    RuntimeFailure naming the batch.
    """
    from onnxruntime import quantization as quant
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidedge-cal-")))
        try:
            with contextlib.redirect_stdout(sys.stderr):
                augmented = quant.create_calibrator(
                    Path(model_path), op_types,
                    augmented_model_path=str(Path(work_dir) / "augmented.onnx"),
                    calibrate_method=quant.CalibrationMethod.Percentile,
                    use_external_data_format=False, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RuntimeFailure(f"cannot prepare the graph for calibration "
                                 f"({type(exc).__name__}: {exc})", path=model_path) from exc
        session = getattr(augmented, "infer_session", None)
        tensors = set(getattr(augmented, "tensors_to_calibrate", None) or ())
        if session is None or not tensors:
            raise RuntimeFailure("ONNX Runtime's calibrator exposes no session or tensors",
                                 path=model_path, hint="this onnxruntime version is unsupported")
        calibrator.collect(_activations(session, tensors, reader, model_path))
        del augmented, session
    data = {name: quant.TensorData(lowest=lo, highest=hi)
            for name, (lo, hi) in calibrator.compute_ranges().items()}
    return quant.TensorsData(getattr(quant.CalibrationMethod, calibrator.ort_method), data)


__all__ = ["Calibrator", "MinMaxCalibrator", "HistogramCalibrator", "EntropyCalibrator",
           "PercentileCalibrator", "CALIBRATORS", "create_calibrator", "calibrator_class",
           "check_calibration_options", "collect_ranges", "AbsHistogram", "entropy_threshold",
           "DEFAULT_METHOD", "DEFAULT_PERCENTILE", "HISTOGRAM_BINS", "QUANTIZED_BINS"]
