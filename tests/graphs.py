"""The ONNX graphs the tests run, built here and nowhere else.

- Hand-made graphs whose outputs are known exactly (``tiny_classifier_onnx``,
  ``tiny_segmenter_onnx``, ``tiny_models``), with the drawn X-ray ``xray`` and the outputs they
  should give (``expected_logits``, ``expected_masks``).
- Hand-made graphs in each precision, shaped like covidedge models (``tiny_precision_onnx``):
  fp32, fp16 (casts around the body) and int8 (symmetric Q/DQ on the input, per-channel int8
  weights), as the export writes them.
- Small probe models for graph inspection (``qdq_probe_model``, ``empty_model``).
- Graphs as ``covidedge export`` writes them from tiny random-weight networks
  (``exported_graphs``; needs torch).
- ``run_onnx``: a graph's outputs on ONNX Runtime's CPU provider, the reference other backends
  are compared against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from covidedge.spec import ModelSpec, classifier_spec, segmenter_spec

#: Model input size (px) of the hand-made graphs of ``tiny_models``.
SIZE = 32
#: Model input size (px) of the graphs of ``exported_graphs``.
EXPORTED_SIZE = 64
OPSET = 17


def save_with_spec(graph, spec: ModelSpec, path, precision: Optional[str] = None) -> None:
    """Wrap ``graph`` in an opset-17 model carrying ``spec`` (and ``precision`` when given) in its
    metadata, check it with the full checker, save it."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    meta = dict(spec.to_metadata())
    if precision is not None:
        meta["covidedge.precision"] = precision
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# -- graphs with known outputs --------------------------------------------------------------------
def tiny_classifier_onnx(path, size: int = 8, batch=None, spec: ModelSpec | None = None) -> ModelSpec:
    """logits = mean over pixels of x times [1, -1, 0.5] + [0, 0.5, 0]; probabilities = softmax."""
    spec = spec or classifier_spec(model_name="tiny", input_size=(size, size))
    n = batch or "N"
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, 1, size, size])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, 3])
            for name in ("logits", "probabilities")]
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [1.0, -1.0, 0.5])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, 0.5, 0.0])
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    save_with_spec(helper.make_graph(nodes, "tiny", [x], outs, initializer=[w, b]), spec, path)
    return spec


def strip_metadata(path) -> None:
    """Remove every ``metadata_props`` entry (the spec among them) from the ONNX file at ``path``."""
    m = onnx.load(str(path))
    del m.metadata_props[:]
    onnx.save(m, str(path))


def expected_logits(x: np.ndarray) -> np.ndarray:
    """The logits ``tiny_classifier_onnx`` gives for the NCHW batch ``x``."""
    m = x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True)
    return m * np.array([[1.0, -1.0, 0.5]], np.float32) + np.array([0.0, 0.5, 0.0], np.float32)


def tiny_segmenter_onnx(path, size: int = SIZE, batch=None) -> ModelSpec:
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
    save_with_spec(helper.make_graph(nodes, "tiny_seg", [x], outs, initializer=consts), spec, path)
    return spec


def expected_masks(img_u8: np.ndarray):
    """(lungs, infection) boolean masks ``tiny_segmenter_onnx`` gives for a uint8 image at model size."""
    x = img_u8.astype(np.float32) / 255.0
    return x < 0.9, np.abs(x - 0.7) < 0.2


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


def smooth_xray(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """``xray`` with its edges softened (Gaussian blur of 1/16 of the side), as a radiograph's
    are: it passes the appearance check behind the ``out_of_distribution`` flag, which the
    hard-edged drawing does not."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(xray(h, w)).filter(ImageFilter.GaussianBlur(min(h, w) / 16))
    return np.asarray(img, dtype=np.uint8)


# -- one graph per precision ----------------------------------------------------------------------
def tiny_precision_onnx(path, precision: str = "fp32", task: str = "classifier", size: int = 16,
                        batch=None, seed: int = 0) -> ModelSpec:
    """A random-weight graph in ``precision`` (fp32, fp16 or int8), shaped like a covidedge model.

    The classifier is Conv(1->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->3) ->
    logits -> Softmax; the segmenter Conv(1->2, 3x3) -> logits -> Sigmoid. The fp16 graph casts
    to fp16 after the input and back to fp32 before the output activation; the int8 graph has
    symmetric int8 Q/DQ on the input and per-channel int8 weights, as the export writes them.
    The precision is also written to the metadata, as the export does."""
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
    save_with_spec(graph, spec, path, precision=precision)
    return spec


def run_onnx(path, x: np.ndarray) -> Dict[str, np.ndarray]:
    """Outputs of an ONNX file on ONNX Runtime's CPU provider, as {name: array}."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x})))


# -- probe models (not saved) ---------------------------------------------------------------------
def qdq_probe_model(zero_point, dtype, opset: int = OPSET, extra=()) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Relu -> y on a 1x1x4x4 tensor, scale 0.1 and the
    given zero point (its numpy ``dtype`` is the quantized type), plus ``extra`` nodes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, dtype), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"]), *extra]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", opset)])


def empty_model(*opsets) -> onnx.ModelProto:
    """A model with no nodes that imports the (domain, version) ``opsets``."""
    return helper.make_model(helper.make_graph([], "g", [], []),
                             opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


# -- what 'covidedge export' writes ---------------------------------------------------------------
_EXPORTED: Dict[str, Dict[str, Path]] = {}


#: The tiny networks the tests train nothing with: registry name and constructor arguments per task.
TINY_NETWORKS = {"classifier": ("xception", {"width_mult": 0.125}),
                 "segmenter": ("resunet", {"base_width": 8, "depth": 2})}


def tiny_checkpoint(path, task: str, size: int, **model_kwargs) -> Path:
    """A randomly initialised tiny ``task`` network (torch's current random state) saved as a
    covidedge checkpoint for ``size`` x ``size`` inputs; ``model_kwargs`` override its width."""
    from covidedge.formats.checkpoint import save_checkpoint
    from covidedge.models.registry import create_model

    name, kw = TINY_NETWORKS[task]
    kw = {**kw, **model_kwargs}
    make_spec = classifier_spec if task == "classifier" else segmenter_spec
    spec = make_spec(model_name=name, input_size=(size, size), model_kwargs=kw)
    return save_checkpoint(path, create_model(name, **kw).eval(), spec)


def exported_graphs(tmp_path_factory) -> Dict[str, Dict[str, Path]]:
    """{task: {"fp32", "fp16", "int8-onnxruntime", "int8-tensorrt": path}}, made once per session.

    A tiny random-weight classifier (Xception, width 1/8) and segmenter (ResUNet, width 8, depth
    2) at EXPORTED_SIZE px, exported to fp32 ONNX, converted to fp16, and quantized to int8 in
    both Q/DQ placements (minmax calibration on 9 synthetic images). Needs torch."""
    if _EXPORTED:
        return _EXPORTED
    import torch

    from covidedge.data.synth import make_synthetic_dataset
    from covidedge.export.calibration import make_calibration_set
    from covidedge.export.onnx import export_onnx
    from covidedge.export.fp16 import convert_fp16
    from covidedge.export.int8 import quantize_int8
    size = EXPORTED_SIZE
    folder = tmp_path_factory.mktemp("exported")
    root = make_synthetic_dataset(folder / "data", per_class=3, size=size, splits=("Train",))
    calib = make_calibration_set(root, 9, input_size=size, out=folder / "calib.json")
    torch.manual_seed(0)
    made = {}
    for task in ("classifier", "segmenter"):
        ckpt = tiny_checkpoint(folder / f"{task}.pt", task, size)
        export_onnx(ckpt, folder / f"{task}.fp32.onnx")
        graphs = {"fp32": folder / f"{task}.fp32.onnx"}
        graphs["fp16"] = convert_fp16(graphs["fp32"], folder / f"{task}.fp16.onnx")
        for placement in ("onnxruntime", "tensorrt"):
            graphs[f"int8-{placement}"] = quantize_int8(
                graphs["fp32"], folder / f"{task}.int8-{placement}.onnx", calib, method="minmax",
                qdq_placement=placement)
        made[task] = graphs
    _EXPORTED.update(made)
    return _EXPORTED
