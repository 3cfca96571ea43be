"""The two int8 Q/DQ placements: where their Q/DQ nodes go, and how close each stays to fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("torch", reason="exporting the tiny models needs torch")
ort = pytest.importorskip("onnxruntime")

from covidedge.errors import BadInputError  # noqa: E402
from covidedge.export.onnx import synthetic_images  # noqa: E402
from covidedge.formats.onnxfile import read_onnx_metadata
from covidedge.export.int8 import TRT_QUANTIZED_OPS, quantize_int8
from tests.graphs import EXPORTED_SIZE, exported_graphs  # noqa: E402


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    return exported_graphs(tmp_path_factory)


def _wiring(path):
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name for t in model.graph.initializer}
    return model, producer, consumers, inits


def _fed_by(node, producer):
    src = producer.get(node.input[0])
    return src.op_type if src is not None else "graph input"


@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_tensorrt_placement_quantizes_weighted_op_inputs_only(graphs, task):
    model, producer, consumers, inits = _wiring(graphs[task]["int8-tensorrt"])
    nodes = model.graph.node
    # Relu reads float: no Conv -> Q -> DQ -> Relu
    assert [n.name for n in nodes if n.op_type == "Relu" and _fed_by(n, producer) == "DequantizeLinear"] == []
    # every dequantized activation feeds weighted ops only: a Relu, Add or Concat sharing the
    # tensor with a Conv reads the float tensor, not its int8-rounded copy
    for dq in (n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] not in inits):
        assert {c.op_type for c in consumers[dq.output[0]]} <= set(TRT_QUANTIZED_OPS), dq.name
    # no Q on pooling / Flatten outputs (they feed the float classifier head or a Conv directly)
    assert not [n for n in nodes if n.op_type == "QuantizeLinear"
                and _fed_by(n, producer) in ("GlobalAveragePool", "Flatten", "MaxPool", "Resize")]
    meta = read_onnx_metadata(graphs[task]["int8-tensorrt"])
    assert meta["covidedge.qdq_placement"] == "tensorrt" and meta["covidedge.tensorrt_compatible"] == "true"


@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_onnxruntime_placement_quantizes_what_its_cpu_kernels_fuse(graphs, task):
    model, producer, _, _ = _wiring(graphs[task]["int8-onnxruntime"])
    relu_from_dq = [n for n in model.graph.node if n.op_type == "Relu" and _fed_by(n, producer) == "DequantizeLinear"]
    assert relu_from_dq  # Conv -> Q -> DQ -> Relu: what the TensorRT placement avoids
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    q_trt = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(graphs[task]["int8-tensorrt"])).graph.node)
    assert q_trt < q
    assert read_onnx_metadata(graphs[task]["int8-onnxruntime"])["covidedge.qdq_placement"] == "onnxruntime"


def _run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))


def test_both_placements_stay_close_to_fp32_on_onnxruntime(graphs):
    """Random-weight tiny models on 8 synthetic images; the printed numbers are the measurement."""
    x = synthetic_images(8, (EXPORTED_SIZE, EXPORTED_SIZE), seed=11)
    for task in ("classifier", "segmenter"):
        ref = _run(graphs[task]["fp32"], x)
        for placement in ("onnxruntime", "tensorrt"):
            got = _run(graphs[task][f"int8-{placement}"], x)
            r, g = ref["logits"].astype(np.float64), got["logits"].astype(np.float64)
            sqnr = 10 * np.log10((r ** 2).sum() / ((r - g) ** 2).sum())
            line = f"{task} int8-{placement}: logits SQNR {sqnr:.1f} dB"
            assert sqnr > 15, line
            if task == "segmenter":
                agree = np.mean((ref["probabilities"] > 0.5) == (got["probabilities"] > 0.5))
                line += f", mask pixels agreeing with fp32 {agree:.4f}"
                assert agree > 0.97, line
            print(line)


def test_placement_options_are_checked(graphs, tmp_path):
    src = graphs["segmenter"]["fp32"]
    with pytest.raises(BadInputError, match="Q/DQ placement 'gpu' is unknown; expected one of onnxruntime, tensorrt"):
        quantize_int8(src, tmp_path / "a.onnx", None, qdq_placement="gpu")
    with pytest.raises(BadInputError, match="tensorrt Q/DQ placement needs signed symmetric int8 activations"):
        quantize_int8(src, tmp_path / "a.onnx", None, qdq_placement="tensorrt", activation_type="uint8",
                      symmetric_activations=False)
    assert not (tmp_path / "a.onnx").exists()
