"""Tiny hand-made ONNX graphs that behave like covidedge models (for runtime tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from covidedge.spec import ModelSpec, classifier_spec, segmenter_spec


def save_with_spec(graph, spec: ModelSpec, path) -> None:
    """Wrap ``graph`` in an opset-17 model carrying ``spec`` in its metadata, check it, save it."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in spec.to_metadata().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


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
    save_with_spec(graph, spec, path)
    return spec


def expected_logits(x: np.ndarray) -> np.ndarray:
    m = x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True)
    return m * np.array([[1.0, -1.0, 0.5]], np.float32) + np.array([0.0, 0.5, 0.0], np.float32)


SIZE = 32  # model input size (px) of the hand-made graphs


def tiny_segmenter_onnx(path, size: int = SIZE, batch=None) -> None:
    """lungs logit = 20 (0.9 - x); infection logit = 20 (0.2 - |x - 0.7|); probabilities = sigmoid."""
    spec = segmenter_spec(model_name="tiny", input_size=(size, size))
    n = batch or "N"
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, 1, size, size])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, 2, size, size])
            for name in ("logits", "probabilities")]
    consts = [helper.make_tensor(name, TensorProto.FLOAT, [], [v])
              for name, v in (("c09", 0.9), ("c07", 0.7), ("c02", 0.2), ("k", 20.0))]
    nodes = [
        helper.make_node("Sub", ["c09", "image"], ["l0"]),
        helper.make_node("Mul", ["l0", "k"], ["lungs"]),
        helper.make_node("Sub", ["image", "c07"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("Sub", ["c02", "ad"], ["i0"]),
        helper.make_node("Mul", ["i0", "k"], ["infection"]),
        helper.make_node("Concat", ["lungs", "infection"], ["logits"], axis=1),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "tiny_seg", [x], outs, initializer=consts)
    save_with_spec(graph, spec, path)


def tiny_models(folder) -> tuple:
    """(classifier.onnx, segmenter.onnx) hand-made graphs of input size SIZE in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls, seg = folder / "cls.onnx", folder / "seg.onnx"
    if not cls.exists():
        tiny_classifier_onnx(cls, size=SIZE)
    if not seg.exists():
        tiny_segmenter_onnx(seg)
    return cls, seg


def xray(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """A drawn X-ray (uint8): body 255, two lung fields 51 (0.2), an opacity 178 (~0.7) in the
    left lung. Regions are aligned to eighths of the size so that they survive resizing."""
    img = np.full((h, w), 255, np.uint8)
    img[h // 8: 7 * h // 8, w // 8: 3 * w // 8] = 51
    img[h // 8: 7 * h // 8, 5 * w // 8: 7 * w // 8] = 51
    img[h // 4: h // 2, w // 8: w // 4] = 178
    return img


def expected_masks(img_u8: np.ndarray):
    x = img_u8.astype(np.float32) / 255.0
    return x < 0.9, np.abs(x - 0.7) < 0.2
