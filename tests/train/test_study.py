"""The loss study's verdict, table and figure from given rows (no training here; the study end to
end is in tests/cli/test_train_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidedge.train.study import CONVERGED_DELTA, LossStudyResult, _plot_study

NAN = float("nan")
SETTINGS = dict(epochs=3, variant=None, image_size=64, base_width=8, depth=3, batch_size=4, lr=1e-3,
                limit_per_class=None, seed=0, data_root="d")


def _row(loss, inf, sev, fp=0.01, converged=True):
    return {"loss": loss, "lung_dice": 0.9, "lung_iou": 0.8, "infection_dice": inf,
            "infection_iou": inf / 2 if inf == inf else NAN, "fp_infection_fraction": fp,
            "severity_mae": sev, "best_epoch": 3, "seconds": 1.0, "run_dir": loss,
            "last_change": 0.0 if converged else 2 * CONVERGED_DELTA, "converged": converged}


def test_verdict_ranks_by_infection_dice_and_severity():
    result = LossStudyResult(Path("s"), [_row("bce", 0.40, 0.30), _row("dice", 0.55, 0.35, fp=0.2),
                                         _row("focal", NAN, 0.5, converged=False)], SETTINGS)
    v = result.verdict()
    assert (v["winner"], v["runner_up"]) == ("dice", "bce") and v["margin"] == pytest.approx(0.15)
    assert v["best_severity"] == "bce" and v["severity_margin"] == pytest.approx(0.05)
    assert v["all_converged"] is False and v["not_converged"] == ["focal"]
    md = result.to_markdown()
    assert "| dice **best** |" in md and "15.00 Dice points ahead of bce" in md
    assert "| focal | 0.900 | n/a |" in md and "Not converged within the budget: focal" in md


def test_no_finite_infection_dice_has_no_winner():
    v = LossStudyResult(Path("s"), [_row("bce", NAN, NAN)], SETTINGS).verdict()
    assert v["winner"] is None and v["not_converged"] == ["bce"]


def test_comparison_png_has_a_bar_group_per_metric(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "comparison.png"
    _plot_study(out, [_row("bce", 0.40, 0.30), _row("focal", NAN, 0.5)])  # NaN: a gap, not a 0 bar
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000


def test_study_refuses_a_classifier_variant_before_training(tmp_path):
    from covidedge.errors import BadInputError
    from covidedge.train.study import study_losses

    with pytest.raises(BadInputError, match="'xception256' is a classifier variant"):
        study_losses(tmp_path / "data", tmp_path / "study", losses=["bce"], variant="xception256")
    assert not (tmp_path / "study").exists()
