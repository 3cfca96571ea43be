"""Evaluation: numbers checked against oracle and constant models, report layout and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covidedge.data.covidqu import CovidQuDataset
from covidedge.data.imageio import read_mask
from covidedge.data.preprocess import preprocess
from covidedge.data.synth import make_synthetic_dataset
from covidedge.errors import BadInputError, DatasetError
from covidedge.evaluation import STUDY_CLASSIFIER_TEST, evaluate
from covidedge.backends.base import Runner
from covidedge.spec import classifier_spec, segmenter_spec
from covidedge.data.covidqu import select_samples

SIZE = 64


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("evaldata"), per_class=4, size=SIZE,
                                  splits=("Val",))


@pytest.fixture(scope="module")
def samples(data_root):
    return select_samples(CovidQuDataset(data_root).samples("Val"))


class ScriptedRunner(Runner):
    """A model whose outputs are looked up by the exact image it is fed (so padding, batching
    and ordering inside evaluate cannot fool the test)."""

    backend = "scripted"

    def __init__(self, spec, table, **kw):
        super().__init__(spec, "scripted-model", **kw)
        self.table = table
        self.batch_sizes = []

    def _activate(self):
        pass

    def _infer(self, x):
        self.batch_sizes.append(x.shape[0])
        probs = np.stack([self.table[row.tobytes()] for row in x]).astype(np.float32)
        logits = np.log(np.clip(probs, 1e-6, 1.0))
        return {"logits": logits, "probabilities": probs}


def _key(sample):
    return preprocess(sample.image, size=(SIZE, SIZE))[0].tobytes()


def _cls_spec():
    return classifier_spec(input_size=(SIZE, SIZE))


def _seg_spec():
    return segmenter_spec(input_size=(SIZE, SIZE))


def _truth(s):
    return np.stack([read_mask(s.lung_mask), read_mask(s.infection_mask)]).astype(np.float32)


# -- classifier ------------------------------------------------------------------------------
def test_oracle_classifier_scores_perfectly(data_root, samples):
    labels = list(_cls_spec().labels)
    table = {_key(s): np.eye(3)[labels.index(s.label)] * 0.9 + 0.1 / 3 for s in samples}
    report = evaluate(ScriptedRunner(_cls_spec(), table), data_root, "Val", batch_size=5,
                      progress=False, keep_outputs=True)
    m = report.metrics
    assert report.task == "classifier" and report.split == "Val" and report.num_images == 12
    assert m["accuracy"] == 1.0 and m["support"] == 12
    assert m["confusion_matrix"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    assert all(m["per_class"][c]["f1"] == 1.0 and m["per_class"][c]["support"] == 4 for c in labels)
    assert m["roc_auc"]["macro"] == 1.0
    assert report.predictions.tolist() == [labels.index(s.label) for s in samples]
    assert report.probabilities.shape == (12, 3)
    np.testing.assert_array_equal(report.probabilities.argmax(1), report.predictions)
    assert report.names == [s.name for s in samples]


def test_constant_classifier(data_root):
    spec = _cls_spec()

    class Constant(ScriptedRunner):
        def _infer(self, x):
            p = np.tile(np.array([[0.1, 0.2, 0.7]], np.float32), (x.shape[0], 1))
            return {"logits": np.log(p), "probabilities": p}

    report = evaluate(Constant(spec, {}), data_root, progress=False)
    m = report.metrics
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["confusion_matrix"] == [[0, 0, 4], [0, 0, 4], [0, 0, 4]]
    assert m["per_class"]["Normal"]["precision"] == pytest.approx(1 / 3)
    assert m["per_class"]["Normal"]["recall"] == 1.0
    assert m["per_class"]["COVID-19"]["recall"] == 0.0
    assert m["roc_auc"]["macro"] == pytest.approx(0.5)  # all scores tied
    assert m["macro_avg"]["f1"] == pytest.approx((2 * (1 / 3) / (1 + 1 / 3)) / 3)
    assert report.probabilities is None  # keep_outputs is off


def test_classifier_report_layout_and_files(data_root, samples, tmp_path):
    labels = list(_cls_spec().labels)
    # right on COVID-19 and Normal, Non-COVID called Normal
    fixed = {"COVID-19": 0, "Non-COVID": 2, "Normal": 2}
    table = {_key(s): np.eye(3)[fixed[s.label]] for s in samples}
    report = evaluate(ScriptedRunner(_cls_spec(), table), data_root, progress=False)
    text = report.to_text()
    lines = text.splitlines()
    header = next(line for line in lines if "precision" in line)
    assert header.split() == ["precision", "recall", "f1-score", "support"]
    for label in labels + ["accuracy", "macro avg", "weighted avg"]:
        assert any(line.strip().startswith(label) for line in lines), label
    acc_line = next(line for line in lines if line.strip().startswith("accuracy"))
    assert acc_line.split()[1:] == ["0.67", "12"]
    assert "confusion matrix" in text and "ROC-AUC" in text

    md = report.to_markdown()
    assert "published study, Test split" in md and "this model, Val" in md
    assert "| COVID-19 | 1.00 | 1.00 | 1.00 | 4 | 0.90 | 0.86 | 0.88 | 583 |" in md
    assert "| accuracy | | | 0.67 | 12 | | | 0.83 | 1166 |" in md
    assert "| Non-COVID | 0 | 0 | 4 |" in md

    out = report.save(tmp_path / "rep")
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "confusion_matrix.png",
                                                "reliability.png"}
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Calibration" in (out / "report.md").read_text()
    d = json.loads((out / "report.json").read_text())
    assert 0.0 <= d["metrics"]["ece"] <= 1.0 and sum(d["metrics"]["reliability"]["count"]) == 12
    assert d["metrics"]["accuracy"] == pytest.approx(8 / 12)
    assert d["counts"] == {"COVID-19": 4, "Non-COVID": 4, "Normal": 4}
    assert d["study_reference"]["per_class"]["Normal"] == STUDY_CLASSIFIER_TEST["per_class"]["Normal"]
    assert [r["predicted"] for r in d["per_image"]].count("Normal") == 8
    json.dumps(report.to_dict(), allow_nan=False)  # strictly JSON-safe


# -- segmenter -------------------------------------------------------------------------------
def test_oracle_segmenter(data_root, samples):
    table = {_key(s): _truth(s) for s in samples}
    report = evaluate(ScriptedRunner(_seg_spec(), table), data_root, progress=False,
                      keep_outputs=True)
    m = report.metrics
    assert m["lung_dice"] == 1.0 and m["lung_iou"] == 1.0
    assert m["infection_dice"] == 1.0 and m["infection_iou"] == 1.0
    assert m["summary"]["infection"]["images"] == 4  # COVID-19 images only
    assert m["fp_infection_fraction"] == 0.0 and m["fp_images"] == 0.0
    assert m["severity_mae"] == 0.0
    masks = report.masks()
    assert masks.shape == (12, 2, SIZE, SIZE) and masks.dtype == bool
    np.testing.assert_array_equal(masks, np.stack([_truth(s) for s in samples]).astype(bool))
    assert report.predictions is None


def test_all_infected_segmenter_reports_false_positive_area_apart(data_root, samples):
    table = {_key(s): np.ones((2, SIZE, SIZE), np.float32) for s in samples}
    report = evaluate(ScriptedRunner(_seg_spec(), table), data_root, progress=False)
    m = report.metrics
    lung_dice = [2 * read_mask(s.lung_mask).sum() / (SIZE * SIZE + read_mask(s.lung_mask).sum())
                 for s in samples]
    assert m["lung_dice"] == pytest.approx(float(np.mean(lung_dice)))
    covid = [s for s in samples if s.label == "COVID-19"]
    inf_dice = [2 * read_mask(s.infection_mask).sum() / (SIZE * SIZE + read_mask(s.infection_mask).sum())
                for s in covid]
    assert m["infection_dice"] == pytest.approx(float(np.mean(inf_dice)))
    assert m["fp_infection_fraction"] == 1.0 and m["fp_images"] == 1.0
    assert m["summary"]["infection_free"]["images"] == 8
    md = report.to_markdown()
    assert "100.00% of the image" in md and "infection (COVID-19 images) | 4 |" in md
    assert "lungs" in report.to_text() and "severity" in report.to_text()


def test_threshold_is_applied(data_root, samples):
    table = {_key(s): np.full((2, SIZE, SIZE), 0.6, np.float32) for s in samples}
    low = evaluate(ScriptedRunner(_seg_spec(), table), data_root, progress=False, threshold=0.5)
    high = evaluate(ScriptedRunner(_seg_spec(), table), data_root, progress=False, threshold=0.7)
    assert low.metrics["fp_infection_fraction"] == 1.0
    assert high.metrics["fp_infection_fraction"] == 0.0
    assert high.metrics["lung_dice"] == 0.0


def test_masks_are_the_one_rule(data_root, samples):
    from covidedge.runtime.postprocess import segmentation_masks
    from tests.runtime.test_postprocess import rule_probabilities

    lung, inf = (np.kron(m, np.ones((2, 2), np.float32)) for m in rule_probabilities())  # 64 x 64
    table = {_key(s): np.stack([lung, inf]) for s in samples}
    report = evaluate(ScriptedRunner(_seg_spec(), table), data_root, progress=False, keep_outputs=True)
    lungs, infection = segmentation_masks(lung, inf, 0.5)
    masks = report.masks()
    assert all(np.array_equal(m[0], lungs) and np.array_equal(m[1], infection) for m in masks)
    assert [r["pred_infection_pixels"] for r in report.per_image] == [int(infection.sum())] * len(samples)


# -- runner handling, batching, selection ----------------------------------------------------
def test_batches_respect_the_runner_batch_range(data_root, samples):
    table = {_key(s): np.eye(3)[0] for s in samples}
    fixed4 = ScriptedRunner(_cls_spec(), table, min_batch=4, max_batch=4)
    r = evaluate(fixed4, data_root, batch_size=16, limit_per_class=3, progress=False)
    assert r.num_images == 9 and set(fixed4.batch_sizes) == {4}  # 4 + 4 + (1 padded to 4)
    assert r.metrics["confusion_matrix"][0] == [3, 0, 0]
    small = ScriptedRunner(_cls_spec(), table, max_batch=2)
    evaluate(small, data_root, batch_size=16, progress=False)
    assert max(small.batch_sizes) == 2 and sum(small.batch_sizes) == 12


def test_runner_life_cycle_is_left_as_found(data_root, samples):
    table = {_key(s): np.eye(3)[0] for s in samples}
    idle = ScriptedRunner(_cls_spec(), table)
    evaluate(idle, data_root, progress=False)
    assert not idle.is_active
    with ScriptedRunner(_cls_spec(), table) as active:
        evaluate(active, data_root, progress=False)
        assert active.is_active


def test_limit_per_class_is_seeded(data_root, samples):
    table = {_key(s): np.eye(3)[0] for s in samples}
    a = evaluate(ScriptedRunner(_cls_spec(), table), data_root, limit_per_class=2, seed=0, progress=False)
    b = evaluate(ScriptedRunner(_cls_spec(), table), data_root, limit_per_class=2, seed=0, progress=False)
    c = evaluate(ScriptedRunner(_cls_spec(), table), data_root, limit_per_class=2, seed=3, progress=False)
    assert a.names == b.names and len(a.names) == 6 and a.names != c.names
    assert a.counts() == {"COVID-19": 2, "Non-COVID": 2, "Normal": 2}


def test_bad_arguments(data_root):
    runner = ScriptedRunner(_cls_spec(), {})
    with pytest.raises(BadInputError, match="threshold"):
        evaluate(runner, data_root, threshold=1.5)
    with pytest.raises(BadInputError, match="batch-size"):
        evaluate(runner, data_root, batch_size=0)
    with pytest.raises(DatasetError, match="no split 'Test'"):
        evaluate(runner, data_root, split="Test")
    with pytest.raises(BadInputError, match="expected a path"):
        evaluate(42, data_root)


def test_module_does_not_import_torch():
    code = ("import sys, covidedge.evaluation, covidedge.train.datasets; "
            "bad = [m for m in ('torch', 'tensorrt', 'pycuda') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- real models through runtime.load ---------------------------------------------------------
def test_checkpoint_and_its_onnx_export_agree(data_root, samples, tmp_path):
    torch = pytest.importorskip("torch")
    from covidedge.export.onnx import export_onnx
    from covidedge.models.registry import create_model
    from covidedge.formats.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("xception", width_mult=0.125).eval()
    spec = classifier_spec(input_size=(SIZE, SIZE), model_kwargs={"width_mult": 0.125})
    ckpt = save_checkpoint(tmp_path / "best.pt", model, spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep_pt = evaluate(ckpt, data_root, backend="torch", progress=False, keep_outputs=True)
        x = np.concatenate([preprocess(s.image, size=(SIZE, SIZE)) for s in samples])
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        np.testing.assert_allclose(rep_pt.probabilities, expected, atol=1e-5)
        assert rep_pt.model["backend"] == "torch"
        onnx_path = tmp_path / "m.onnx"
        export_onnx(ckpt, onnx_path)
        rep_onnx = evaluate(onnx_path, data_root, progress=False, keep_outputs=True)
    finally:
        torch.set_num_threads(threads)
    assert rep_onnx.model["backend"] == "onnxruntime"
    np.testing.assert_allclose(rep_onnx.probabilities, rep_pt.probabilities, atol=1e-4)
    assert rep_onnx.metrics["confusion_matrix"] == rep_pt.metrics["confusion_matrix"]


def test_the_study_comparison_says_like_for_like_only_when_it_is():
    from types import SimpleNamespace

    from covidedge.evaluation.run import STUDY_CLASSIFIER_TEST, EvaluationReport

    study = STUDY_CLASSIFIER_TEST["per_class"]
    labels = list(study)

    def note(split, supports):
        fake = SimpleNamespace(split=split, labels=labels, metrics={
            "support": sum(supports.values()), "per_class": {k: {"support": v} for k, v in supports.items()}})
        return EvaluationReport._study_note(fake)

    same = {k: v["support"] for k, v in study.items()}
    assert "a like-for-like comparison" in note("Test", same)
    assert "not exact" in note("Test", {k: 10 for k in labels})
    assert "not a like-for-like comparison" in note("Val", same)
