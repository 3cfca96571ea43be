"""The train / evaluate / study verbs: thin layers whose output matches the API's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from covidedge.cli.main import cli, main  # noqa: E402
from covidedge.data.synth import make_synthetic_dataset  # noqa: E402

TINY_SEG = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--base-width", "4",
            "--depth", "2"]



@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("clidata"), per_class=3, size=32,
                                  splits=("Train", "Val"))


@pytest.fixture(scope="module")
def cls_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("clirun") / "cls"
    result = CliRunner().invoke(cli, [
        "train", "classifier", "--data", str(data_root), "--out", str(out), "--epochs", "1",
        "--batch-size", "4", "--image-size", "32", "--width-mult", "0.125", "--json"])
    assert result.exit_code == 0, result.output + str(result.exception)
    return out, json.loads(result.stdout)


def _run_main(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_help_teaches_with_examples():
    runner = CliRunner()
    for args in (["train", "--help"], ["train", "classifier", "--help"], ["train", "segmenter", "--help"],
                 ["evaluate", "--help"], ["study", "losses", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, args
        assert "Example" in result.output and "covidedge " in result.output, args
    seg_help = runner.invoke(cli, ["train", "segmenter", "--help"]).output
    assert "--loss-param" in seg_help and "--hflip" in seg_help and "--resume" in seg_help


def test_train_classifier_json(cls_run):
    out, payload = cls_run
    assert payload["task"] == "classifier" and payload["best_checkpoint"] == str(out / "best.pt")
    assert payload["epochs_run"] == 1 and len(payload["history"]) == 1
    saved = json.loads((out / "metrics.json").read_text())
    assert payload["metrics"]["metrics"]["accuracy"] == saved["metrics"]["accuracy"]
    assert {"best.pt", "last.pt", "history.json", "learning_curves.png"} <= {p.name for p in out.iterdir()}


def test_second_run_into_the_same_folder_is_refused(cls_run, data_root, capsys):
    out, _ = cls_run
    code, stdout, err = _run_main(["train", "classifier", "--data", str(data_root), "--out", str(out),
                                   "--epochs", "1", "--image-size", "32", "--width-mult", "0.125"], capsys)
    assert code == 3 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "not empty" in err and "--resume" in err and "--overwrite" in err


def test_evaluate_matches_metrics_json(cls_run, data_root, tmp_path, capsys):
    out, _ = cls_run
    saved = json.loads((out / "metrics.json").read_text())
    code, stdout, err = _run_main(["evaluate", str(out / "best.pt"), "--data", str(data_root),
                                   "--split", "Val", "--backend", "torch", "--batch-size", "2",
                                   "--json", "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    got = json.loads(stdout)
    assert got["metrics"]["confusion_matrix"] == saved["metrics"]["confusion_matrix"]
    assert got["metrics"]["accuracy"] == pytest.approx(saved["metrics"]["accuracy"])
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "confusion_matrix.png").is_file()
    code, stdout, _ = _run_main(["evaluate", str(out / "best.pt"), "--data", str(data_root)], capsys)
    assert code == 0
    assert "precision" in stdout and "weighted avg" in stdout and "confusion matrix" in stdout


def test_evaluate_missing_split_is_a_dataset_error(cls_run, data_root, capsys):
    out, _ = cls_run
    code, _, err = _run_main(["evaluate", str(out / "best.pt"), "--data", str(data_root),
                              "--split", "Test"], capsys)
    assert code == 7 and err.startswith("error: ") and "Test" in err


def test_train_segmenter_with_loss_params(data_root, tmp_path):
    out = tmp_path / "seg"
    result = CliRunner().invoke(cli, ["train", "segmenter", "--data", str(data_root), "--out", str(out),
                                      *TINY_SEG, "--loss", "tversky", "--loss-param", "alpha=0.7",
                                      "--loss-param", "beta=0.3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "Val lung Dice" in result.stdout and "best epoch" in result.stdout
    hist = json.loads((out / "history.json").read_text())
    assert hist["options"]["loss"] == "tversky" and hist["options"]["loss_params"] == {"alpha": 0.7, "beta": 0.3}


def test_bad_loss_param_is_bad_input(data_root, tmp_path, capsys):
    code, _, err = _run_main(["train", "segmenter", "--data", str(data_root), "--out",
                              str(tmp_path / "x"), *TINY_SEG, "--loss-param", "alpha"], capsys)
    assert code == 3 and "KEY=VALUE" in err
    code, _, err = _run_main(["train", "segmenter", "--data", str(data_root), "--out",
                              str(tmp_path / "y"), *TINY_SEG, "--loss", "dice", "--loss-param", "gamma=2"], capsys)
    assert code == 3 and "gamma" in err


def test_study_losses_compares_every_loss_and_reuses_finished_runs(data_root, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "losses", "--data", str(data_root), "--out", str(out), "--losses", "bce,dice",
            "--epochs", "1", "--image-size", "32", "--base-width", "4", "--depth", "2",
            "--batch-size", "4", "--json"]
    code, stdout, err = _run_main(argv, capsys)
    assert code == 0, err
    payload = json.loads(stdout)
    assert [r["loss"] for r in payload["rows"]] == ["bce", "dice"]
    for r in payload["rows"]:
        assert 0.0 <= r["lung_dice"] <= 1.0 and Path(r["run_dir"], "best.pt").is_file()
    assert {"comparison.md", "comparison.json", "comparison.png", "bce", "dice"} <= {p.name for p in out.iterdir()}
    md = (out / "comparison.md").read_text()
    assert "| bce" in md and "| dice" in md and "infection Dice" in md
    assert json.loads((out / "comparison.json").read_text())["rows"] == payload["rows"]
    # the verdict names the loss with the highest infection Dice and its margin over the other
    dice = {r["loss"]: r["infection_dice"] for r in payload["rows"]}
    if all(d == d for d in dice.values()):  # both finite
        want = max(dice, key=dice.get)
        assert payload["winner"] == want and f"**Verdict:** {want}" in md
        assert abs(payload["margin"] - abs(dice["bce"] - dice["dice"])) < 1e-12
    sev = {r["loss"]: r["severity_mae"] for r in payload["rows"]}
    if all(v == v for v in sev.values()):
        assert payload["best_severity"] == min(sev, key=sev.get) and "lowest severity error" in md
    for r in payload["rows"]:  # one epoch: no last-epoch change to judge convergence by
        assert r["converged"] is False and r["last_change"] is None
    assert payload["all_converged"] is False and "Not converged within the budget: bce, dice" in md
    # run again: both runs are reused, not retrained, and the numbers are the same
    code, stdout2, err2 = _run_main(argv, capsys)
    assert code == 0 and err2.count("reusing the finished run") == 2
    assert [r["lung_dice"] for r in json.loads(stdout2)["rows"]] == [r["lung_dice"] for r in payload["rows"]]


def test_study_rejects_unknown_losses(data_root, tmp_path, capsys):
    code, _, err = _run_main(["study", "losses", "--data", str(data_root), "--out", str(tmp_path / "s"),
                              "--losses", "bce,hinge"], capsys)
    assert code == 3 and "hinge" in err
