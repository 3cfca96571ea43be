"""The end-to-end demo at toy sizes: every stage runs and the summary says where things went."""

import json

import pytest

pytest.importorskip("torch")

from covidedge.demo import DemoSettings, run_demo  # noqa: E402
from covidedge.errors import BadInputError  # noqa: E402

TINY = DemoSettings(image_size=32, epochs=1, batch_size=4, per_class=3, calib_count=3,
                    infer_images=2, bench_iterations=2, precisions=("fp32", "int8"))


def test_demo_runs_every_stage_and_writes_a_summary(tmp_path):
    logs = []
    res = run_demo(tmp_path / "demo", settings=TINY, backend="onnxruntime", progress=False,
                   log=logs.append)
    out = tmp_path / "demo"
    assert res.synthetic and (out / "data" / "README.txt").is_file()
    assert [line[:5] for line in logs[:2]] == ["[1/6]", "[2/6]"]
    for task in ("classifier", "segmenter"):
        assert (out / "runs" / task / "best.pt").is_file()
        for prec in ("fp32", "int8"):
            engine = out / "engines" / f"{task}.{prec}.ort.onnx"  # an ONNX Runtime engine, named so
            assert engine.is_file() and (out / "engines" / f"{task}.{prec}.ort.onnx.manifest.json").is_file()
    assert {(r["task"], r["precision"]) for r in res.steps["evaluate"]} == {
        (t, p) for t in ("classifier", "segmenter") for p in ("checkpoint", "fp32", "int8")}
    assert len(res.steps["bench"]) == 6 and all(r["median_ms"] > 0 for r in res.steps["bench"])
    results = res.steps["infer"]["results"]
    assert len(results) == 2 and all(r["status"] == "ok" for r in results)
    assert all(r["outputs"].get("overlay") for r in results)
    # the results file is the one covidedge infer writes: a header and one line per image
    assert res.steps["infer"]["results_file"] == str(out / "infer" / "results.csv")
    assert len((out / "infer" / "results.csv").read_text().splitlines()) == 3
    assert res.steps["infer"]["summary"]["exit_code"] == 0
    summary = (out / "summary.md").read_text()
    assert "synthetic" in summary and "## Accuracy per precision (Val)" in summary
    assert json.loads((out / "summary.json").read_text())["synthetic"] is True


def test_demo_refuses_a_non_empty_folder_without_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="output folder is not empty"):
        run_demo(tmp_path, settings=TINY, progress=False, log=lambda s: None)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_rejects_unknown_precision(tmp_path):
    bad = DemoSettings(precisions=("fp8",))
    with pytest.raises(BadInputError, match="precision 'fp8' is unknown"):
        run_demo(tmp_path / "d", settings=bad, progress=False, log=lambda s: None)


def test_overwrite_deletes_only_what_a_demo_marked_as_its_own(tmp_path):
    from covidedge.demo import DEMO_MARKER, _remove_previous_demo

    user = tmp_path / "mine"
    (user / "data").mkdir(parents=True)
    (user / "data" / "scan.png").write_bytes(b"x")
    (user / "reports").mkdir()
    with pytest.raises(BadInputError, match="would delete reports, data, which covidedge demo did not make"):
        run_demo(user, settings=TINY, overwrite=True, progress=False, log=lambda s: None)
    assert (user / "data" / "scan.png").read_bytes() == b"x" and (user / "reports").is_dir()

    ours = tmp_path / "demo"
    (ours / "runs" / "classifier").mkdir(parents=True)
    (ours / "summary.md").write_text("old")
    (ours / "keep.txt").write_text("mine")
    (ours / DEMO_MARKER).write_text(json.dumps({"folders": ["runs"], "files": ["summary.md"]}))
    _remove_previous_demo(ours)
    assert not (ours / "runs").exists() and not (ours / "summary.md").exists()
    assert (ours / "keep.txt").read_text() == "mine"


def test_demo_help_states_the_defaults_the_code_uses():
    from click.testing import CliRunner

    from covidedge.cli.main import cli
    from covidedge.demo import REAL_DATA_SETTINGS, input_size

    text = " ".join(CliRunner().invoke(cli, ["demo", "--help"]).output.split())
    synth = DemoSettings()
    assert f"(default {synth.epochs} synthetic, {REAL_DATA_SETTINGS['epochs']} real)" in text
    assert f"{input_size(synth)} synthetic, {input_size(DemoSettings(**REAL_DATA_SETTINGS))} real)" in text
    assert input_size(synth) == 64
