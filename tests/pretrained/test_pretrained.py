"""Shipped models: compact storage, calibration caches, the release tool and the default engines
that build-engine / infer / bench use when given no model (on tiny models made here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training the tiny models needs torch (the train extra)")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from covidedge.cli.main import main  # noqa: E402
from covidedge.data.synth import make_synthetic_dataset  # noqa: E402
from covidedge.errors import BadInputError, IncompatibleModelError  # noqa: E402
from covidedge.export.onnx import export_onnx  # noqa: E402
from covidedge.fileio import sha256_file
from covidedge.pretrained import (MIN_FP16_ELEMENTS, PACKAGE_DIR, get_shipped,  # noqa: E402
                                  pack_compact, restore_compact, shipped_models)
from covidedge.train.loop import train_classifier, train_segmenter  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), per_class=5, size=64,
                                  splits=("Train", "Val"))


@pytest.fixture(scope="module")
def checkpoints(data_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cls = train_classifier(data_root, runs / "cls", epochs=1, batch_size=4, image_size=64,
                           width_mult=0.125, progress=False)
    seg = train_segmenter(data_root, runs / "seg", epochs=1, batch_size=4, image_size=64,
                          base_width=8, depth=3, progress=False)
    return cls.best_checkpoint, seg.best_checkpoint


@pytest.fixture(scope="module")
def released(checkpoints, data_root, tmp_path_factory):
    """A models folder like covidedge/pretrained, made by the release tool from the tiny runs."""
    from covidedge.pretrained.release import release

    out = tmp_path_factory.mktemp("pkg")
    calib = tmp_path_factory.mktemp("calibration")
    release(checkpoints[0], "tiny-cls", data_root, command="covidedge train classifier ...",
            calib_count=9, out_dir=out, calibration_dir=calib, progress=False)
    release(checkpoints[1], "tiny-seg", data_root, command="covidedge train segmenter ...",
            calib_count=9, out_dir=out, calibration_dir=calib, progress=False)
    return out, calib


@pytest.fixture()
def use_released(released, tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDEDGE_MODELS_DIR", str(released[0]))
    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return released[0]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# -- compact storage -------------------------------------------------------------------------
def test_compact_graph_stores_large_weights_as_fp16_and_restores_them(checkpoints, tmp_path):
    fp32 = tmp_path / "m.onnx"
    export_onnx(checkpoints[0], fp32)
    stats = pack_compact(fp32, tmp_path / "m.compact.onnx")
    assert stats["fp16_tensors"] > 0 and stats["fp32_tensors"] > 0
    assert 0 < stats["max_relative_rounding"] < 1e-3  # fp16 keeps ~11 bits per stored tensor
    assert stats["bytes"] < 0.75 * fp32.stat().st_size
    restored = restore_compact(tmp_path / "m.compact.onnx", tmp_path / "r.onnx")
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(restored)).graph.initializer}
    assert a.keys() == b.keys()
    for name, arr in a.items():
        assert b[name].dtype == arr.dtype
        if arr.dtype == np.float32 and arr.size >= MIN_FP16_ELEMENTS:
            np.testing.assert_array_equal(b[name], arr.astype(np.float16).astype(np.float32))
        else:
            np.testing.assert_array_equal(b[name], arr)
    meta = {p.key: p.value for p in onnx.load(str(restored)).metadata_props}
    assert "covidedge.compact_weights" not in meta and meta["covidedge.task"] == "classifier"
    with pytest.raises(IncompatibleModelError, match="not a compact graph"):
        restore_compact(fp32, tmp_path / "x.onnx")
    with pytest.raises(BadInputError, match="already compact"):
        pack_compact(tmp_path / "m.compact.onnx", tmp_path / "y.onnx")


def test_calibration_cache_gives_the_same_int8_graph_as_the_images(checkpoints, data_root, tmp_path):
    from covidedge.export.calibration import make_calibration_set
    from covidedge.export.calibration_cache import write_calibration_cache
    from covidedge.export.int8 import quantize_int8

    fp32 = tmp_path / "m.onnx"
    export_onnx(checkpoints[1], fp32)
    calib = make_calibration_set(data_root, 9, input_size=(64, 64), out=tmp_path / "c.json")
    doc = write_calibration_cache(fp32, tmp_path / "cache.json", calib)
    assert doc["calibration_count"] == 9 and doc["source_sha256"] == sha256_file(fp32)
    for act, sym in (("int8", True), ("uint8", False)):
        direct = quantize_int8(fp32, tmp_path / f"d-{act}.onnx", calib, activation_type=act,
                               symmetric_activations=sym)
        cached = quantize_int8(fp32, tmp_path / f"c-{act}.onnx", None, ranges=tmp_path / "cache.json",
                               activation_type=act, symmetric_activations=sym)
        assert direct.read_bytes() == cached.read_bytes()
    other = tmp_path / "other.onnx"
    export_onnx(checkpoints[0], other)
    with pytest.raises(IncompatibleModelError, match="another graph"):
        quantize_int8(other, tmp_path / "o.onnx", None, ranges=tmp_path / "cache.json")
    with pytest.raises(BadInputError, match="not both"):
        quantize_int8(fp32, tmp_path / "b.onnx", calib, ranges=tmp_path / "cache.json")


# -- the release tool and the models folder --------------------------------------------------
def test_release_writes_card_cache_and_index(released, use_released):
    out, calib = released
    index = json.loads((out / "models.json").read_text())
    assert [m["name"] for m in index["models"]] == ["tiny-cls", "tiny-seg"]
    for m in shipped_models():
        card = m.card_path.read_text()
        assert "**Val**" in card and "Test split was not used" in card and "Not a medical device" in card
        keys = [r["key"] for r in m.summary["val"]]
        assert keys == ["checkpoint", "fp32", "fp16", "int8-s8", "int8-u8"]
        assert m.summary["cpu_engine_precision"] in ("int8", "fp32")
        assert json.loads(m.calibration_cache_path.read_text())["calibration_count"] == 9
    assert len(list(calib.glob("*.json"))) == 1  # one calibration set, recorded once


def test_fp32_graph_is_restored_once_and_checked(use_released, tmp_path):
    m = get_shipped("tiny-cls")
    path = m.fp32_onnx()
    assert sha256_file(path) == m.fp32_sha256 and path.parent == tmp_path / "cache" / "models"
    mtime = path.stat().st_mtime_ns
    assert m.fp32_onnx() == path and path.stat().st_mtime_ns == mtime  # reused, not rewritten
    path.write_bytes(b"damaged")
    assert sha256_file(m.fp32_onnx()) == m.fp32_sha256  # a damaged copy is restored again
    with pytest.raises(BadInputError, match="no shipped model is called 'nope'"):
        get_shipped("nope")


def test_models_verb_lists_the_cards(use_released, capsys):
    code, out, _ = _run(["models", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["tiny-cls", "tiny-seg"] and rows[0]["val"][0]["key"] == "checkpoint"
    code, out, _ = _run(["models"], capsys)
    assert code == 0 and "tiny-seg  (segmenter)" in out and "Val accuracy" in out
    # the CPU engine is chosen by autotuning, not by the card: the card says which forms are faithful
    assert "(ONNX Runtime)" not in out and "keeps the fastest faithful form" in out
    assert out.count("  engines     int8 ") == 2


# -- build-engine / infer / bench with no model ----------------------------------------------
def test_default_engines_build_once_then_serve_infer_and_bench(use_released, tmp_path, capsys):
    img = next((Path(os.environ["COVIDEDGE_MODELS_DIR"]).parent).glob("**/Val/COVID-19/images/*.png"), None)
    if img is None:
        from PIL import Image
        img = tmp_path / "x.png"
        Image.fromarray((np.random.default_rng(0).random((80, 70)) * 255).astype(np.uint8)).save(img)

    # before any build: the shipped graphs on ONNX Runtime, said in one line
    code, out, err = _run(["infer", str(img), "--format", "json"], capsys)
    assert code == 0, err
    assert "models: the shipped tiny-cls, tiny-seg (fp32, ONNX Runtime)" in err
    first = json.loads(out)[0]
    assert first["status"] == "ok" and abs(sum(first["probabilities"].values()) - 1) < 1e-5

    code, out, err = _run(["build-engine", "--json"], capsys)
    assert code == 0, err
    built = json.loads(out)
    want = {m.name for m in shipped_models()}
    assert {b["model"] for b in built} == want and all(b["status"] == "built" for b in built)
    # autotuned: the chosen engine's manifest and build/autotune.json hold the table and the reason
    choices = json.loads(Path("build/autotune.json").read_text())["models"]
    for b in built:
        assert Path(b["engine"]).is_file() and Path(b["manifest"]).is_file()
        assert Path(b["engine"]).parent == Path("build")
        table = json.loads(Path(b["manifest"]).read_text())["build_options"]["autotune"]
        assert table["chosen"]["engine"] == b["engine"] == choices[b["model"]]["chosen"]["engine"]
        assert "fastest faithful" in table["reason"] or "only faithful" in table["reason"]
        timed = [c for c in table["candidates"] if c["ms"]]
        assert timed and all(c["faithful"] for c in timed)
    mtimes = {b["engine"]: Path(b["engine"]).stat().st_mtime_ns for b in built}

    code, out, err = _run(["build-engine"], capsys)
    assert code == 0 and out.count("reused") == 2 and "reusing" in err and "chosen when built" in err
    assert {e: Path(e).stat().st_mtime_ns for e in mtimes} == mtimes

    code, out, err = _run(["infer", str(img), "--format", "json"], capsys)
    assert code == 0 and "models: the default engines in build/" in err
    assert json.loads(out)[0]["label"] in ("COVID-19", "Non-COVID", "Normal")

    code, out, err = _run(["bench", "--iterations", "2", "--warmup", "0", "--json"], capsys)
    assert code == 0, err
    assert {Path(r["model"]).name for r in json.loads(out)["rows"]} == {Path(e).name for e in mtimes}

    # --backend NAME runs that backend's best default engine (or the shipped graph on it): never exit 4
    from covidedge.machine import module_present

    for name in ("onnxruntime", "openvino"):
        if module_present(name):
            code, out, err = _run(["infer", str(img), "--format", "json", "--backend", name], capsys)
            assert code == 0, err
            assert f"({name} " in err.splitlines()[0] or f"(fp32, {name})" in err.splitlines()[0]

    # the API with no model gives the same answer as bare 'covidedge infer', from any folder
    cli = json.loads(_run(["infer", str(img), "--format", "json"], capsys)[1])[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    from covidedge import Pipeline, run_inference

    with Pipeline() as pipe:
        assert pipe.default_models.source == "engines"
        api = pipe.predict(img).to_dict()
    assert api["label"] == cli["label"] and api["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-6)
    assert api["infected_fraction"] == pytest.approx(cli["infected_fraction"], abs=1e-6)
    summary = run_inference([img], out_dir=elsewhere / "out")
    assert summary.ok == 1
    code, out, err = _run(["infer", str(img), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)[0]["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-6)
    repo_out = elsewhere / "repo"
    try:
        code, out, err = _run(["triton-repo", "--out", str(repo_out), "--json"], capsys)
    except ImportError:
        code = None
    if code != 6:  # without the serve extra: exit 6
        assert code == 0, err
        assert {Path(m["source"]).name for m in json.loads(out)["models"].values()} == {Path(e).name for e in mtimes}
    os.chdir(tmp_path)

    # an engine changed on disk is rebuilt, not trusted
    victim = Path(built[0]["engine"])
    victim.write_bytes(victim.read_bytes() + b"\0")
    code, out, err = _run(["build-engine", "--json"], capsys)
    assert code == 0 and [b["status"] for b in json.loads(out)] == ["built", "reused"]


def test_default_build_refuses_model_options(use_released, capsys, tmp_path):
    code, _, err = _run(["build-engine", "--precision", "fp16"], capsys)
    assert code == 2 and "--precision applies to a MODEL build" in err
    # an option given with its default value is refused too: it was given, so it would be ignored
    code, _, err = _run(["build-engine", "--workspace", "64", "--int8-activations", "auto"], capsys)
    assert code == 2 and "--int8-activations, --workspace apply to a MODEL build" in err
    # the rule is the API's: the same refusal from Python, by the names Python uses
    from covidedge.engine.defaults import build_default_engines
    from covidedge.errors import UsageError

    with pytest.raises(UsageError, match="precision applies to a MODEL build"):
        build_default_engines(tmp_path, build_options={"precision": "int8"})
    assert not any(tmp_path.iterdir())


def test_no_shipped_models_is_a_clear_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "models.json").write_text('{"models": []}')
    monkeypatch.setenv("COVIDEDGE_MODELS_DIR", str(empty))
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["infer", "x.png"], capsys)
    assert code == 3 and "ships no trained model" in err


# -- the models in this package --------------------------------------------------------------
@pytest.mark.skipif(not (PACKAGE_DIR / "models.json").is_file(), reason="this checkout ships no trained model")
def test_shipped_models_restore_and_answer(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.delenv("COVIDEDGE_MODELS_DIR", raising=False)
    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path))
    tasks = set()
    for m in shipped_models():
        assert m.compact_path.stat().st_size < 64e6 and m.card_path.is_file()
        path = m.fp32_onnx()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        h, w = m.summary["input_size"]
        probs = sess.run(["probabilities"], {"image": np.full((1, 1, h, w), 0.5, np.float32)})[0]
        assert np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1
        if m.task == "classifier":
            assert probs.shape == (1, 3) and abs(probs.sum() - 1) < 1e-5
        tasks.add(m.task)
    assert tasks == {"classifier", "segmenter"}
    total = sum(m.compact_path.stat().st_size for m in shipped_models())
    assert total <= 64 * 2**20
