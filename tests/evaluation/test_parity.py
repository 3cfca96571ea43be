"""The parity table (checkpoint vs fp32 / fp16 / int8 graphs) and the export / parity verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common", reason="fp16 conversion needs onnxconverter-common")

from covidedge.cli.main import main  # noqa: E402
from covidedge.data.synth import make_synthetic_dataset  # noqa: E402
from covidedge.errors import BadInputError  # noqa: E402
from covidedge.export.calibration import make_calibration_set  # noqa: E402
from covidedge.evaluation.parity import ParityTable, _mask_agreement, compare_precisions  # noqa: E402
from covidedge.formats.onnxfile import read_onnx_metadata
from covidedge.formats.onnxfile import graph_precision
from tests.graphs import tiny_checkpoint  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny checkpoints and a synthetic dataset (2 images per class in Train and Val)."""
    folder = tmp_path_factory.mktemp("compare")
    root = make_synthetic_dataset(folder / "data", per_class=2, size=SIZE, splits=("Train", "Val"))
    torch.manual_seed(0)
    cls = tiny_checkpoint(folder / "cls.pt", "classifier", SIZE)
    seg = tiny_checkpoint(folder / "seg.pt", "segmenter", SIZE)
    return {"root": root, "cls": cls, "seg": seg, "folder": folder}


def test_classifier_table(setup, tmp_path):
    table = compare_precisions(setup["cls"], setup["root"], "Val", precisions=(),
                               methods=("minmax",), out_dir=tmp_path / "p", progress=False)
    assert isinstance(table, ParityTable) and table.task == "classifier"
    assert [(r["precision"], r["method"]) for r in table] == [("checkpoint", None), ("int8", "minmax")]
    ref, q = table
    assert ref["delta_points"] == 0.0 and ref["argmax_agreement"] == 1.0
    assert 0.0 <= q["accuracy"] <= 1.0 and 0.0 <= q["argmax_agreement"] <= 1.0
    assert q["delta_points"] == pytest.approx(100 * (q["accuracy"] - ref["accuracy"]))
    assert q["best_int8"] and table.best_int8() is q
    assert graph_precision(q["path"]) == "int8"
    # calibrated on the Train split of the same folder (all 6 images: fewer than 200)
    calib = table.meta["calibration"]
    assert calib["split"] == "Train" and calib["count"] == 6
    assert read_onnx_metadata(q["path"])["covidedge.calibration_sha256"] == calib["sha256"]
    assert table.meta["split"] == "Val" and table.meta["images"] == 6
    md = (tmp_path / "p" / "parity.md").read_text()
    assert "| precision | method | size MB | accuracy |" in md and "**best**" in md
    assert json.loads((tmp_path / "p" / "parity.json").read_text())["rows"][1]["method"] == "minmax"


def test_parity_cli_segmenter_json(setup, tmp_path, capsys):
    manifest = make_calibration_set(setup["root"], 3, input_size=SIZE, out=tmp_path / "c.json")
    with pytest.raises(SystemExit) as exc:
        main(["parity", str(setup["seg"]), "--data", str(setup["root"]), "--calibration",
              str(manifest.path), "--methods", "minmax", "--out", str(tmp_path / "p"), "--json"])
    assert exc.value.code == 0
    out = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    rows = out["rows"]
    assert [r["precision"] for r in rows] == ["checkpoint", "fp32", "fp16", "int8"]
    for r in rows:
        assert {"lung_dice", "infection_dice", "mask_agreement_dice", "size_mb"} <= set(r)
    fp32 = rows[1]
    assert fp32["mask_agreement_dice"] > 0.999  # fp32 ONNX = the checkpoint
    assert fp32["delta_lung_points"] == pytest.approx(0.0, abs=0.1)
    assert rows[3]["best_int8"] and rows[2]["size_mb"] < rows[1]["size_mb"]
    assert out["meta"]["calibration"]["sha256"] == manifest.sha256
    assert (tmp_path / "p" / "parity.md").is_file()


def test_mask_agreement_is_a_mean_dice():
    a = np.zeros((1, 2, 4, 4), bool)
    b = np.zeros((1, 2, 4, 4), bool)
    a[0, 0, :2] = True   # 8 pixels
    b[0, 0, :1] = True   # 4 pixels, all inside a
    # channel 0: Dice 2*4/12; channel 1: empty in both counts as agreement
    assert _mask_agreement(a, b) == pytest.approx((8 / 12 + 1.0) / 2)


def test_compare_refuses_unknown_methods(setup, tmp_path):
    with pytest.raises(BadInputError, match="calibration method.*kl"):
        compare_precisions(setup["cls"], setup["root"], methods=("kl",), out_dir=tmp_path)


def test_export_cli_int8_json(setup, tmp_path, capsys):
    manifest = make_calibration_set(setup["root"], 3, input_size=SIZE, out=tmp_path / "c.json")
    out = tmp_path / "seg-int8.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(setup["seg"]), "--out", str(out), "--precision", "int8",
              "--calibration", str(manifest.path), "--calib-method", "percentile",
              "--percentile", "99.9", "--static-batch", "--json"])
    assert exc.value.code == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["precision"] == "int8" and report["inputs"]["image"] == [1, 1, SIZE, SIZE]
    assert report["metadata"]["covidedge.calibration_percentile"] == "99.9"
    assert report["details"]["calibration"]["sha256"] == manifest.sha256
    assert 0.0 <= report["parity"]["mask_agreement"] <= 1.0
    assert graph_precision(out) == "int8"


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp16", "--calib-count", "3"], "--calib-count applies to --precision int8 only"),
    (["--precision", "int8"], "int8 export needs calibration images"),
    (["--precision", "int8", "--calibration", "{manifest}", "--percentile", "99"],
     "--percentile applies with --calib-method percentile"),
    (["--precision", "int8", "--calibration", "{manifest}", "--calib-count", "3"],
     "--calib-count applies with --calib-data"),
    (["--opset", "9"], "opset 9 is outside 13..20"),
])
def test_export_cli_refuses_options_it_would_ignore(setup, tmp_path, capsys, args, message):
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    args = [a.replace("{manifest}", str(manifest)) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["export", str(setup["cls"]), "--out", str(tmp_path / "x.onnx"), *args])
    # an option that applies to int8 only is a usage error, as in build-engine (issue 21)
    assert exc.value.code == (2 if "int8 only" in message else BadInputError.exit_code)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("verb", ["export", "calibrate", "parity"])
def test_help_teaches_with_an_example(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out and f"covidedge {verb}" in out


def test_a_percentile_without_the_percentile_method_is_refused(tmp_path):
    from covidedge.errors import EXIT_USAGE, UsageError
    from covidedge.evaluation.parity import compare_precisions

    with pytest.raises(UsageError, match="applies with the percentile method") as exc:
        compare_precisions(tmp_path / "never-read.pt", tmp_path, methods=("entropy",), percentile=99.9)
    assert exc.value.exit_code == EXIT_USAGE
