"""Every node of every graph ``export`` writes is in onnx-tensorrt's operator support tables.

The tables below are onnx-tensorrt's ``docs/operators.md`` for TensorRT 8.6 and 10.x, written
as data: the operators a CNN exported by torch can contain, with their supported types and the
restrictions that apply to covidedge's graphs. Sources (pinned commits):

- TensorRT 8.6: https://github.com/onnx/onnx-tensorrt/blob/ee0b139bc68567a89618c1d84dcd461cc144aad4/docs/operators.md
  (release/8.6-GA; "TensorRT 8.6 supports operators up to Opset 17")
- TensorRT 10.x: https://github.com/onnx/onnx-tensorrt/blob/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/docs/operators.md
  (release/10.1-GA; "opset 9 to opset 20"; INT8 is a quantized type, reached only through
  QuantizeLinear; UINT8 only as a network input or output)

The graphs are the fp32, fp16 and both int8 Q/DQ flavours of a tiny classifier and segmenter.
This checks the documented tables, not a parse: TensorRT parses the graphs in test_tensorrt.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import exported_graphs, qdq_probe_model

_8 = ("FP32", "FP16", "INT32", "INT8", "BOOL")
#: {op: supported types} per table; restrictions are checked in ``restrictions`` below.
TABLES = {
    "8.6": {
        "opsets": (7, 17),
        "ops": {
            "Add": ("FP32", "FP16", "INT32"), "AveragePool": ("FP32", "FP16", "INT8", "INT32"),
            "BatchNormalization": ("FP32", "FP16"), "Cast": ("FP32", "FP16", "INT32", "INT8", "UINT8", "BOOL"),
            "Clip": ("FP32", "FP16", "INT8"), "Concat": _8, "Constant": _8,
            "Conv": ("FP32", "FP16", "INT8"), "ConvTranspose": ("FP32", "FP16", "INT8"),
            "DequantizeLinear": ("INT8",), "Div": ("FP32", "FP16", "INT32"),
            "Flatten": ("FP32", "FP16", "INT32", "BOOL"), "Gather": _8, "Gemm": ("FP32", "FP16", "INT8"),
            "GlobalAveragePool": ("FP32", "FP16", "INT8"), "HardSigmoid": ("FP32", "FP16", "INT8"),
            "Identity": _8, "LeakyRelu": ("FP32", "FP16", "INT8"), "MatMul": ("FP32", "FP16"),
            "MaxPool": ("FP32", "FP16", "INT8"), "Mul": ("FP32", "FP16", "INT32"),
            "Pad": ("FP32", "FP16", "INT8", "INT32"), "QuantizeLinear": ("FP32", "FP16"),
            "ReduceMean": ("FP32", "FP16"), "Relu": ("FP32", "FP16", "INT8"), "Reshape": _8,
            "Resize": ("FP32", "FP16"), "Shape": _8, "Sigmoid": ("FP32", "FP16", "INT8"),
            "Slice": _8, "Softmax": ("FP32", "FP16"), "Squeeze": _8, "Sub": ("FP32", "FP16", "INT32"),
            "Tanh": ("FP32", "FP16", "INT8"), "Transpose": _8, "Unsqueeze": _8,
        },
    },
    "10.x": {
        "opsets": (9, 20),
        "ops": {
            "Add": ("FP32", "FP16", "BF16", "INT32", "INT64"), "AveragePool": ("FP32", "FP16", "BF16"),
            "BatchNormalization": ("FP32", "FP16", "BF16"),
            "Cast": ("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"),
            "Clip": ("FP32", "FP16", "BF16"), "Concat": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
            "Constant": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
            "Conv": ("FP32", "FP16", "BF16"), "ConvTranspose": ("FP32", "FP16", "BF16"),
            "DequantizeLinear": ("INT8", "FP8", "INT4"), "Div": ("FP32", "FP16", "BF16", "INT32", "INT64"),
            "Flatten": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
            "Gather": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"), "Gemm": ("FP32", "FP16", "BF16"),
            "GlobalAveragePool": ("FP32", "FP16", "BF16"), "HardSigmoid": ("FP32", "FP16", "BF16"),
            "Identity": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
            "LeakyRelu": ("FP32", "FP16", "BF16"), "MatMul": ("FP32", "FP16", "BF16"),
            "MaxPool": ("FP32", "FP16", "BF16"), "Mul": ("FP32", "FP16", "BF16", "INT32", "INT64"),
            "Pad": ("FP32", "FP16", "BF16", "INT32", "INT64"), "QuantizeLinear": ("FP32", "FP16", "BF16"),
            "ReduceMean": ("FP32", "FP16", "BF16", "INT32", "INT64"),
            "Relu": ("FP32", "FP16", "BF16", "INT32", "INT64"),
            "Reshape": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"), "Resize": ("FP32", "FP16", "BF16"),
            "Shape": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"), "Sigmoid": ("FP32", "FP16", "BF16"),
            "Slice": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"), "Softmax": ("FP32", "FP16", "BF16"),
            "Squeeze": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
            "Sub": ("FP32", "FP16", "BF16", "INT32", "INT64"), "Tanh": ("FP32", "FP16", "BF16"),
            "Transpose": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
            "Unsqueeze": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
        },
    },
}
RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_MODES = ("nearest", "linear")
RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
TYPE_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
              TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.INT32: "INT32",
              TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL"}


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def unsupported(model, release: str):
    """Why each node of ``model`` is outside the ``release`` table: [] when all are inside."""
    table = TABLES[release]
    problems = []
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    lo, hi = table["opsets"]
    if not lo <= opset <= hi:
        problems.append(f"opset {opset} outside {lo}..{hi}")
    types = _types(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}

    def name_of(tensor):
        t = TYPE_NAMES.get(types.get(tensor), f"onnx type {types.get(tensor)}")
        return "INT32" if release == "8.6" and t == "INT64" else t  # 8.6 casts INT64 down

    for node in model.graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain} is not ONNX")
            continue
        allowed = table["ops"].get(node.op_type)
        if allowed is None:
            problems.append(f"{where}: not in the TensorRT {release} table")
            continue
        checked = node.output[:1] if node.op_type == "Constant" else node.input[:1]
        if node.op_type == "Cast":
            checked = [node.input[0], node.output[0]]
        for tensor in checked:
            if name_of(tensor) not in allowed:
                problems.append(f"{where}: {tensor} is {name_of(tensor)}, supported {', '.join(allowed)}")
        problems += [f"{where}: {why}" for why in restrictions(node, release, name_of, inits, consts)]
    return problems


def restrictions(node, release, name_of, inits, consts):
    """The table's restriction column, for the operators covidedge's graphs contain."""
    a, op = _attrs(node), node.op_type
    if op in ("QuantizeLinear", "DequantizeLinear"):
        zp = node.input[2] if len(node.input) > 2 else ""
        if zp and (zp not in inits or np.any(inits[zp])):
            yield "zero point must be a zero initializer"
        if op == "QuantizeLinear" and name_of(node.output[0]) != "INT8":
            yield f"quantizes to {name_of(node.output[0])}; TensorRT's activations are INT8"
    if op in ("MaxPool", "AveragePool"):
        if len(a.get("kernel_shape", [])) not in (2, 3):
            yield "2D or 3D pooling only"
        if op == "MaxPool" and len([o for o in node.output if o]) > 1:
            yield "the Indices output is unsupported"
        if release == "10.x" and any(d != 1 for d in a.get("dilations", [])):
            yield "dilations must be empty or all ones"
    if op == "Resize":
        mode = _text(a.get("mode", "nearest"))
        if mode not in RESIZE_MODES:
            yield f"mode {mode}"
        coord = _text(a.get("coordinate_transformation_mode", "half_pixel"))
        if coord not in RESIZE_COORDINATES:
            yield f"coordinate_transformation_mode {coord}"
        if mode == "nearest" and _text(a.get("nearest_mode", "round_prefer_floor")) not in RESIZE_NEAREST:
            yield f"nearest_mode {_text(a['nearest_mode'])}"
        if release == "10.x" and a.get("antialias", 0):
            yield "antialiasing is unsupported"
        if release == "10.x" and _text(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            yield "keep_aspect_ratio_policy must be stretch"
    if op in ("Slice", "Squeeze", "Unsqueeze", "Pad", "ReduceMean"):
        axes = {"Slice": 3, "Pad": 3}.get(op, 1)
        name = node.input[axes] if len(node.input) > axes else ""
        if name and name not in inits and name not in consts:
            yield "axes must be an initializer"
    if op == "Constant" and not set(a) <= {"value"}:
        yield f"attributes {sorted(set(a) - {'value'})} are unsupported"


GRAPHS = ("fp32", "fp16", "int8-onnxruntime", "int8-tensorrt")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    pytest.importorskip("torch", reason="exporting the tiny models needs torch")
    return exported_graphs(tmp_path_factory)


@pytest.mark.parametrize("release", sorted(TABLES))
@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_every_exported_graph_is_in_the_tables(graphs, task, release):
    for kind in GRAPHS:
        model = onnx.load(str(graphs[task][kind]))
        assert len(model.graph.node) > 5
        assert unsupported(model, release) == [], f"{task} {kind}"


def test_the_checker_finds_what_tensorrt_does_not_take():
    assert unsupported(qdq_probe_model(0, np.int8), "10.x") == []
    # ONNX Runtime's CPU flavour (uint8, asymmetric) is outside both tables
    cpu = unsupported(qdq_probe_model(128, np.uint8), "10.x")
    assert any("zero point must be a zero initializer" in p for p in cpu)
    assert any("quantizes to UINT8" in p for p in cpu)
    assert any("is UINT8, supported INT8, FP8, INT4" in p for p in cpu)
    # opset 18 is past the 8.6 parser, not past 10.x
    assert unsupported(qdq_probe_model(0, np.int8, opset=18), "8.6") == ["opset 18 outside 7..17"]
    assert unsupported(qdq_probe_model(0, np.int8, opset=18), "10.x") == []
    # an op missing from the table, and a MaxPool with its Indices output
    extra = [helper.make_node("Bernoulli", ["dq"], ["b"]),
             helper.make_node("MaxPool", ["dq"], ["m", "idx"], kernel_shape=[2, 2])]
    bad = unsupported(qdq_probe_model(0, np.int8, extra=extra), "8.6")
    assert any("Bernoulli" in p and "not in the TensorRT 8.6 table" in p for p in bad)
    assert any("the Indices output is unsupported" in p for p in bad)
