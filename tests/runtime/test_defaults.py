"""The default models live in the runtime: Pipeline(), run_inference and bare 'covidedge infer'
use the same resolver, from any working directory, and infer loads no export, training or
TensorRT code where TensorRT is absent. (Default engines built by build-engine:
tests/pretrained/test_pretrained.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covidedge.machine import module_present
from covidedge.pretrained import PACKAGE_DIR

pytestmark = pytest.mark.skipif(not (PACKAGE_DIR / "models.json").is_file(),
                                reason="this checkout ships no trained model")


@pytest.fixture
def image(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.delenv("COVIDEDGE_MODELS_DIR", raising=False)
    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COVIDEDGE_ENGINES", str(tmp_path / "engines"))
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((80, 70)) * 255).astype(np.uint8)).save(path)
    return path


def test_engines_home_is_per_user_and_per_machine(monkeypatch, tmp_path):
    from covidedge.runtime.defaults import engines_home, machine_key

    monkeypatch.delenv("COVIDEDGE_ENGINES", raising=False)
    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path))
    assert engines_home() == tmp_path / "engines" / machine_key()
    monkeypatch.setenv("COVIDEDGE_ENGINES", str(tmp_path / "mine"))
    assert engines_home() == tmp_path / "mine"


def test_bare_infer_loads_no_export_train_or_tensorrt_module(image, tmp_path):
    if module_present("tensorrt"):
        pytest.skip("TensorRT is installed here; the rule is for machines without it")
    code = ("import json, sys\n"
            "from covidedge.cli.main import main\n"
            "try:\n"
            f"    main(['infer', {str(image)!r}, '--format', 'json'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('covidedge'))), file=sys.stderr)\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    run = subprocess.run([sys.executable, "-c", code], cwd=other, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stderr.strip().splitlines()[-1])
    heavy = [m for m in loaded if m.startswith(("covidedge.export", "covidedge.train", "covidedge.backends.tensorrt"))]
    assert heavy == [] and "covidedge.runtime.defaults" in loaded
    cli = json.loads(run.stdout)[0]

    from covidedge import Pipeline, run_inference

    with Pipeline() as pipe:  # from the test's working directory, not the subprocess's
        assert pipe.default_models.source == "shipped"
        api = pipe.predict(image).to_dict()
    assert api["label"] == cli["label"]
    assert api["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-6)
    assert api["infected_fraction"] == pytest.approx(cli["infected_fraction"], abs=1e-6)
    seen = []
    summary = run_inference([image], on_result=seen.append)
    assert summary.ok == 1 and seen[0].probabilities == pytest.approx(cli["probabilities"], abs=1e-6)


def test_each_engine_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    import covidedge.formats.manifest as M
    from tests.graphs import tiny_classifier_onnx
    from covidedge.engine.build import build_engine

    src = tmp_path / "cls.onnx"
    tiny_classifier_onnx(src, size=16)
    res = build_engine(src, tmp_path / "cls.ort.onnx", backend="onnxruntime", progress=False)
    hashed = []
    real = M.sha256_file
    monkeypatch.setattr(M, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    M._VERIFIED.clear()
    for _ in range(3):
        M.verify_engine_file(res.engine_path, res.manifest)
    assert hashed == ["cls.ort.onnx"]
    res.engine_path.write_bytes(res.engine_path.read_bytes()[:-1])  # changed: checked again, refused
    with pytest.raises(Exception, match="truncated or was replaced"):
        M.verify_engine_file(res.engine_path, res.manifest)


def test_a_task_without_an_engine_runs_its_shipped_model_and_says_so(monkeypatch, tmp_path):
    # issue 22, item 17: after an interrupted bare build-engine only the classifier engine exists;
    # bare infer used to run the classifier alone (no masks, no severity) without a word
    import covidedge.runtime.defaults as D
    from covidedge.pretrained import default_model

    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path / "cache"))
    engine = tmp_path / "engines" / "cls.int8.ort.onnx"
    only_cls = {"classifier": D.DefaultEngine("covidqu-xception256", "classifier", "int8", "int8", "onnxruntime",
                                              engine, engine.with_name(engine.name + ".manifest.json"), "ab" * 32,
                                              status="reused")}
    monkeypatch.setattr(D, "find_default_engines", lambda build_dir=None: only_cls)
    chosen = D.default_models()
    assert chosen.classifier == engine
    shipped = default_model("segmenter")
    assert chosen.segmenter is not None and chosen.segmenter == shipped.fp32_onnx()
    assert f"no segmenter engine is built here" in chosen.line and shipped.name in chosen.line


def test_reuse_runs_the_checks_of_loading_and_catches_swapped_engines(tmp_path):
    # issue 22, item 18: engines swapped or edited in build/ were "reused, unchanged" by
    # build-engine while infer refused them, and bench named segmenter timings as the classifier's
    import shutil

    from covidedge.engine.build import build_engine
    from covidedge.formats.manifest import manifest_path_for
    from covidedge.runtime.defaults import usable
    from tests.graphs import tiny_classifier_onnx, tiny_segmenter_onnx

    tiny_classifier_onnx(tmp_path / "cls.onnx", size=16)
    tiny_segmenter_onnx(tmp_path / "seg.onnx", size=16)
    cls = build_engine(tmp_path / "cls.onnx", tmp_path / "b" / "cls.ort.onnx", backend="onnxruntime", progress=False)
    seg = build_engine(tmp_path / "seg.onnx", tmp_path / "b" / "seg.ort.onnx", backend="onnxruntime", progress=False)
    entry = {"model": "covidqu-xception256", "task": "classifier", "precision": "fp32",
             "engine": str(cls.engine_path)}
    assert usable(entry, None) is None
    # swapped: the segmenter (with its own, valid manifest) where the classifier was recorded
    shutil.copyfile(seg.engine_path, cls.engine_path)
    shutil.copyfile(manifest_path_for(seg.engine_path), manifest_path_for(cls.engine_path))
    assert "is a segmenter engine, but the record names it the classifier" in usable(entry, None)
    # edited: the engine no longer matches its manifest
    cls2 = build_engine(tmp_path / "cls.onnx", tmp_path / "c" / "cls.ort.onnx", backend="onnxruntime", progress=False)
    entry["engine"] = str(cls2.engine_path)
    cls2.engine_path.write_bytes(cls2.engine_path.read_bytes() + b"\0")
    assert "truncated or was replaced" in usable(entry, None)


def test_shipped_graphs_are_hashed_once_per_process(image, monkeypatch):
    import covidedge.fileio as fileio
    from covidedge.runtime.defaults import default_models

    first = default_models()  # restores the shipped graphs (hashed as they are written)
    default_models()  # finds them and checks them once
    calls = []
    real = fileio.sha256_file
    monkeypatch.setattr(fileio, "sha256_file", lambda path, *a: calls.append(path) or real(path, *a))
    assert default_models().paths() == first.paths() and calls == []
