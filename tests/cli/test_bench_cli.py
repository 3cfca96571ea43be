"""``covidedge bench`` through click's CliRunner and the real entry point: JSON, reports, skipped
batch sizes, option errors, checkpoints on torch and the metric column from --data.

Nothing here asserts that one thing is faster than another."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from covidedge.cli.bench import command, parse_batches
from covidedge.errors import BadInputError
from tests.graphs import tiny_classifier_onnx

FAST = ["--warmup", "1", "--iterations", "3"]


@pytest.fixture()
def tiny_onnx(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path, size=16)
    return path


def _invoke(args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_json_has_a_row_per_batch_with_every_figure(tiny_onnx):
    res = _invoke([tiny_onnx, "--batch", "1,3", "--threads", "1", "--json", *FAST])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [r["batch"] for r in d["rows"]] == [1, 3]
    for row in d["rows"]:
        assert row["backend"] == "onnxruntime" and row["precision"] == "fp32" and row["model"] == "tiny.onnx"
        lat = row["latency"]
        assert lat["n"] == 3 and lat["warmup"] == 1 and len(lat["samples_ms"]) == 3
        assert lat["min_ms"] <= lat["median_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert row["ms_per_image"] == pytest.approx(lat["median_ms"] / row["batch"])
        assert row["fps"] == pytest.approx(row["batch"] * 3 * 1000 / sum(lat["samples_ms"]))
        assert row["settings"]["threads"]["intra_op"] == 1
        assert row["size_mb"] == pytest.approx(tiny_onnx.stat().st_size / 1e6)
    assert d["settings"]["iterations"] == 3 and d["settings"]["batches"] == [1, 3]
    assert d["machine"]["cpu_cores"] >= 1


def test_text_output_and_report_files(tiny_onnx, tmp_path):
    out = tmp_path / "rep"
    res = _invoke([tiny_onnx, "--batch", "2", "--report", out, *FAST])
    assert res.exit_code == 0, res.output
    assert "=== tiny.onnx | onnxruntime fp32 | batch 2 ===" in res.stdout
    assert "Throughput:" in res.stdout and "percentile(99%)" in res.stdout
    assert any(line.startswith("model ") and line.split()[-1] == "FPS" for line in res.stdout.splitlines())
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"][0]["batch"] == 2
    assert "| tiny.onnx | onnxruntime | fp32 |" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "report written:" in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["--iterations", "3", "--duration", "1"], "--iterations and --duration are exclusive"),
    (["--limit-per-class", "5"], "--limit-per-class picks images of --data"),
    (["--split", "Test"], "--split Test picks images of --data"),
])
def test_options_that_cannot_be_honoured_are_usage_errors(tiny_onnx, capsys, argv, message):
    from covidedge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_onnx), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_duration_runs_at_least_ten_times(tiny_onnx):
    res = _invoke([tiny_onnx, "--duration", "0.001", "--warmup", "0", "--json"])
    assert res.exit_code == 0
    row = json.loads(res.stdout)["rows"][0]
    assert row["latency"]["n"] >= 10
    assert json.loads(res.stdout)["settings"]["duration_s"] == 0.001


def test_batch_outside_an_engines_range_is_noted_and_skipped(tiny_onnx, tmp_path):
    from covidedge.engine.build import build_engine

    built = build_engine(tiny_onnx, tmp_path / "tiny.ort.onnx", backend="onnxruntime", max_batch=2,
                         progress=False)
    res = _invoke([built.engine_path, "--batch", "1,2,4", "--threads", "1", "--json", *FAST])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [r["batch"] for r in d["rows"]] == [1, 2]
    assert d["rows"][0]["settings"]["threads"]["intra_op"] == 1  # the engine runs on ONNX Runtime
    assert len(d["skipped"]) == 1 and d["skipped"][0]["batch"] == 4
    assert "outside this model's batch range 1..2" in d["skipped"][0]["reason"]
    assert "--max-batch 4" in d["skipped"][0]["reason"]
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped:")]
    assert skipped == [f"skipped: tiny.ort.onnx batch 4: {d['skipped'][0]['reason']}"]
    # in text mode the note is in the report itself
    text = _invoke([built.engine_path, "--batch", "4,1", *FAST]).stdout
    assert "skipped: tiny.ort.onnx batch 4: batch 4 is outside" in text


def test_static_batch_graph_and_nothing_left_to_time(tiny_onnx, tmp_path):
    static = tmp_path / "static.onnx"
    tiny_classifier_onnx(static, size=16, batch=2)
    d = json.loads(_invoke([static, tiny_onnx, "--batch", "1", "--json", *FAST]).stdout)
    assert [(r["model"], r["batch"]) for r in d["rows"]] == [("tiny.onnx", 1)]
    assert "fixed batch of 2" in d["skipped"][0]["reason"]
    # every batch skipped: the report still prints, then a one-line error and exit code 3
    from covidedge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(static), "--batch", "1", *FAST])
    assert exc.value.code == BadInputError.exit_code


def test_parse_batches():
    assert parse_batches("1, 8,32,8") == [1, 8, 32]
    for bad in ("0", "1,x", ","):
        with pytest.raises(BadInputError, match="--batch"):
            parse_batches(bad)


def test_bad_batch_through_the_entry_point(tiny_onnx, capsys):
    from covidedge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_onnx), "--batch", "1,x"])
    assert exc.value.code == BadInputError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --batch '1,x': 'x' is not an integer (e.g. --batch 1,8,32)"]


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    from covidedge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tmp_path / "nope.onnx"), *FAST])
    assert exc.value.code == BadInputError.exit_code
    assert capsys.readouterr().err.startswith("error: ")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")

    from tests.graphs import tiny_checkpoint as make

    torch.manual_seed(0)
    return make(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "classifier", 32)


def test_checkpoint_runs_on_torch_with_threads(tiny_checkpoint):
    import torch

    before = torch.get_num_threads()
    res = _invoke([tiny_checkpoint, "--threads", "1", "--json", *FAST])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["rows"][0]
    assert row["backend"] == "torch" and row["precision"] == "fp32" and row["task"] == "classifier"
    assert row["settings"]["threads"] == {"intra_op": 1}  # applied while timing ...
    assert torch.get_num_threads() == before               # ... and restored afterwards


def test_data_adds_the_metric_and_end_to_end(tiny_onnx, tmp_path):
    from covidedge.data.synth import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "synth", per_class=2, splits=("Val",))
    res = _invoke([tiny_onnx, "--data", root, "--split", "Val", "--end-to-end", "--json", *FAST])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    row = d["rows"][0]
    assert row["metric"]["name"] == "accuracy" and 0.0 <= row["metric"]["value"] <= 1.0
    assert row["metric"]["n_images"] == 6 and row["metric"]["split"] == "Val"
    assert row["metric"]["value"] * 6 == pytest.approx(round(row["metric"]["value"] * 6))
    e2e = row["end_to_end"]
    assert e2e["n_images"] == 6 and set(e2e["medians_ms"]) == {"decode", "preprocess", "inference",
                                                               "postprocess", "total"}
    assert any("end-to-end timing over 6 images of Val" in n for n in d["notes"])


@pytest.mark.realdata
def test_real_data_metric_and_end_to_end(tiny_onnx, real_data_root):
    res = _invoke([tiny_onnx, "--data", real_data_root, "--limit-per-class", "2", "--end-to-end",
                   "--json", *FAST])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["rows"][0]
    assert row["metric"]["name"] == "accuracy" and row["metric"]["n_images"] == 6
    assert row["end_to_end"]["n_images"] == 6


@pytest.mark.parametrize("argv, message", [
    (["--duration", "inf"], "--duration inf s is outside (0, 3600] s"),
    (["--duration", "1e9"], "is outside (0, 3600] s"),
    (["--batch", "100000"], "batch size 100000 is above 1024 images"),
    (["--iterations", "10000000"], "--iterations 10000000 is outside 1..1000000"),
])
def test_unbounded_runs_are_refused_before_any_model_is_opened(tiny_onnx, capsys, argv, message):
    from covidedge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_onnx), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 3 and message in err and len(err.strip().splitlines()) == 1
