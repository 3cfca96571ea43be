"""Tiny hand-made ONNX graphs that behave like covidedge models (for runtime tests)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from covidedge.spec import ModelSpec, classifier_spec


def tiny_classifier_onnx(path, size=8, batch=None, spec: ModelSpec | None = None) -> ModelSpec:
    """A graph: logits = mean over pixels of x times [1, -1, 0.5] + [0, 0.5, 0]; probabilities = softmax."""
    spec = spec or classifier_spec(model_name="tiny", input_size=(size, size))
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch or "N", 1, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch or "N", 3])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch or "N", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [1.0, -1.0, 0.5])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, 0.5, 0.0])
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [logits, probs], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in spec.to_metadata().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return spec


def expected_logits(x: np.ndarray) -> np.ndarray:
    m = x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True)
    return m * np.array([[1.0, -1.0, 0.5]], np.float32) + np.array([0.0, 0.5, 0.0], np.float32)
