"""Backend selection: which runner a file gets, overrides that make sense, one-line refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from covidedge.engine.build import build_engine
from covidedge.formats.manifest import manifest_path_for
from covidedge.fileio import sha256_file
from covidedge.errors import EXIT_INCOMPATIBLE, BadInputError, IncompatibleModelError
from covidedge.runtime import load
from covidedge.runtime.select import classify
from tests.graphs import run_onnx


@pytest.fixture
def ort_engine(tiny_onnx, tmp_path):
    src, spec = tiny_onnx("fp16")
    res = build_engine(src, tmp_path / "cls.engine", backend="onnxruntime", max_batch=4, progress=False)
    return src, res


def test_classify_files(tmp_path, ort_engine):
    _, res = ort_engine
    assert classify(res.engine_path) == "engine"
    assert classify(res.manifest_path) == "engine"
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "m.plan").write_bytes(b"x")
    assert classify(tmp_path / "m.onnx") == "onnx"
    assert classify(tmp_path / "m.pt") == "checkpoint"
    assert classify(tmp_path / "m.plan") == "engine"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="not a model file covidedge knows"):
        classify(tmp_path / "notes.txt")
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(BadInputError, match="torch checkpoint \\(zip\\) with an unexpected suffix"):
        classify(tmp_path / "weights.bin")
    with pytest.raises(BadInputError, match="model file not found"):
        classify(tmp_path / "missing.onnx")
    with pytest.raises(BadInputError, match="is a folder"):
        classify(tmp_path)


def test_onnxruntime_engine_runs_with_its_manifest_limits(ort_engine, capsys):
    src, res = ort_engine
    runner = load(res.engine_path, verbose=True)
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith(f"covidedge: {res.engine_path} runs on onnxruntime")
    d = runner.describe()
    assert (d["backend"], d["precision"], d["batch_range"]) == ("onnxruntime", "fp16", [1, 4])
    x = np.random.default_rng(2).random((3, 1, 16, 16), dtype=np.float32)
    with runner:
        out = runner.infer(x)
        with pytest.raises(BadInputError, match="batch 5, this model accepts batch 1..4"):
            runner.infer(np.zeros((5, 1, 16, 16), np.float32))
    np.testing.assert_allclose(out["probabilities"], run_onnx(src, x)["probabilities"], atol=1e-5)
    # loading through the manifest path gives the same runner
    assert load(res.manifest_path).source == str(res.engine_path)


def test_plain_onnx_runs_on_onnxruntime(tiny_onnx):
    src, spec = tiny_onnx("int8")
    runner = load(src)
    assert runner.backend == "onnxruntime" and runner.spec == spec
    with runner:
        out = runner.infer(np.full((2, 1, 16, 16), 0.5, np.float32))
    assert out["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_backend_overrides_that_do_not_make_sense_are_refused(ort_engine, tiny_onnx, tmp_path):
    src, res = ort_engine
    with pytest.raises(IncompatibleModelError) as err:
        load(res.engine_path, backend="tensorrt")
    assert "was built for ONNX Runtime" in str(err.value)
    assert "covidedge build-engine" in str(err.value) and "--backend tensorrt" in str(err.value)
    with pytest.raises(IncompatibleModelError, match="is an ONNX graph; torch runs checkpoints only"):
        load(src, backend="torch")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"PK\x03\x04")
    with pytest.raises(IncompatibleModelError, match="is a training checkpoint; it runs on torch, not onnxruntime"):
        load(ckpt, backend="onnxruntime")
    with pytest.raises(BadInputError, match="backend 'gpu' is unknown"):
        load(src, backend="gpu")


def test_options_are_never_silently_dropped(ort_engine, tiny_onnx):
    src, res = ort_engine
    with pytest.raises(BadInputError, match="option half does not apply to the ONNX Runtime backend"):
        load(src, half=True)
    with pytest.raises(BadInputError, match="option max_batch is fixed by the engine's manifest"):
        load(res.engine_path, max_batch=2)
    runner = load(src, intra_op_threads=1, device="cpu")
    assert runner.intra_op_threads == 1


def test_truncated_or_replaced_engine_is_refused(ort_engine):
    _, res = ort_engine
    data = res.engine_path.read_bytes()
    res.engine_path.write_bytes(data[:100])
    with pytest.raises(IncompatibleModelError) as err:
        load(res.engine_path)
    assert err.value.exit_code == EXIT_INCOMPATIBLE
    assert "truncated" in str(err.value) and "\n" not in str(err.value)
    res.engine_path.write_bytes(data[::-1])
    with pytest.raises(IncompatibleModelError, match="does not match its manifest"):
        load(res.engine_path)


def test_foreign_engine_without_manifest_is_refused(tmp_path):
    foreign = tmp_path / "downloaded.engine"
    foreign.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.raises(IncompatibleModelError) as err:
        load(foreign)
    assert "no manifest downloaded.engine.manifest.json next to the engine" in str(err.value)
    assert err.value.exit_code == EXIT_INCOMPATIBLE


def test_tensorrt_engine_for_another_machine_is_refused_before_tensorrt_runs(ort_engine, tmp_path):
    """A TensorRT engine whose manifest names a GPU and TensorRT this machine lacks is refused by
    the manifest check (TensorRT is never imported); the message lists the differences."""
    _, res = ort_engine
    plan = tmp_path / "jetson.engine"
    plan.write_bytes(b"plan bytes " * 64)
    m = dataclasses.replace(
        res.manifest, backend="tensorrt", backend_version="10.3.0.30", engine_file=plan.name,
        engine_sha256=sha256_file(plan), engine_bytes=plan.stat().st_size,
        device={"gpu": "Orin", "gpu_compute_capability": "8.7"}, l4t_release="36.4.0")
    m.write(manifest_path_for(plan))
    with pytest.raises(IncompatibleModelError) as err:
        load(plan)
    text = str(err.value)
    assert "engine was built for another machine" in text
    assert "L4T release: engine 36.4.0" in text and "--backend tensorrt" in text
    with pytest.raises(IncompatibleModelError, match="is a TensorRT engine; it runs on TensorRT only"):
        load(plan, backend="onnxruntime")


def test_importing_the_runtime_imports_no_heavy_backend():
    code = ("import sys, json; import covidedge.runtime, covidedge.runtime.select, covidedge.backends.tensorrt.runner, "
            "covidedge.backends.tensorrt.build, covidedge.engine.build, covidedge.formats.manifest, covidedge.cli.build_engine; "
            "print(json.dumps([m for m in ('torch', 'tensorrt', 'pycuda') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
