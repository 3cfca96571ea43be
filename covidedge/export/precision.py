"""Precision in the graph: fp16 (mixed, fp32 I/O) and calibrated int8 Q/DQ ONNX models.

TensorRT 10 deprecates and TensorRT 11 removes the FP16 / INT8 builder flags and INT8
calibrators: networks are strongly typed, so the precision has to be written into the ONNX graph.
The same graphs run in ONNX Runtime on a CPU, so each precision's accuracy can be measured
anywhere.

- fp16: ``onnxconverter_common.float16`` with fp32 inputs/outputs; the output Softmax/Sigmoid,
  reductions and Resize stay fp32.
- int8: ``onnxruntime.quantization`` static QDQ: signed int8 activations with zero point 0
  (symmetric), per-channel symmetric int8 weights, float biases; calibrated with MinMax, Entropy
  or Percentile on a CalibrationSet. The layers that write the graph outputs (the classifier's
  final Gemm / the segmenter's 1x1 head and the output Softmax/Sigmoid) stay float, so
  ``logits`` and ``probabilities`` are never rounded to 256 levels.
- int8 Q/DQ placement, two flavours (:data:`QDQ_PLACEMENTS`): "onnxruntime" quantizes every op
  ONNX Runtime has an int8 kernel for (Conv -> Q/DQ -> Relu -> Q/DQ, pooling, Flatten...), what
  its CPU kernels fuse. "tensorrt" quantizes only the inputs of the weighted ops (Conv,
  ConvTranspose, Gemm, MatMul) and leaves their outputs, Relu, Add, MaxPool and Concat in float:
  TensorRT honours every Q, so the ONNX Runtime placement costs it extra requantisation and
  double rounding, while a Conv with quantized inputs fuses the following Add / Relu itself
  ("Q/DQ placement recommendations", TensorRT developer guide, explicit quantization).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure
from covidedge.formats.onnxfile import as_model, graph_precision
from covidedge.spec import CALIBRATION_METHODS
from covidedge.export.onnx import parity_stats, run_onnx, synthetic_images
from covidedge.formats.onnxfile import KEY_PRECISION, check_onnx, graph_io, load_onnx, save_onnx, set_metadata
from covidedge.fileio import sha256_file

ACTIVATION_TYPES = ("int8", "uint8")
#: Where the int8 Q/DQ nodes go: what ONNX Runtime's CPU kernels fuse, or what TensorRT fuses.
QDQ_PLACEMENTS = ("onnxruntime", "tensorrt")
#: The ops whose inputs the "tensorrt" placement quantizes (weighted ops, int8 in TensorRT).
TRT_QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops whose outputs the "tensorrt" placement never quantizes: the next op fuses with them.
TRT_FLOAT_OUTPUT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "Concat")

#: Ops computed in fp32 inside an fp16 graph: the output activations, reductions (sums of many
#: fp16 values lose precision) and Resize (its scales input must stay float).
FP16_KEEP_FP32_OPS = ("Softmax", "Sigmoid", "LogSoftmax", "GlobalAveragePool", "ReduceMean",
                      "ReduceSum", "ReduceMax", "ReduceL2", "Resize", "Upsample")

# metadata keys
KEY_SOURCE_SHA = "covidedge.source_sha256"
KEY_FP32_OPS = "covidedge.fp16_fp32_ops"
KEY_VS_FP32 = "covidedge.parity_vs_fp32"
KEY_CALIB_SHA = "covidedge.calibration_sha256"
KEY_CALIB_METHOD = "covidedge.calibration_method"
KEY_CALIB_PERCENTILE = "covidedge.calibration_percentile"
KEY_CALIB_COUNT = "covidedge.calibration_images"
KEY_CALIB_BINS = "covidedge.calibration_histogram_bins"
KEY_ACT_TYPE = "covidedge.activation_type"
KEY_ACT_SYMMETRIC = "covidedge.activation_symmetric"
KEY_TRT_COMPATIBLE = "covidedge.tensorrt_compatible"
KEY_QDQ_PLACEMENT = "covidedge.qdq_placement"

#: Histogram bins for entropy / percentile calibration (TensorRT's entropy calibrator uses 2048;
#: with as few bins as int8 levels, 128, entropy could only pick the full range = minmax).
HISTOGRAM_BINS = 2048
#: int8 levels the entropy search quantizes a histogram into.
QUANTIZED_BINS = 128

#: Images used to compare a converted graph with its fp32 source.
CHECK_IMAGES = 4

PathLike = Union[str, Path]


# -- inspection --------------------------------------------------------------------------------
def inspect_qdq(onnx_path) -> Dict[str, Any]:
    """What the Q/DQ nodes of a graph look like.

    Returns counts of QuantizeLinear / DequantizeLinear nodes, the quantized dtypes (by node),
    whether every zero point is 0, how many weights are quantized per channel vs per tensor,
    ``activation_scales`` (float tensor name -> scale) and ``tensorrt_compatible`` (int8 only,
    all zero points 0: what TensorRT's explicit quantization accepts).
    """
    from onnx import numpy_helper

    model = as_model(onnx_path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {}
    for n in graph.node:  # Constant nodes can hold scales / zero points too
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    dtypes: Dict[str, int] = {}
    nonzero: List[str] = []
    per_channel, per_tensor = 0, 0
    weight_names: List[str] = []
    activation_scales: Dict[str, float] = {}
    for node in q + dq:
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        # without a zero point, ONNX defines uint8 with zero point 0
        dtype = "uint8" if zp is None else str(zp.dtype)
        if zp is None and node.op_type == "DequantizeLinear":
            data = value(node.input[0])
            if data is not None:
                dtype = str(data.dtype)
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
        if zp is not None and np.any(zp != 0):
            nonzero.append(node.name or node.input[0])
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weight_names.append(node.input[0])
            scale = value(node.input[1])
            if scale is not None and np.size(scale) > 1:
                per_channel += 1
            else:
                per_tensor += 1
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            scale = value(node.input[1])
            if scale is not None and np.size(scale) == 1:
                activation_scales[node.input[0]] = float(np.asarray(scale).reshape(-1)[0])
    return {
        "quantize_nodes": len(q),
        "dequantize_nodes": len(dq),
        "dtypes": dtypes,
        "zero_points_all_zero": not nonzero,
        "nonzero_zero_points": nonzero,
        "weights_per_channel": per_channel,
        "weights_per_tensor": per_tensor,
        "quantized_weights": weight_names,
        "activation_scales": activation_scales,
        "tensorrt_compatible": bool(q or dq) and set(dtypes) == {"int8"} and not nonzero,
    }


# -- helpers -----------------------------------------------------------------------------------
def _input_info(model):
    """(input name, static batch or None, (H, W)) of a single-input image graph."""
    io_ = graph_io(model)["inputs"]
    if len(io_) != 1:
        raise IncompatibleModelError(f"graph has inputs {sorted(io_)}, expected one image input")
    name, shape = next(iter(io_.items()))
    if len(shape) != 4 or not all(isinstance(v, int) for v in shape[1:]):
        raise IncompatibleModelError(f"graph input '{name}' has shape {shape}, "
                                     f"expected (N, C, H, W) with fixed C, H, W")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return name, batch, (shape[1], shape[2], shape[3])


def _task(model) -> str:
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get("covidedge.task") or (
        "classifier" if len(graph_io(model)["outputs"].get("logits", [])) == 2 else "segmenter")


def _float_inputs_outside_weighted_ops(model) -> int:
    """Give every op outside :data:`TRT_QUANTIZED_OPS` the float tensor instead of its Q/DQ copy.

    ONNX Runtime quantizes a tensor once for all its readers, so where a Relu / Add / Concat /
    pooling shares a tensor with a Conv, it would read the int8-rounded copy: rounding TensorRT
    has to honour. The "tensorrt" placement re-points those readers to the float tensor and
    drops Q/DQ pairs left unread. Returns the number of inputs re-pointed."""
    nodes = list(model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in nodes for o in n.output}
    float_of = {}
    for n in nodes:
        if n.op_type == "DequantizeLinear":
            q = producer.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
                float_of[n.output[0]] = q.input[0]
    moved = 0
    for n in nodes:
        if n.op_type in TRT_QUANTIZED_OPS or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in float_of:
                n.input[i] = float_of[name]
                moved += 1
    for op in ("DequantizeLinear", "QuantizeLinear"):  # DQs first: their Qs may become unread
        read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        for n in [n for n in model.graph.node if n.op_type == op and n.output[0] not in read]:
            model.graph.node.remove(n)
    return moved


def _output_nodes(model) -> List[str]:
    """Names of the nodes that write graph outputs (they stay in float precision)."""
    outs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if set(n.output) & outs]


def _require_fp32_source(model, src) -> None:
    got = graph_precision(model)
    if got != "fp32":
        raise BadInputError(f"source graph is already {got}, expected an fp32 graph", path=src,
                            hint="convert from the fp32 file that 'covidedge export' wrote")


def _compare_with_source(src: Path, dst: Path, task: str, batch, chw) -> Dict[str, Any]:
    x = synthetic_images(CHECK_IMAGES, chw[1:], seed=1)
    if chw[0] != 1:
        x = np.repeat(x, chw[0], axis=1)
    ref = run_onnx(src, x, static_batch=batch)
    got = run_onnx(dst, x, static_batch=batch)
    return parity_stats(task, ref, got)


# -- fp16 --------------------------------------------------------------------------------------
def _fix_output_casts(model) -> None:
    """Keep fp32 outputs fp32 when the node writing them was kept in fp32.

    The converter puts a Cast-to-fp16 after every blocked node, including one that writes a
    graph output, and then declares that output fp16. Such a cast is removed here and the output
    is declared fp32 again, so ``keep_io_types`` holds for every output.
    """
    import onnx

    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    outputs = {o.name: o for o in model.graph.output}
    for cast in list(model.graph.node):
        if cast.op_type != "Cast" or cast.output[0] not in outputs:
            continue
        if not any(a.name == "to" and a.i == f16 for a in cast.attribute):
            continue
        src_name = cast.input[0]
        producers = [n for n in model.graph.node if src_name in n.output]
        others = [n for n in model.graph.node if n is not cast and src_name in n.input]
        if len(producers) != 1 or others:
            continue
        out = producers[0].output
        out[list(out).index(src_name)] = cast.output[0]
        model.graph.node.remove(cast)
        outputs[cast.output[0]].type.tensor_type.elem_type = f32
        for vi in list(model.graph.value_info):
            if vi.name == src_name:
                model.graph.value_info.remove(vi)


def convert_fp16(src: PathLike, dst: PathLike, *,
                 keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS) -> Path:
    """Write a mixed-precision copy of an fp32 ONNX graph: fp16 weights and compute, fp32
    inputs and outputs, ``keep_fp32_ops`` (and the output Softmax/Sigmoid) computed in fp32.

    The result is checked with the full ONNX checker, run in ONNX Runtime on the CPU and
    compared with the source; the comparison lands in ``metadata_props`` as
    ``covidedge.parity_vs_fp32``. Returns ``dst``.
    """
    import onnx
    from covidedge.errors import require

    float16 = require("onnxconverter_common.float16", extra="precision", purpose="fp16 export")
    src, dst = Path(src), Path(dst)
    model = load_onnx(src)
    _require_fp32_source(model, src)
    name, batch, chw = _input_info(model)
    task = _task(model)
    keep = list(dict.fromkeys(keep_fp32_ops))
    blocked_nodes = [n.name for n in model.graph.node
                     if n.name in _output_nodes(model) and n.op_type in ("Softmax", "Sigmoid")]
    try:
        with warnings.catch_warnings():
            # the converter warns for every weight below fp16's smallest normal number that it
            # rounds (to 1e-7); the parity check below measures what that costs
            warnings.filterwarnings("ignore", message=".*will be truncated to.*")
            half = float16.convert_float_to_float16(
                model, keep_io_types=True,
                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + keep,
                node_block_list=blocked_nodes)
    except Exception as exc:
        raise RuntimeFailure(f"fp16 conversion failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                             path=src) from exc
    _fix_output_casts(half)
    f32 = onnx.TensorProto.FLOAT
    bad = [vi.name for vi in list(half.graph.input) + list(half.graph.output)
           if vi.type.tensor_type.elem_type != f32]
    if bad:
        raise RuntimeFailure(f"fp16 graph has non-fp32 inputs/outputs {bad}; expected fp32 I/O",
                             path=dst)
    set_metadata(half, {KEY_PRECISION: "fp16", KEY_SOURCE_SHA: sha256_file(src),
                        KEY_FP32_OPS: ",".join(keep)})
    return _save_checked(half, src, dst, task, batch, chw)


# -- int8 --------------------------------------------------------------------------------------
class CalibrationReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` fed from a CalibrationSet.

    Yields ``{input_name: (N, 1, H, W)}`` batches; an empty set, or a stream that ends before its
    first batch, raises BadInputError; an unreadable image raises BadInputError naming the file
    (from ``CalibrationSet.batches``). It never ends calibration early in silence.
    """

    def __init__(self, calibration, input_name: str, batch_size: int = 8):
        if len(calibration) == 0:
            raise BadInputError("calibration set has no images", path=calibration.source,
                                hint="make one with 'covidedge calibrate --data DIR --count N'")
        self.calibration = calibration
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self.batches_read = 0
        self.images_read = 0
        self._it: Optional[Iterator] = None

    def get_next(self):
        if self._it is None:
            self._it = iter(self.calibration.batches(self.batch_size))
        try:
            batch = next(self._it)
        except StopIteration:
            if self.batches_read == 0:
                raise BadInputError("calibration stream produced no images",
                                    path=self.calibration.source,
                                    hint="check the manifest lists images and they are readable")
            return None
        x = batch["image"]
        self.batches_read += 1
        self.images_read += len(x)
        return {self.input_name: x}

    def __iter__(self):
        while True:
            item = self.get_next()
            if item is None:
                return
            yield item

    def rewind(self) -> None:
        self._it = None
        self.batches_read = 0
        self.images_read = 0


class _OneBatch:
    """A CalibrationDataReader over one feed: the calibrators histogram each batch as it
    arrives, so memory stays at one batch of activations however large the set is."""

    def __init__(self, feed):
        self._feed = feed

    def get_next(self):
        feed, self._feed = self._feed, None
        return feed


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
    def edges(self) -> np.ndarray:
        return np.arange(self.bins + 1, dtype=np.float64) * (self.width or 0.0)

    def threshold(self, method: str, percentile: float = 99.99) -> float:
        """The |x| clipping threshold: entropy (see :func:`entropy_threshold`) or the
        ``percentile`` of |x| (the right edge of the bin where it falls)."""
        if self.width is None:
            return 0.0
        if method == "entropy":
            return entropy_threshold(self.hist, self.edges)
        cdf = np.cumsum(self.hist) / self.hist.sum()
        idx = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
        return float(self.edges[min(idx + 1, self.bins)])

    def range(self, method: str, percentile: float = 99.99):
        """(lowest, highest) for quantization: the seen min / max clipped to ±threshold."""
        if self.width is None:  # nothing but (near) zeros: a zero range (scale 1 in ORT)
            return 0.0, 0.0
        t = self.threshold(method, percentile)
        return max(self.lo, -t), min(self.hi, t)


def collect_ranges(model_path: PathLike, reader: "CalibrationReader", *, method: str,
                   percentile: float = 99.99, symmetric: bool = True,
                   histogram_bins: int = HISTOGRAM_BINS, work_dir: Optional[Path] = None):
    """Run the calibration images through ``model_path`` and return ONNX Runtime's
    ``TensorsData`` (the range of every tensor to quantize) for ``method``.

    ONNX Runtime's calibrator chooses the tensors (those that ``quantize_static`` will look up)
    and runs the graph; minmax uses its own statistics. Entropy and percentile use
    :class:`AbsHistogram` per tensor, updated batch by batch (memory stays at one batch of
    activations), and :func:`entropy_threshold`: ``quantize_static`` alone can neither size the
    histograms nor survive a tensor of near-zero values, and its entropy search takes minutes
    per model at 2048 bins. ``symmetric`` is accepted for minmax only; histogram ranges are
    symmetric thresholds on |x|, clipped to the values seen.
    """
    from onnxruntime import quantization as quant
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    collect_with = (quant.CalibrationMethod.MinMax if method == "minmax"
                    else quant.CalibrationMethod.Percentile)
    options: Dict[str, Any] = {"symmetric": bool(symmetric)}
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="covidedge-cal-"))
            work_dir = Path(tmp)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                calibrator = quant.create_calibrator(
                    Path(model_path), op_types,
                    augmented_model_path=str(Path(work_dir) / "augmented.onnx"),
                    calibrate_method=collect_with, use_external_data_format=False,
                    providers=["CPUExecutionProvider"], extra_options=options)
        except Exception as exc:
            raise RuntimeFailure(f"cannot prepare the graph for calibration "
                                 f"({type(exc).__name__}: {exc})", path=model_path) from exc
        session = getattr(calibrator, "infer_session", None)
        tensors = getattr(calibrator, "tensors_to_calibrate", None)
        if method != "minmax" and (session is None or not tensors):
            raise RuntimeFailure("ONNX Runtime's calibrator exposes no session or tensors",
                                 path=model_path, hint="this onnxruntime version is unsupported")
        names = [o.name for o in session.get_outputs()] if session is not None else []
        hists = {name: AbsHistogram(histogram_bins) for name in sorted(tensors or ())}
        reader.rewind()
        for feed in reader:  # raises BadInputError on an empty stream or unreadable image
            try:
                if method == "minmax":
                    with contextlib.redirect_stdout(sys.stderr):
                        calibrator.collect_data(_OneBatch(feed))
                else:
                    for name, value in zip(names, session.run(None, feed)):
                        if name in hists:
                            hists[name].add(value)
            except Exception as exc:
                raise RuntimeFailure(f"calibration inference failed on batch "
                                     f"{reader.batches_read} ({type(exc).__name__}: {exc})",
                                     path=model_path) from exc
        if method == "minmax":
            with contextlib.redirect_stdout(sys.stderr):
                ranges = calibrator.compute_data()
        else:
            data = {}
            for name, h in hists.items():
                lo, hi = h.range(method, percentile)
                data[name] = quant.TensorData(lowest=np.array(lo, np.float32),
                                              highest=np.array(hi, np.float32))
            kind = (quant.CalibrationMethod.Entropy if method == "entropy"
                    else quant.CalibrationMethod.Percentile)
            ranges = quant.TensorsData(kind, data)
        del calibrator, session
    return ranges


def _smooth(p: np.ndarray, inside: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Rows of ``p`` (each summing to 1 over its ``inside`` bins) with the empty inside bins
    given ``eps`` and that mass taken evenly from the non-empty ones, so KL stays finite."""
    zeros = (p == 0) & inside
    n_zero = zeros.sum(axis=1, keepdims=True)
    n_nonzero = inside.sum(axis=1, keepdims=True) - n_zero
    take = np.where(n_nonzero > 0, eps * n_zero / np.maximum(n_nonzero, 1), 0.0)
    return np.where(inside, np.where(zeros, eps, p - take), 0.0)


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 128,
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


def _as_calibration(calibration):
    from covidedge.export.calibration import CalibrationSet

    if isinstance(calibration, CalibrationSet):
        return calibration
    if isinstance(calibration, (str, Path)):
        return CalibrationSet.load(calibration)
    raise BadInputError(f"calibration is a {type(calibration).__name__}, expected a "
                        f"CalibrationSet or the path of a calibration manifest",
                        hint="make one with 'covidedge calibrate --data DIR --count N'")


def quantize_int8(src: PathLike, dst: PathLike, calibration, *, method: str = "entropy",
                  percentile: float = 99.99, activation_type: str = "int8",
                  symmetric_activations: bool = True, batch_size: int = 8,
                  histogram_bins: int = HISTOGRAM_BINS, qdq_placement: str = "onnxruntime",
                  ranges: Optional[PathLike] = None) -> Path:
    """Write a calibrated int8 Q/DQ copy of an fp32 ONNX graph and return ``dst``.

    ``ranges`` (instead of ``calibration``) is a calibration cache written for this very fp32
    graph by :func:`covidedge.export.calibration_cache.write_calibration_cache`: the activation
    ranges are taken from it, so no image is read (``method`` and the histogram settings are
    the cache's).

    ``calibration`` is a CalibrationSet (or its manifest path); ``method`` is "minmax",
    "entropy" or "percentile" (``percentile`` in percent, e.g. 99.99). The defaults give what
    TensorRT accepts: int8 activations with zero point 0, per-channel symmetric int8 weights.
    ``activation_type="uint8", symmetric_activations=False`` makes a graph for ONNX Runtime on
    CPUs only; its metadata says ``covidedge.tensorrt_compatible = false``. Entropy and
    percentile build ``histogram_bins``-bin histograms (2048, as TensorRT's entropy calibrator).
    ``qdq_placement`` is "onnxruntime" (every op ONNX Runtime quantizes) or "tensorrt" (inputs
    of weighted ops only; signed symmetric activations required), see :data:`QDQ_PLACEMENTS`.
    The same calibration set and options give a byte-identical file.
    """
    from covidedge.errors import require

    quant = require("onnxruntime.quantization", purpose="int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = str(method).lower()
    if method not in CALIBRATION_METHODS:
        raise BadInputError(f"calibration method {method!r} is unknown; expected one of {CALIBRATION_METHODS}")
    try:
        percentile = float(percentile)
    except (TypeError, ValueError):
        raise BadInputError(f"percentile {percentile!r} is not a number") from None
    if not 0.0 < percentile <= 100.0:
        raise BadInputError(f"percentile {percentile:g} is outside (0, 100]",
                            hint="pass a percent such as 99.99")
    if activation_type not in ACTIVATION_TYPES:
        raise BadInputError(f"activation type {activation_type!r} is unknown; "
                            f"expected one of {ACTIVATION_TYPES}")
    if qdq_placement not in QDQ_PLACEMENTS:
        raise BadInputError(f"Q/DQ placement {qdq_placement!r} is unknown; expected one of "
                            f"{', '.join(QDQ_PLACEMENTS)}")
    if qdq_placement == "tensorrt" and not (activation_type == "int8" and symmetric_activations):
        raise BadInputError("the tensorrt Q/DQ placement needs signed symmetric int8 activations, "
                            f"not {'symmetric' if symmetric_activations else 'asymmetric'} {activation_type}",
                            hint="use activation_type='int8', symmetric_activations=True")
    if int(batch_size) < 1:
        raise BadInputError(f"calibration batch size {batch_size} must be at least 1")
    if int(histogram_bins) < 256:
        raise BadInputError(f"histogram_bins={histogram_bins}, expected at least 256",
                            hint="entropy calibration needs more bins than the 128 int8 levels")
    src, dst = Path(src), Path(dst)
    model = load_onnx(src)
    _require_fp32_source(model, src)
    name, batch, chw = _input_info(model)
    task = _task(model)
    cache = None
    if ranges is not None:
        from covidedge.export.calibration_cache import read_calibration_cache

        if calibration is not None:
            raise BadInputError("give a calibration set or a calibration cache (ranges), not both")
        cache = read_calibration_cache(ranges, source=src)
        method, histogram_bins = cache["method"], int(cache.get("histogram_bins") or histogram_bins)
        percentile = float(cache.get("percentile") or percentile)
    calib = _as_calibration(calibration) if cache is None else None
    if calib is not None and tuple(calib.input_size) != tuple(chw[1:]):
        raise IncompatibleModelError(
            f"calibration images are {calib.input_size[0]}x{calib.input_size[1]} px but the "
            f"graph takes {chw[1]}x{chw[2]} px", path=calib.source,
            hint=f"make a calibration set with --input-size {chw[1]}")
    meta = {p.key: p.value for p in model.metadata_props}
    want_pre = meta.get("covidedge.preprocessing")
    if calib is not None and want_pre and calib.preprocessing != want_pre:
        raise IncompatibleModelError(
            f"calibration set uses preprocessing {calib.preprocessing!r}, the model "
            f"{want_pre!r}", path=calib.source, hint="make a new calibration set")
    reader = CalibrationReader(calib, name, batch_size=batch or batch_size) if calib is not None else None

    methods = {"minmax": quant.CalibrationMethod.MinMax,
               "entropy": quant.CalibrationMethod.Entropy,
               "percentile": quant.CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": bool(symmetric_activations), "WeightSymmetric": True,
             "QuantizeBias": False}
    op_types = None  # ONNX Runtime's choice: every op it has a Q/DQ or QLinear kernel for
    if qdq_placement == "tensorrt":
        op_types = list(TRT_QUANTIZED_OPS)
        extra["OpTypesToExcludeOutputQuantization"] = list(TRT_FLOAT_OUTPUT_OPS)
    act = quant.QuantType.QInt8 if activation_type == "int8" else quant.QuantType.QUInt8
    trt_ok = activation_type == "int8" and bool(symmetric_activations)

    with tempfile.TemporaryDirectory(prefix="covidedge-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        ranges_file = Path(tmp) / "ranges.json"
        try:
            with contextlib.redirect_stdout(sys.stderr):
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as exc:
            raise RuntimeFailure(f"shape inference before quantization failed "
                                 f"({type(exc).__name__}: {exc})", path=src) from exc
        pre_model = load_onnx(pre)
        if cache is None:
            tensor_ranges = collect_ranges(pre, reader, method=method, percentile=percentile,
                                           symmetric=bool(symmetric_activations),
                                           histogram_bins=histogram_bins, work_dir=Path(tmp))
            quant.save_tensors_data(tensor_ranges, ranges_file)
        else:
            ranges_file.write_text(json.dumps(cache["ranges"]))
        try:
            with contextlib.redirect_stdout(sys.stderr):
                quant.quantize_static(
                    str(pre), str(out), None, quant_format=quant.QuantFormat.QDQ,
                    per_channel=True, reduce_range=False, activation_type=act,
                    weight_type=quant.QuantType.QInt8, calibrate_method=methods[method],
                    nodes_to_exclude=_output_nodes(pre_model), op_types_to_quantize=op_types,
                    extra_options=extra,
                    calibration_cache_path=str(ranges_file))
        except Exception as exc:
            raise RuntimeFailure(f"int8 quantization failed ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                                 path=src) from exc
        if reader is not None and reader.images_read == 0:  # collect_ranges raises first; never quantize blind
            raise BadInputError("calibration stream produced no images", path=calib.source)
        q = load_onnx(out)
    if qdq_placement == "tensorrt":
        _float_inputs_outside_weighted_ops(q)
    set_metadata(q, {
        KEY_PRECISION: "int8", KEY_SOURCE_SHA: sha256_file(src),
        KEY_CALIB_SHA: calib.sha256 if calib is not None else cache["calibration_sha256"],
        KEY_CALIB_METHOD: method,
        KEY_CALIB_PERCENTILE: f"{percentile:g}" if method == "percentile" else "",
        KEY_CALIB_COUNT: str(reader.images_read if reader is not None else cache["calibration_count"]),
        KEY_CALIB_BINS: str(int(histogram_bins)) if method != "minmax" else "",
        KEY_ACT_TYPE: activation_type,
        KEY_ACT_SYMMETRIC: "true" if symmetric_activations else "false",
        KEY_TRT_COMPATIBLE: "true" if trt_ok else "false",
        KEY_QDQ_PLACEMENT: qdq_placement,
    })
    # ORT's marker entries carry nothing a reader of this file needs, and its optimizer
    # declares every domain it knows; keep the ones the nodes use
    for prop in list(q.metadata_props):
        if prop.key in ("onnx.infer", "onnx.quant.pre_process"):
            q.metadata_props.remove(prop)
    used = {n.domain or "" for n in q.graph.node} | {""}
    for imp in list(q.opset_import):
        if (imp.domain or "") not in used and imp.domain != "ai.onnx":
            q.opset_import.remove(imp)
    return _save_checked(q, src, dst, task, batch, chw)


def _save_checked(model, src, dst, task, batch, chw):
    """Save a converted graph, run the ONNX checker on it, compare it with its fp32 source and
    record that comparison in its metadata (saved again). Returns ``dst``."""
    save_onnx(model, dst)
    check_onnx(dst)
    stats = _compare_with_source(src, dst, task, batch, chw)
    set_metadata(model, {KEY_VS_FP32: json.dumps(stats, sort_keys=True)})
    save_onnx(model, dst)
    return dst


def parity_vs_fp32(onnx_path) -> Optional[Dict[str, Any]]:
    """The comparison with the fp32 source stored in a converted graph's metadata, if any."""
    model = as_model(onnx_path)
    for p in model.metadata_props:
        if p.key == KEY_VS_FP32:
            return json.loads(p.value)
    return None


__all__ = ["FP16_KEEP_FP32_OPS", "convert_fp16", "quantize_int8", "inspect_qdq", "CalibrationReader", "collect_ranges",
           "parity_vs_fp32", "HISTOGRAM_BINS", "entropy_threshold", "AbsHistogram",
           "QDQ_PLACEMENTS", "TRT_QUANTIZED_OPS", "TRT_FLOAT_OUTPUT_OPS"]
