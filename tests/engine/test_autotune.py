"""The autotuner (covidedge.engine.autotune): faithfulness from a Val table, the choice, the table
in the manifest and the record, reuse, the budget, and a user's model on tiny graphs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidedge.engine.autotune import (AutotuneOptions, Candidate, choose, plan_candidates, recorded_faithfulness,
                                       tune_model)
from covidedge.errors import BadInputError, UsageError

CLS_ROWS = [{"key": "fp32", "agreement": 1.0}, {"key": "fp16", "agreement": 1.0},
            {"key": "int8-s8", "agreement": 0.903}, {"key": "int8-u8", "agreement": 0.985}]
SEG_ROWS = [{"key": "fp32", "delta_lung_points": 0.0, "delta_infection_points": 0.0},
            {"key": "int8-s8", "delta_lung_points": -0.07, "delta_infection_points": 0.6},
            {"key": "int8-u8", "delta_lung_points": -0.07, "delta_infection_points": 0.41}]


def test_faithfulness_is_read_from_the_val_table():
    ok, why = recorded_faithfulness("classifier", CLS_ROWS, "int8-s8", "int8-s8")
    assert not ok and "90.3%" in why and "< 98%" in why
    ok, why = recorded_faithfulness("classifier", CLS_ROWS, "int8-u8", "int8-u8")
    assert ok and "98.5%" in why
    ok, why = recorded_faithfulness("segmenter", SEG_ROWS, "int8-s8", "int8-s8")
    assert not ok and "infection +0.60" in why and "beyond 0.5" in why
    assert recorded_faithfulness("segmenter", SEG_ROWS, "int8-u8", "int8-u8")[0]
    # bf16 compute of the fp32 graph: no Val row, a float form judged by its self-check
    ok, why = recorded_faithfulness("classifier", CLS_ROWS, "bf16", "fp32")
    assert ok and "self-check" in why
    # a user's model without measurements: float forms only
    assert recorded_faithfulness("classifier", None, "fp16", "fp16")[0]
    ok, why = recorded_faithfulness("classifier", None, "int8-u8", "int8-u8")
    assert not ok and "no Val measurement" in why
    # a Val table without the form's row: int8 is not built
    assert not recorded_faithfulness("classifier", CLS_ROWS[:2], "int8-u8", "int8-u8")[0]


def test_the_fastest_faithful_candidate_wins_and_says_why():
    a = Candidate("onnxruntime", "fp32", status="faithful", ms={1: 20.0, 8: 100.0})
    b = Candidate("openvino", "int8-s8", status="faithful", ms={1: 8.0, 8: 40.0})
    c = Candidate("onnxruntime", "int8-u8", status="unfaithful", ms={})
    best, why = choose([a, b, c], (1, 8))
    assert best is b and b.status == "chosen" and a.status == "faithful"
    assert "openvino int8-s8: fastest faithful" in why and "2.50x the next, onnxruntime fp32" in why
    assert choose([c], (1,)) == (None, "no faithful candidate could be built and timed")


def test_candidates_come_from_the_backend_table():
    plan = plan_candidates(present=lambda m: m == "onnxruntime")
    assert [(r.name, f) for r, f in plan] == [("onnxruntime", "int8-u8"), ("onnxruntime", "int8-s8"),
                                              ("onnxruntime", "fp32")]
    everything = {(r.name, f) for r, f in plan_candidates(present=lambda m: True)}
    assert {("openvino", "bf16"), ("tensorrt", "fp16"), ("tensorrt", "int8-s8")} <= everything
    assert [r.name for r, _ in plan_candidates(present=lambda m: True, only=lambda n: n == "onnxruntime")] \
        == ["onnxruntime"] * 3


def test_options_are_checked():
    with pytest.raises(BadInputError, match="budget"):
        AutotuneOptions.of(budget_s=0)
    with pytest.raises(BadInputError, match="max-batch 4 is below"):
        AutotuneOptions.of(batches=(8,), max_batch=4)


def test_a_user_model_is_tuned_over_its_float_forms_then_reused(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr("covidedge.engine.autotune.ROUND_SECONDS", 0.01)
    src, _ = tiny_onnx("fp32", "classifier", size=16)
    choice = tune_model(src, tmp_path / "build", AutotuneOptions(rounds=2), progress=True)
    by = {c.name: c for c in choice.candidates}
    assert by["onnxruntime int8-u8"].status == "unfaithful" and by["onnxruntime fp32"].ms[1] > 0
    assert choice.chosen is not None and choice.chosen.engine.is_file()
    manifest = json.loads(Path(str(choice.chosen.engine) + ".manifest.json").read_text())
    table = manifest["build_options"]["autotune"]
    assert table["chosen"]["engine"] == str(choice.chosen.engine) and table["reason"] == choice.reason
    assert {c["backend"] + " " + c["form"] for c in table["candidates"]} == set(by)
    # the manifest stays tamper-evident: loading checks its sha256
    from covidedge.runtime import load

    load(choice.chosen.engine)
    record = json.loads((tmp_path / "build" / "autotune.json").read_text())
    assert record["models"][str(src.resolve())]["chosen"]["engine"] == str(choice.chosen.engine)
    again = tune_model(src, tmp_path / "build", AutotuneOptions(rounds=2), progress=False)
    assert again.status == "reused" and again.chosen.engine == choice.chosen.engine
    # a budget already spent: the first faithful candidate is built, the others are skipped
    spent = tune_model(src, tmp_path / "spent", AutotuneOptions(rounds=1, budget_s=1e-9))
    assert spent.chosen is not None and spent.chosen.engine.is_file() and "only faithful" in spent.reason
    assert [c.status for c in spent.candidates if c.faithful is not False and c is not spent.chosen] \
        and all(c.status == "skipped" and "budget" in c.reason
                for c in spent.candidates if c.faithful is not False and c is not spent.chosen)


def test_a_user_model_refuses_what_autotuning_does_not_take(tiny_onnx, tmp_path):
    src, _ = tiny_onnx("fp32", "classifier", size=16)
    with pytest.raises(UsageError, match="--precision does not apply to autotuning"):
        tune_model(src, tmp_path, refused=["--precision"])
    int8, _ = tiny_onnx("int8", "classifier", size=16)
    with pytest.raises(UsageError, match="starts from an fp32 graph"):
        tune_model(int8, tmp_path / "b")


def test_cli_autotuning_refuses_overwrite_it_cannot_honour(tiny_onnx, tmp_path, capsys):
    """Autotuning replaces only its own candidates; --overwrite would be accepted and ignored."""
    from covidedge.cli.main import main

    src, _ = tiny_onnx("fp32", "classifier", size=16)
    with pytest.raises(SystemExit) as exc:
        main(["build-engine", str(src), "--backend", "auto", "--overwrite", "--out", str(tmp_path / "b")])
    out = capsys.readouterr()
    assert exc.value.code == 2 and "--overwrite does not apply to autotuning" in out.out + out.err
    assert not (tmp_path / "b").exists()
