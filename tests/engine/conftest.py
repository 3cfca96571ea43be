"""Tiny hand-made ONNX graphs in each precision, shaped like covidedge models, for engine tests.

The classifier is Conv(1->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->3) ->
logits -> Softmax; the segmenter Conv(1->2, 3x3) -> logits -> Sigmoid. The fp16 variant casts
to fp16 after the input and back to fp32 before the output activation; the int8 variant has
symmetric int8 Q/DQ on the input and per-channel int8 weights, as the export writes them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from covidedge.spec import ModelSpec, classifier_spec, segmenter_spec


def make_tiny_onnx(path, precision: str = "fp32", task: str = "classifier", size: int = 16,
                   batch=None, seed: int = 0) -> ModelSpec:
    rng = np.random.default_rng(seed)
    spec = (classifier_spec(model_name="tiny", input_size=(size, size)) if task == "classifier"
            else segmenter_spec(model_name="tiny", input_size=(size, size)))
    n = batch or "N"
    out_ch = 4 if task == "classifier" else 2
    conv_w = rng.normal(0, 0.5, (out_ch, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (out_ch,)).astype(np.float32)
    gemm_w = rng.normal(0, 0.5, (out_ch, 3)).astype(np.float32)
    gemm_b = np.array([0.1, -0.2, 0.05], np.float32)
    fdt = np.float16 if precision == "fp16" else np.float32
    inits, nodes = [], []
    x = "image"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["image"], ["image16"], to=TensorProto.FLOAT16))
        x = "image16"
    if precision == "int8":
        scale = np.array(1.0 / 127.0, np.float32)
        inits += [numpy_helper.from_array(scale, "x_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "x_zp")]
        nodes += [helper.make_node("QuantizeLinear", ["image", "x_scale", "x_zp"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"])]
        w_scale = (np.abs(conv_w).reshape(out_ch, -1).max(axis=1) / 127.0).astype(np.float32)
        w_q = np.clip(np.round(conv_w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(w_q, "conv_wq"), numpy_helper.from_array(w_scale, "w_scale"),
                  numpy_helper.from_array(np.zeros(out_ch, np.int8), "w_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["conv_wq", "w_scale", "w_zp"], ["conv_w"], axis=0))
        x = "x_dq"
    else:
        inits.append(numpy_helper.from_array(conv_w.astype(fdt), "conv_w"))
    inits.append(numpy_helper.from_array(conv_b.astype(fdt), "conv_b"))
    nodes.append(helper.make_node("Conv", [x, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]))
    if task == "classifier":
        inits += [numpy_helper.from_array(gemm_w.astype(fdt), "gemm_w"),
                  numpy_helper.from_array(gemm_b.astype(fdt), "gemm_b")]
        nodes += [helper.make_node("Relu", ["conv"], ["relu"]),
                  helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
                  helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
                  helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["pre_logits"])]
        out_shape, act = [n, 3], "Softmax"
    else:
        nodes.append(helper.make_node("Identity", ["conv"], ["pre_logits"]))
        out_shape, act = [n, 2, size, size], "Sigmoid"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["pre_logits"], ["logits"], to=TensorProto.FLOAT))
    else:
        nodes.append(helper.make_node("Identity", ["pre_logits"], ["logits"]))
    nodes.append(helper.make_node(act, ["logits"], ["probabilities"], **({"axis": 1} if act == "Softmax" else {})))
    graph = helper.make_graph(
        nodes, f"tiny_{task}_{precision}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out_shape)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = dict(spec.to_metadata())
    meta["covidedge.precision"] = precision
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return spec


def run_onnx(path, x: np.ndarray):
    """Outputs of an ONNX file on ONNX Runtime's CPU provider, as {name: array}."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x})))


@pytest.fixture
def tiny_onnx(tmp_path):
    """Factory: tiny_onnx(precision="fp32", task="classifier", size=16) -> (path, spec)."""
    def make(precision="fp32", task="classifier", size=16, batch=None, name=None):
        path = tmp_path / (name or f"tiny-{task}.{precision}.onnx")
        spec = make_tiny_onnx(path, precision, task, size, batch)
        return path, spec

    return make
