"""Calibrated probabilities: ECE and reliability bins, temperature fitting, and a temperature
carried by the spec into the exported graph, so every backend applies it."""

from __future__ import annotations

import numpy as np
import pytest

from covidedge.errors import IncompatibleModelError
from covidedge.metrics import (apply_temperature, expected_calibration_error, fit_temperature,
                               reliability_bins)
from covidedge.spec import ModelSpec, classifier_spec, segmenter_spec


def _sampled(n=4000, sharpen=3.0, seed=0):
    """Labels drawn from softmax(logits), probabilities reported as softmax(sharpen * logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 1.5
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true_p])
    shown = np.exp(sharpen * logits)
    return shown / shown.sum(1, keepdims=True), y, true_p


def test_ece_is_small_for_calibrated_and_large_for_overconfident_probabilities():
    over, y, true_p = _sampled()
    assert expected_calibration_error(true_p, y) < 0.03
    assert expected_calibration_error(over, y) > 0.10
    bins = reliability_bins(over, y)
    assert sum(bins["count"]) == len(y) and len(bins["accuracy"]) == 15


def test_ece_by_hand():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin (0.867, 0.933]: confidence 0.9, accuracy 0.5; bin (0.533, 0.6]: 0.6 vs 1.0
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_fit_temperature_undoes_a_sharpened_softmax():
    over, y, _ = _sampled(sharpen=3.0)
    t = fit_temperature(over, y)
    assert 2.6 < t < 3.4
    assert expected_calibration_error(apply_temperature(over, t), y) < 0.03
    assert np.allclose(apply_temperature(over, 1.0), over, atol=1e-6)
    assert (apply_temperature(over, t).argmax(1) == over.argmax(1)).all()  # answers unchanged


def test_the_spec_carries_a_temperature_and_old_specs_read_as_before():
    spec = classifier_spec("xception", input_size=(32, 32))
    assert "temperature" not in spec.to_dict()
    hot = ModelSpec.from_dict({**spec.to_dict(), "temperature": 1.7})
    assert hot.temperature == 1.7 and ModelSpec.from_json(hot.to_json()) == hot
    assert "logits / 1.7" in hot.output_semantics()["probabilities"]
    with pytest.raises(IncompatibleModelError, match="temperature"):
        ModelSpec.from_dict({**spec.to_dict(), "temperature": 0.0})
    with pytest.raises(IncompatibleModelError, match="temperature"):
        ModelSpec.from_dict({**segmenter_spec("resunet").to_dict(), "temperature": 2.0})


def test_an_exported_graph_applies_the_checkpoint_temperature(tmp_path):
    pytest.importorskip("torch")
    import onnxruntime as ort
    import torch

    from covidedge.export.onnx import export_onnx
    from covidedge.formats.checkpoint import with_temperature
    from covidedge.formats.onnxfile import spec_from_onnx
    from tests.graphs import tiny_checkpoint

    torch.manual_seed(0)
    src = tiny_checkpoint(tmp_path / "cls.pt", "classifier", 32)
    hot = with_temperature(src, tmp_path / "cls-t.pt", 2.5)
    export_onnx(hot, tmp_path / "cls-t.onnx")
    assert spec_from_onnx(tmp_path / "cls-t.onnx").temperature == 2.5
    sess = ort.InferenceSession(str(tmp_path / "cls-t.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    logits, probs = sess.run(["logits", "probabilities"], {"image": x})
    e = np.exp((logits - logits.max(1, keepdims=True)) / 2.5)
    assert np.allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)
    from covidedge.fileio import OutputExistsError
    with pytest.raises(OutputExistsError):
        with_temperature(src, hot, 1.2)  # never over an existing file
