"""Accuracy under shifts: every shift keeps the image's size and range and changes it; the
report has one row per shift and repeats exactly."""

from __future__ import annotations

import numpy as np
import pytest

from covidedge.evaluation.robustness import SHIFTS, classifier_robustness, format_robustness


@pytest.mark.parametrize("name", list(SHIFTS))
def test_each_shift_keeps_size_and_range_and_changes_the_image(name):
    yy, xx = np.mgrid[0:96, 0:80]
    g = (0.3 + 0.5 * np.exp(-((xx - 40) ** 2 + (yy - 48) ** 2) / 900.0)).astype(np.float32)
    out = np.asarray(SHIFTS[name](g, np.random.default_rng(0)))
    assert out.shape == g.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert np.abs(out - g).max() > 1e-3


def test_report_rows_and_repeatability(tmp_path):
    pytest.importorskip("torch")
    import torch

    from covidedge.data.synth import make_synthetic_dataset
    from tests.graphs import tiny_checkpoint

    data = make_synthetic_dataset(tmp_path / "d", per_class=3, size=48, splits=("Val",))
    torch.manual_seed(0)
    ckpt = tiny_checkpoint(tmp_path / "c.pt", "classifier", 32)
    a = classifier_robustness(ckpt, data, "Val", batch_size=4)
    b = classifier_robustness(ckpt, data, "Val", batch_size=4)
    assert a["rows"] == b["rows"] and a["images"] == 9
    assert [r["shift"] for r in a["rows"]] == ["none (clean)", *SHIFTS]
    assert a["rows"][0]["agreement"] == 1.0
    for r in a["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0
    assert a["worst_delta_points"] == min(r["delta_points"] for r in a["rows"])
    assert "| JPEG quality 30 |" in format_robustness(a)
