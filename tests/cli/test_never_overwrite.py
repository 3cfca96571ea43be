"""The never-overwrite rule (covidedge.fileio.refuse_existing) in every verb that writes a named
output: build-engine, export, calibrate and evaluate refuse an existing --out (an X-ray, another
engine, a manifest, a report) before doing any work, and replace it only with --overwrite."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidedge.cli.main import main
from tests.graphs import tiny_classifier_onnx, xray


class _Res:
    def __init__(self, exit_code, output):
        self.exit_code, self.output = exit_code, output


@pytest.fixture()
def run(capsys):
    """``covidedge ARGS`` through the real entry point: (exit code, stdout + stderr)."""
    def _run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return _Res(code, out.out + out.err)
    return _run


@pytest.fixture()
def victim(tmp_path):
    """An X-ray PNG that a careless --out could name."""
    path = tmp_path / "xray.png"
    Image.fromarray(xray(32, 32)).save(path)
    return path


def _kept(res, path, before):
    assert res.exit_code == 3, res.output
    assert "already exists; covidedge does not overwrite it" in res.output and "--overwrite" in res.output
    assert path.read_bytes() == before


def test_build_engine_refuses_an_existing_out_and_its_manifest(run, tmp_path, victim):
    model = tmp_path / "cls.onnx"
    tiny_classifier_onnx(model)
    before = victim.read_bytes()
    _kept(run("build-engine", model, "--out", victim, "--backend", "onnxruntime"), victim, before)

    engine = tmp_path / "cls.engine.onnx"
    first = run("build-engine", model, "--out", engine, "--backend", "onnxruntime")
    assert first.exit_code == 0, first.output
    manifest = engine.with_name(engine.name + ".manifest.json")
    engine_bytes, manifest_bytes = engine.read_bytes(), manifest.read_bytes()
    _kept(run("build-engine", model, "--out", engine, "--backend", "onnxruntime"), engine, engine_bytes)
    assert manifest.read_bytes() == manifest_bytes
    # an engine file gone but its manifest still there: the manifest is not replaced either
    other = tmp_path / "other.onnx"
    other_manifest = other.with_name(other.name + ".manifest.json")
    other_manifest.write_bytes(manifest_bytes)
    _kept(run("build-engine", model, "--out", other, "--backend", "onnxruntime"), other_manifest, manifest_bytes)
    again = run("build-engine", model, "--out", engine, "--backend", "onnxruntime", "--overwrite")
    assert again.exit_code == 0, again.output


def test_export_refuses_an_existing_out(run, tmp_path, victim):
    pytest.importorskip("torch", reason="export reads a torch checkpoint")
    from tests.graphs import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "cls.pt", "classifier", 32)
    out = tmp_path / "x.onnx"
    out.write_bytes(victim.read_bytes())
    _kept(run("export", ckpt, "--out", out), out, victim.read_bytes())
    res = run("export", ckpt, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output and out.read_bytes() != victim.read_bytes()


def test_calibrate_refuses_an_existing_manifest(run, tmp_path):
    from covidedge.data.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", per_class=2, size=32, splits=("Train",))
    out = tmp_path / "calib.json"
    assert run("calibrate", "--data", data, "--count", 3, "--out", out).exit_code == 0
    before = out.read_bytes()
    _kept(run("calibrate", "--data", data, "--count", 3, "--out", out, "--seed", 1), out, before)
    assert run("calibrate", "--data", data, "--count", 3, "--out", out, "--overwrite").exit_code == 0


def test_evaluate_refuses_an_existing_report_before_evaluating(run, tmp_path, monkeypatch):
    import covidedge.evaluation as evaluation

    report = tmp_path / "rep" / "report.md"
    report.parent.mkdir()
    report.write_text("my notes\n")
    called = []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: called.append(1))
    model = tmp_path / "cls.onnx"
    tiny_classifier_onnx(model)
    _kept(run("evaluate", model, "--data", tmp_path, "--out", report.parent), report, b"my notes\n")
    assert called == []
