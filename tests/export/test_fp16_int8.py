"""Precision in the graph: fp16 with fp32 I/O, calibrated int8 Q/DQ, and export_model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common", reason="fp16 conversion needs onnxconverter-common")

from onnx import numpy_helper  # noqa: E402

from covidedge.data.synth import make_synthetic_dataset  # noqa: E402
from covidedge.errors import BadInputError, IncompatibleModelError  # noqa: E402
from covidedge.export import export_model  # noqa: E402
from covidedge.export.calibration import CalibrationSet, make_calibration_set  # noqa: E402
from covidedge.export.onnx import export_onnx, synthetic_images  # noqa: E402
from covidedge.formats.onnxfile import read_onnx_metadata
from covidedge.export.fp16 import convert_fp16
from covidedge.export.calibrators import entropy_threshold
from covidedge.export.int8 import inspect_qdq, quantize_int8
from covidedge.formats.onnxfile import graph_precision
from tests.graphs import tiny_checkpoint  # noqa: E402

SIZE = 64
BINS = 512  # entropy / percentile histogram bins in tests (2048 by default; fewer is faster)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny checkpoints and their fp32 graphs: {"classifier": (ckpt, onnx), "segmenter": ...}."""
    folder = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    out = {}
    for task in ("classifier", "segmenter"):
        ckpt = tiny_checkpoint(folder / f"{task}.pt", task, SIZE)
        export_onnx(ckpt, folder / f"{task}.onnx")
        out[task] = (ckpt, folder / f"{task}.onnx")
    return out


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """A 9-image calibration set from a synthetic dataset at the models' input size."""
    folder = tmp_path_factory.mktemp("calib")
    root = make_synthetic_dataset(folder / "data", per_class=3, size=SIZE, splits=("Train",))
    return make_calibration_set(root, 9, input_size=SIZE, out=folder / "calib.json")


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))


def _io_types(model):
    return {vi.name: vi.type.tensor_type.elem_type
            for vi in [*model.graph.input, *model.graph.output]}


def test_fresh_model_graph_shares_initializers_without_identity_nodes(models):
    # fresh BatchNorms fold into equal (zero) biases that torch's exporter shares
    model = onnx.load(str(models["segmenter"][1]))
    assert "Identity" not in {n.op_type for n in model.graph.node}
    uses = {}
    for n in model.graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    inits = {t.name for t in model.graph.initializer}
    assert any(uses.get(name, 0) > 1 for name in inits)  # one tensor read by several convs


# -- fp16 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,final", [("classifier", "Softmax"), ("segmenter", "Sigmoid")])
def test_fp16_graph_has_fp32_io_runs_and_keeps_the_output_activation_fp32(models, tmp_path, task,
                                                                          final):
    _, src = models[task]
    dst = convert_fp16(src, tmp_path / "half.onnx")
    model = onnx.load(str(dst))
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert _io_types(model) == {"image": F32, "logits": F32, "probabilities": F32}
    assert graph_precision(dst) == "fp16"
    # most weights are fp16 now
    kinds = [t.data_type for t in model.graph.initializer if len(t.dims) == 4]
    assert kinds and all(k == F16 for k in kinds)
    # the output activation reads and writes fp32 tensors
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    node = next(n for n in model.graph.node if n.op_type == final)
    assert list(node.output) == ["probabilities"]
    assert types[node.input[0]] == F32 and types["probabilities"] == F32
    # it runs in ONNX Runtime and stays close to fp32
    x = synthetic_images(2, (SIZE, SIZE), seed=4)
    a, b = _run(src, x), _run(dst, x)
    assert b["probabilities"].dtype == np.float32
    assert np.abs(a["probabilities"] - b["probabilities"]).max() < 5e-3
    meta = read_onnx_metadata(dst)
    assert meta["covidedge.precision"] == "fp16"
    vs = json.loads(meta["covidedge.parity_vs_fp32"])
    assert vs["n"] == 4 and vs["max_abs_diff"]["probabilities"] < 5e-3
    assert "Softmax" in meta["covidedge.fp16_fp32_ops"].split(",")


def test_fp16_refuses_a_graph_that_is_not_fp32(models, tmp_path):
    half = convert_fp16(models["classifier"][1], tmp_path / "half.onnx")
    with pytest.raises(BadInputError, match="already fp16, expected an fp32 graph"):
        convert_fp16(half, tmp_path / "quarter.onnx")


# -- int8 ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_graphs(models, calib, tmp_path_factory):
    """The segmenter quantized with entropy, twice (to check determinism)."""
    folder = tmp_path_factory.mktemp("int8")
    src = models["segmenter"][1]
    out = {"entropy": quantize_int8(src, folder / "entropy.onnx", calib, method="entropy",
                                   histogram_bins=BINS)}
    again = CalibrationSet.load(calib.path)  # the same manifest, read back from disk
    out["entropy_again"] = quantize_int8(src, folder / "entropy_again.onnx", again,
                                         method="entropy", histogram_bins=BINS)
    return out


@pytest.fixture(scope="module")
def tail_calib(tmp_path_factory):
    """Calibration images whose pixels have a long tail: mostly dark (exponential, mean 0.06)
    with one white pixel in one image, so the input's range is 1.0 but 99.99 % of it is far
    below, the case where the three methods must disagree."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("tail")
    rng = np.random.default_rng(0)
    for ci, label in enumerate(("COVID-19", "Non-COVID", "Normal")):
        images = folder / "data" / "Train" / label / "images"
        images.mkdir(parents=True)
        for i in range(3):
            v = np.clip(rng.exponential(0.06, (SIZE, SIZE)), 0, 1)
            if ci == 0 and i == 0:
                v[10, 10] = 1.0
            Image.fromarray(np.round(v * 255).astype(np.uint8)).save(images / f"img{i}.png")
    return make_calibration_set(folder / "data", 9, input_size=SIZE, out=folder / "tail.json")


def test_int8_graph_is_what_tensorrt_accepts(int8_graphs):
    path = int8_graphs["entropy"]
    assert graph_precision(path) == "int8"
    info = inspect_qdq(path)
    assert info["quantize_nodes"] > 5 and info["dequantize_nodes"] > info["quantize_nodes"]
    assert set(info["dtypes"]) == {"int8"}
    assert info["zero_points_all_zero"] and info["nonzero_zero_points"] == []
    assert info["weights_per_tensor"] == 0 and info["weights_per_channel"] >= 5
    assert info["tensorrt_compatible"]
    # read the graph directly too: every zero point is an int8 zero, weight scales are vectors
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any()
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                w, scale = inits[node.input[0]], inits[node.input[1]]
                assert w.dtype == np.int8 and scale.shape == (w.shape[0],)
                assert np.abs(w).max() <= 127  # symmetric: -128 is never used
    # the layers that write the outputs stay float; probabilities are not rounded to 8 bits
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers["probabilities"] == "Sigmoid" and producers["logits"] == "Conv"
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # plain ONNX: no contrib domains declared or used
    assert [(i.domain, i.version) for i in model.opset_import] == [("", 17)]
    assert {n.domain for n in model.graph.node} == {""}


def test_int8_runs_and_records_its_calibration(int8_graphs, calib, models):
    path = int8_graphs["entropy"]
    x = synthetic_images(3, (SIZE, SIZE), seed=2)
    a, b = _run(models["segmenter"][1], x), _run(path, x)
    assert b["probabilities"].shape == (3, 2, SIZE, SIZE)
    assert np.mean((a["probabilities"] > 0.5) == (b["probabilities"] > 0.5)) > 0.9
    meta = read_onnx_metadata(path)
    assert meta["covidedge.precision"] == "int8"
    assert meta["covidedge.calibration_sha256"] == calib.sha256
    assert meta["covidedge.calibration_method"] == "entropy"
    assert meta["covidedge.calibration_images"] == "9"
    assert meta["covidedge.tensorrt_compatible"] == "true"
    assert "covidedge.spec" in meta  # the spec survives quantization


def test_same_manifest_gives_a_byte_identical_model(int8_graphs):
    assert int8_graphs["entropy"].read_bytes() == int8_graphs["entropy_again"].read_bytes()


def test_methods_give_different_scales(models, tail_calib, tmp_path):
    src = models["segmenter"][1]
    scales = {}
    for m in ("minmax", "entropy", "percentile"):
        bins = {} if m == "minmax" else {"histogram_bins": BINS}  # minmax takes no histogram
        path = quantize_int8(src, tmp_path / f"{m}.onnx", tail_calib, method=m, **bins)
        scales[m] = inspect_qdq(path)["activation_scales"]
        meta = read_onnx_metadata(path)
        assert meta["covidedge.calibration_method"] == m
        assert meta["covidedge.calibration_percentile"] == ("99.99" if m == "percentile" else "")
    assert scales["minmax"].keys() == scales["entropy"].keys() == scales["percentile"].keys()
    # the chosen activation: the input image, read from its QuantizeLinear scale initializer
    s = {m: v["image"] for m, v in scales.items()}
    assert s["minmax"] == pytest.approx(1.0 / 127)  # the white pixel sets the range
    assert len({round(v * 127, 4) for v in s.values()}) == 3, s
    assert s["minmax"] > s["percentile"] > s["entropy"] > 0  # both clip the tail, entropy more
    assert s["percentile"] * 127 < 0.7  # 99.99 % of the pixels are below 0.7


def test_uint8_asymmetric_is_marked_cpu_only(models, calib, tmp_path):
    path = quantize_int8(models["segmenter"][1], tmp_path / "u8.onnx", calib, method="minmax",
                         activation_type="uint8", symmetric_activations=False)
    info = inspect_qdq(path)
    assert "uint8" in info["dtypes"] and not info["tensorrt_compatible"]
    assert not info["zero_points_all_zero"]
    meta = read_onnx_metadata(path)
    assert meta["covidedge.tensorrt_compatible"] == "false"
    assert meta["covidedge.activation_type"] == "uint8"
    assert _run(path, synthetic_images(1, (SIZE, SIZE)))["logits"].shape == (1, 2, SIZE, SIZE)


def test_empty_and_unreadable_calibration_raise_naming_the_problem(models, calib, tmp_path):
    src = models["segmenter"][1]
    empty = CalibrationSet(dict(calib.manifest, images=[]), calib.data_root, tmp_path / "e.json")
    with pytest.raises(BadInputError, match="calibration set has no images"):
        quantize_int8(src, tmp_path / "e.onnx", empty, method="minmax")
    # a file that is present in the manifest but cannot be decoded
    broken_root = tmp_path / "broken"
    broken_root.mkdir()
    entries = [dict(e) for e in calib.manifest["images"]]
    (broken_root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    entries[4] = dict(entries[4], path="bad.png")
    for e in entries[:4] + entries[5:]:
        target = broken_root / e["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((calib.data_root / e["path"]).read_bytes())
    broken = CalibrationSet(dict(calib.manifest, images=entries), broken_root)
    with pytest.raises(BadInputError, match=r"bad\.png"):
        quantize_int8(src, tmp_path / "b.onnx", broken, method="minmax", batch_size=2)
    assert not (tmp_path / "e.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_int8_options_are_checked(models, calib, tmp_path):
    src = models["segmenter"][1]
    with pytest.raises(BadInputError, match="calibration method 'kl' is unknown"):
        quantize_int8(src, tmp_path / "x.onnx", calib, method="kl")
    with pytest.raises(BadInputError, match="percentile 0 is outside"):
        quantize_int8(src, tmp_path / "x.onnx", calib, method="percentile", percentile=0)
    with pytest.raises(BadInputError, match="activation type 'int4'"):
        quantize_int8(src, tmp_path / "x.onnx", calib, activation_type="int4")
    with pytest.raises(BadInputError, match="calibration manifest not found"):
        quantize_int8(src, tmp_path / "x.onnx", tmp_path / "none.json")


def test_int8_refuses_options_the_calibration_cannot_honour(models, calib, tmp_path):
    src = models["segmenter"][1]
    with pytest.raises(BadInputError, match="percentile applies with method='percentile'"):
        quantize_int8(src, tmp_path / "x.onnx", calib, method="minmax", percentile=99.9)
    with pytest.raises(BadInputError, match="histogram_bins applies with method='entropy' or"):
        quantize_int8(src, tmp_path / "x.onnx", calib, method="minmax", histogram_bins=512)
    # a calibration cache brings its own method and options
    with pytest.raises(BadInputError, match="method, percentile come from the calibration cache"):
        quantize_int8(src, tmp_path / "x.onnx", None, ranges=tmp_path / "c.json",
                      method="percentile", percentile=99.9)
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_must_match_the_input_size(models, calib, tmp_path):
    small = make_calibration_set(calib.data_root, 3, input_size=32, out=tmp_path / "c32.json")
    with pytest.raises(IncompatibleModelError,
                       match="calibration images are 32x32 px but the graph takes 64x64"):
        quantize_int8(models["segmenter"][1], tmp_path / "x.onnx", small, method="minmax")


def test_entropy_threshold_clips_a_long_tail_but_not_a_uniform_range():
    rng = np.random.default_rng(0)
    uniform = rng.random(200_000)
    h, e = np.histogram(uniform, bins=1024, range=(0, 1))
    assert entropy_threshold(h, e) == pytest.approx(1.0, abs=0.01)
    tail = np.abs(rng.laplace(size=200_000))
    h, e = np.histogram(tail, bins=1024, range=(0, tail.max()))
    t = entropy_threshold(h, e)
    assert 0.2 * tail.max() < t < 0.9 * tail.max()


# -- export_model ----------------------------------------------------------------------------
def test_export_model_fp16_and_int8_reports(models, calib, tmp_path):
    ckpt = models["segmenter"][0]
    half = export_model(ckpt, tmp_path / "s16.onnx", precision="fp16")
    assert half.precision == "fp16" and graph_precision(half.path) == "fp16"
    assert half.parity["max_abs_diff"]["probabilities"] < 5e-3
    assert half.parity["vs_fp32_graph"]["n"] == 4
    q = export_model(ckpt, tmp_path / "s8.onnx", precision="int8", calibration=calib.path,
                     method="minmax", fp32_out=tmp_path / "s32.onnx")
    assert q.precision == "int8" and q.details["calibration"]["sha256"] == calib.sha256
    assert q.metadata["covidedge.calibration_sha256"] == calib.sha256
    assert q.metadata["covidedge.source_sha256"] == q.details["fp32_sha256"]
    assert graph_precision(tmp_path / "s32.onnx") == "fp32"  # kept where asked
    assert q.parity["mask_agreement"] > 0.9 and "vs_fp32_graph" in q.parity
    assert q.size_mb < half.size_mb


def test_export_model_refuses_options_it_would_ignore(models, tmp_path):
    ckpt = models["classifier"][0]
    with pytest.raises(BadInputError, match="int8 export needs calibration images"):
        export_model(ckpt, tmp_path / "x.onnx", precision="int8")
    with pytest.raises(BadInputError, match="calibration appl.* int8 export only"):
        export_model(ckpt, tmp_path / "x.onnx", precision="fp16", calibration="c.json")
    with pytest.raises(BadInputError, match="precision 'int4' is unknown"):
        export_model(ckpt, tmp_path / "x.onnx", precision="int4")
    with pytest.raises(BadInputError, match="does not take frobnicate"):
        export_model(ckpt, tmp_path / "x.onnx", frobnicate=1)
