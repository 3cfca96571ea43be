"""ONNX export: every registered model, dynamic and static batch, metadata, checks and parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from covidedge.errors import BadInputError, IncompatibleModelError  # noqa: E402
from covidedge.export.onnx import ExportReport, export_onnx, parity_stats, synthetic_images
from covidedge.formats.onnxfile import read_onnx_metadata
from covidedge.models.registry import create_model, list_models, model_task  # noqa: E402
from covidedge.spec import ModelSpec, classifier_spec, segmenter_spec  # noqa: E402
from covidedge.formats.checkpoint import checkpoint_sha256, save_checkpoint  # noqa: E402

SIZE = 64
#: Small variants of each registered model (tests stay fast on two CPU cores).
SMALL = {"xception": {"width_mult": 0.125}, "resunet": {"base_width": 8, "depth": 2}}


def _checkpoint(folder, name, size=SIZE):
    """A checkpoint of a small, randomly initialised model with non-trivial BatchNorm
    statistics (so folding them into the convolutions is exercised)."""
    torch.manual_seed(0)
    kw = SMALL[name]
    model = create_model(name, **kw).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    make = classifier_spec if model_task(name) == "classifier" else segmenter_spec
    spec = make(model_name=name, input_size=(size, size), model_kwargs=kw)
    return save_checkpoint(folder / f"{name}.pt", model, spec), model, spec


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{model name: (checkpoint, onnx path, report, torch model)} with a dynamic batch axis."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in list_models():
        if name not in SMALL:
            pytest.fail(f"registered model {name!r} has no small test variant in SMALL")
        ckpt, model, spec = _checkpoint(folder, name)
        path = folder / f"{name}.onnx"
        # the classifier's parity check runs on given images, the segmenter's on the default
        x = synthetic_images(5, (SIZE, SIZE), seed=11) if name == "xception" else None
        out[name] = (ckpt, path, export_onnx(ckpt, path, parity_inputs=x), model)
    return out


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_exports_with_a_dynamic_batch_and_matches_torch(exported, name):
    ckpt, path, report, model = exported[name]
    assert isinstance(report, ExportReport)
    assert report.inputs == {"image": ["batch", 1, SIZE, SIZE]}
    assert set(report.outputs) == {"logits", "probabilities"}
    for batch in (1, 3):
        x = synthetic_images(batch, (SIZE, SIZE), seed=7 + batch)
        got = _run(path, x)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
        probs = (torch.softmax if model_task(name) == "classifier" else
                 lambda t, dim=None: torch.sigmoid(t))(torch.from_numpy(logits), dim=1).numpy()
        assert got["logits"].shape == logits.shape and got["logits"].shape[0] == batch
        np.testing.assert_allclose(got["logits"], logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["probabilities"], probs, atol=1e-4, rtol=0)
    # the report's own parity check ran on several images and is within 1e-4
    assert report.parity["n"] >= 2
    assert max(report.parity["max_abs_diff"].values()) < 1e-4
    key = "argmax_agreement" if model_task(name) == "classifier" else "mask_agreement"
    assert report.parity[key] == 1.0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_graph_is_clean_self_contained_and_checked(exported, name):
    ckpt, path, report, _ = exported[name]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops  # folded: no training-mode BN
    assert "Identity" not in ops  # shared initializers are read directly
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert not list(path.parent.glob(path.name + ".data"))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert {i.domain: i.version for i in model.opset_import}[""] == 17
    final = "Softmax" if model_task(name) == "classifier" else "Sigmoid"
    assert [n.op_type for n in model.graph.node if "probabilities" in n.output] == [final]
    assert report.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert report.size_mb == pytest.approx(path.stat().st_size / 1e6, abs=1e-3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_metadata_carries_spec_and_provenance(exported, name):
    ckpt, path, report, _ = exported[name]
    meta = read_onnx_metadata(path)
    spec = ModelSpec.from_metadata(meta)
    assert spec.model_name == name and spec.input_size == (SIZE, SIZE)
    assert spec.model_kwargs == SMALL[name]
    assert meta["covidedge.checkpoint_sha256"] == checkpoint_sha256(ckpt)
    assert meta["covidedge.precision"] == "fp32"
    assert meta["covidedge.opset"] == "17"
    assert meta["covidedge.version"] == __import__("covidedge").__version__
    assert meta["covidedge.preprocessing"] == "gray-unit-bilinear-v1"
    assert json.loads(meta["covidedge.outputs"])["probabilities"].startswith("probabilities")
    assert report.to_dict()["metadata"] == meta


def test_static_batch_and_other_opset(tmp_path, exported):
    ckpt = exported["resunet"][0]
    path = tmp_path / "static.onnx"
    report = export_onnx(ckpt, path, dynamic_batch=False, opset=13)
    assert report.inputs == {"image": [1, 1, SIZE, SIZE]}
    assert report.outputs["probabilities"] == [1, 2, SIZE, SIZE]
    model = onnx.load(str(path))
    assert {i.domain: i.version for i in model.opset_import}[""] == 13
    assert read_onnx_metadata(path)["covidedge.dynamic_batch"] == "false"
    x = synthetic_images(1, (SIZE, SIZE), seed=3)
    assert _run(path, x)["probabilities"].shape == (1, 2, SIZE, SIZE)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Got: 2 Expected: 1"):  # a fixed batch refuses 2 images
        sess.run(None, {"image": synthetic_images(2, (SIZE, SIZE))})


def test_parity_inputs_are_used_and_checked(tmp_path, exported):
    assert exported["xception"][2].parity["n"] == 5  # the images it was given
    assert exported["resunet"][2].parity["n"] == 4   # the default synthetic batch
    with pytest.raises(BadInputError, match=r"parity_inputs has shape \(2, 1, 32, 32\)"):
        export_onnx(exported["xception"][0], tmp_path / "q.onnx",
                    parity_inputs=np.zeros((2, 1, 32, 32), np.float32))


def test_bad_requests_are_refused_with_one_line_errors(tmp_path, exported):
    ckpt = exported["xception"][0]
    with pytest.raises(BadInputError, match="opset 21 is outside 13..20"):
        export_onnx(ckpt, tmp_path / "a.onnx", opset=21)
    with pytest.raises(BadInputError, match="opset 11 is outside"):
        export_onnx(ckpt, tmp_path / "a.onnx", opset=11)
    with pytest.raises(BadInputError, match="must end in .onnx"):
        export_onnx(ckpt, tmp_path / "a.pt")
    with pytest.raises(BadInputError, match="exporter 'magic' is unknown"):
        export_onnx(ckpt, tmp_path / "a.onnx", exporter="magic")
    with pytest.raises(BadInputError, match="checkpoint file not found"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "a.onnx")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(IncompatibleModelError, match="not a readable covidedge checkpoint"):
        export_onnx(junk, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_parity_stats_measure_what_they_say():
    ref = {"logits": np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
           "probabilities": np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])}
    got = {"logits": ref["logits"] + [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]],
           "probabilities": np.array([[0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])}
    s = parity_stats("classifier", ref, got)
    assert s["max_abs_diff"] == {"logits": 0.5, "probabilities": pytest.approx(0.4)}
    assert s["argmax_agreement"] == 0.5 and s["n"] == 2
    seg = parity_stats("segmenter", {"logits": np.zeros((1, 1, 2, 2)),
                                     "probabilities": np.array([[[[0.9, 0.1], [0.6, 0.4]]]])},
                       {"logits": np.zeros((1, 1, 2, 2)),
                        "probabilities": np.array([[[[0.9, 0.1], [0.4, 0.4]]]])})
    assert seg["mask_agreement"] == 0.75


def test_synthetic_images_are_deterministic_and_in_range():
    a = synthetic_images(3, (48, 40), seed=5)
    assert a.shape == (3, 1, 48, 40) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == 1.0
    np.testing.assert_array_equal(a, synthetic_images(3, (48, 40), seed=5))
    assert not np.array_equal(a, synthetic_images(3, (48, 40), seed=6))
