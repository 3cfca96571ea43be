"""int8 in the graph: calibrated Q/DQ copies of an fp32 ONNX graph, and what their Q/DQ nodes say.

TensorRT 10 deprecates and TensorRT 11 removes the INT8 builder flag and calibrators: networks are
strongly typed, so int8 is written into the graph as explicit QuantizeLinear / DequantizeLinear
pairs. ``onnxruntime.quantization`` writes them (static QDQ): signed int8 activations with zero
point 0 (symmetric), per-channel symmetric int8 weights, float biases, with activation ranges
from a :mod:`covidedge.export.calibrators` calibrator run on a CalibrationSet (or read from a
calibration cache). The layers that write the graph outputs (the classifier's final Gemm / the
segmenter's 1x1 head and the output Softmax/Sigmoid) stay float, so ``logits`` and
``probabilities`` are never rounded to 256 levels.

Q/DQ placement, two flavours (:data:`QDQ_PLACEMENTS`): "onnxruntime" quantizes every op ONNX
Runtime has an int8 kernel for (Conv -> Q/DQ -> Relu -> Q/DQ, pooling, Flatten...), what its CPU
kernels fuse. "tensorrt" quantizes only the inputs of the weighted ops (Conv, ConvTranspose, Gemm,
MatMul) and leaves their outputs, Relu, Add, MaxPool and Concat in float: TensorRT honours every
Q, so the ONNX Runtime placement costs it extra requantisation and double rounding, while a Conv
with quantized inputs fuses the following Add / Relu itself ("Q/DQ placement recommendations",
TensorRT developer guide, explicit quantization).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure
from covidedge.spec import Options
from covidedge.export.calibration import CalibrationReader, as_calibration_set
from covidedge.export.calibrators import (DEFAULT_METHOD, calibrator_class, calibrator_for,
                                          collect_ranges, create_calibrator)
from covidedge.export.converted import (KEY_SOURCE_SHA, graph_task, input_info, output_nodes,
                                        require_fp32_source, save_checked)
from covidedge.fileio import sha256_file
from covidedge.formats.onnxfile import (KEY_CALIBRATION_SHA, KEY_PRECISION, KEY_TRT_COMPATIBLE, as_model, load_onnx,
                                        set_metadata)

PathLike = Union[str, Path]

ACTIVATION_TYPES = ("int8", "uint8")
#: The ops whose inputs the "tensorrt" placement quantizes (weighted ops, int8 in TensorRT).
TRT_QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops whose outputs the "tensorrt" placement never quantizes: the next op fuses with them.
TRT_FLOAT_OUTPUT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "Concat")
#: Where the int8 Q/DQ nodes go, by placement name (a backend's ``qdq_placement``): what ONNX
#: Runtime's CPU kernels fuse (every op it quantizes: ``quantized_ops`` None), or what TensorRT
#: fuses (only the inputs of ``quantized_ops``; ``float_output_ops`` keep float outputs, and
#: the placement takes signed symmetric activations only).
PLACEMENTS: Dict[str, Dict[str, Any]] = {
    "onnxruntime": {"quantized_ops": None, "float_output_ops": None},
    "tensorrt": {"quantized_ops": TRT_QUANTIZED_OPS, "float_output_ops": TRT_FLOAT_OUTPUT_OPS},
}
QDQ_PLACEMENTS = tuple(PLACEMENTS)

# metadata keys of an int8 graph (with KEY_CALIBRATION_SHA from covidedge.formats.onnxfile)
KEY_CALIB_METHOD = "covidedge.calibration_method"
KEY_CALIB_PERCENTILE = "covidedge.calibration_percentile"
KEY_CALIB_COUNT = "covidedge.calibration_images"
KEY_CALIB_BINS = "covidedge.calibration_histogram_bins"
KEY_ACT_TYPE = "covidedge.activation_type"
KEY_ACT_SYMMETRIC = "covidedge.activation_symmetric"
KEY_QDQ_PLACEMENT = "covidedge.qdq_placement"


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



# -- quantization --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Options(Options):
    """How an fp32 graph is calibrated and quantized (see :func:`quantize_int8`): the calibration
    ``method`` (None: entropy) with its ``percentile`` / ``histogram_bins``, the activations'
    type and symmetry, the calibration ``batch_size`` in images and the Q/DQ placement."""

    method: Optional[str] = None
    percentile: Optional[float] = None
    activation_type: str = "int8"
    symmetric_activations: bool = True
    batch_size: int = 8
    histogram_bins: Optional[int] = None
    qdq_placement: str = "onnxruntime"


def quantize_int8(src: PathLike, dst: PathLike, calibration, options: Optional[Int8Options] = None, *,
                  ranges: Optional[PathLike] = None, **overrides: Any) -> Path:
    """Write a calibrated int8 Q/DQ copy of an fp32 ONNX graph and return ``dst``.

    ``options`` is an :class:`Int8Options` (its fields also accepted as keywords).
    ``calibration`` is a CalibrationSet (or its manifest path); ``method`` is "minmax",
    "entropy" (the default) or "percentile" (``percentile`` in percent, default 99.99); entropy
    and percentile build ``histogram_bins``-bin histograms (default 2048, as TensorRT's entropy
    calibrator). An option the method cannot honour (``percentile`` with entropy,
    ``histogram_bins`` with minmax) is refused. The defaults give what TensorRT accepts: int8
    activations with zero point 0, per-channel symmetric int8 weights.
    ``activation_type="uint8", symmetric_activations=False`` makes a graph for ONNX Runtime on
    CPUs only; its metadata says ``covidedge.tensorrt_compatible = false``.
    ``qdq_placement`` is "onnxruntime" (every op ONNX Runtime quantizes) or "tensorrt" (inputs
    of weighted ops only; signed symmetric activations required), see :data:`QDQ_PLACEMENTS`.

    ``ranges`` (instead of ``calibration``) is a calibration cache written for this very fp32
    graph by :func:`covidedge.export.calibration_cache.write_calibration_cache`: the activation
    ranges come from it, so no image is read, and so do the method and its options (passing
    them too is refused). The same calibration set and options give a byte-identical file.
    """
    from covidedge.errors import require
    from covidedge.spec import check_choice

    o = Int8Options.of(options, **overrides)
    method, percentile, activation_type = o.method, o.percentile, o.activation_type
    symmetric_activations, batch_size, histogram_bins, qdq_placement = (
        o.symmetric_activations, o.batch_size, o.histogram_bins, o.qdq_placement)
    quant = require("onnxruntime.quantization", purpose="int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib_options = {"percentile": percentile, "histogram_bins": histogram_bins}
    calibrator = None
    if ranges is None:
        calibrator = calibrator_for(method or DEFAULT_METHOD,
                                    symmetric_activations=symmetric_activations, **calib_options)
    else:
        given = ["method"] * (method is not None) + [k for k, v in calib_options.items() if v is not None]
        if given:
            raise BadInputError(f"{', '.join(given)} come{'s' if len(given) == 1 else ''} from the "
                                f"calibration cache, not from options", path=ranges,
                                hint=f"drop {', '.join(given)}, or calibrate on images instead")
        if calibration is not None:
            raise BadInputError("give a calibration set or a calibration cache (ranges), not both")
    check_choice("activation type", activation_type, ACTIVATION_TYPES)
    check_choice("Q/DQ placement", qdq_placement, QDQ_PLACEMENTS)
    placement = PLACEMENTS[qdq_placement]
    weighted_only = placement["quantized_ops"] is not None
    if weighted_only and not (activation_type == "int8" and symmetric_activations):
        raise BadInputError(f"the {qdq_placement} Q/DQ placement needs signed symmetric int8 activations, "
                            f"not {'symmetric' if symmetric_activations else 'asymmetric'} {activation_type}",
                            hint="use activation_type='int8', symmetric_activations=True")
    if int(batch_size) < 1:
        raise BadInputError(f"calibration batch size {batch_size} must be at least 1")
    src, dst = Path(src), Path(dst)
    model = load_onnx(src)
    require_fp32_source(model, src)
    name, batch, chw = input_info(model)
    task = graph_task(model)
    cache = calib = reader = None
    if ranges is not None:
        from covidedge.export.calibration_cache import read_calibration_cache

        cache = read_calibration_cache(ranges, source=src)
        calibrator = create_calibrator(cache["method"], **{
            k: cache[k] for k in calibrator_class(cache["method"]).options if cache.get(k) is not None})
    else:
        calib = as_calibration_set(calibration)
        if tuple(calib.input_size) != tuple(chw[1:]):
            raise IncompatibleModelError(
                f"calibration images are {calib.input_size[0]}x{calib.input_size[1]} px but the "
                f"graph takes {chw[1]}x{chw[2]} px", path=calib.source,
                hint=f"make a calibration set with --input-size {chw[1]}")
        meta = {p.key: p.value for p in model.metadata_props}
        want_pre = meta.get("covidedge.preprocessing")
        if want_pre and calib.preprocessing != want_pre:
            raise IncompatibleModelError(
                f"calibration set uses preprocessing {calib.preprocessing!r}, the model "
                f"{want_pre!r}", path=calib.source, hint="make a new calibration set")
        reader = CalibrationReader(calib, name, batch_size=batch or batch_size)

    extra = {"ActivationSymmetric": bool(symmetric_activations), "WeightSymmetric": True,
             "QuantizeBias": False}
    op_types = None  # ONNX Runtime's choice: every op it has a Q/DQ or QLinear kernel for
    if weighted_only:
        op_types = list(placement["quantized_ops"])
        extra["OpTypesToExcludeOutputQuantization"] = list(placement["float_output_ops"])
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
            quant.save_tensors_data(collect_ranges(pre, reader, calibrator, work_dir=Path(tmp)),
                                    ranges_file)
        else:
            ranges_file.write_text(json.dumps(cache["ranges"]))
        try:
            with contextlib.redirect_stdout(sys.stderr):
                quant.quantize_static(
                    str(pre), str(out), None, quant_format=quant.QuantFormat.QDQ,
                    per_channel=True, reduce_range=False, activation_type=act,
                    weight_type=quant.QuantType.QInt8,
                    calibrate_method=getattr(quant.CalibrationMethod, calibrator.ort_method),
                    nodes_to_exclude=output_nodes(pre_model), op_types_to_quantize=op_types,
                    extra_options=extra,
                    calibration_cache_path=str(ranges_file))
        except Exception as exc:
            raise RuntimeFailure(f"int8 quantization failed ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                                 path=src) from exc
        if reader is not None and reader.images_read == 0:  # collect_ranges raises first; never quantize blind
            raise BadInputError("calibration stream produced no images", path=calib.source)
        q = load_onnx(out)
    if weighted_only:
        _float_inputs_outside_weighted_ops(q)
    settings = calibrator.settings()
    set_metadata(q, {
        KEY_PRECISION: "int8", KEY_SOURCE_SHA: sha256_file(src),
        KEY_CALIBRATION_SHA: calib.sha256 if calib is not None else cache["calibration_sha256"],
        KEY_CALIB_METHOD: calibrator.method,
        KEY_CALIB_PERCENTILE: f"{settings['percentile']:g}" if "percentile" in settings else "",
        KEY_CALIB_COUNT: str(reader.images_read if reader is not None else cache["calibration_count"]),
        KEY_CALIB_BINS: str(int(settings["histogram_bins"])) if "histogram_bins" in settings else "",
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
    return save_checked(q, src, dst, task, batch, chw)


__all__ = ["quantize_int8", "Int8Options", "calibrator_for", "inspect_qdq", "ACTIVATION_TYPES", "QDQ_PLACEMENTS",
           "TRT_QUANTIZED_OPS", "TRT_FLOAT_OUTPUT_OPS"]
