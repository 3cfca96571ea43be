import numpy as np
import pytest

from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.runtime import load
from covidedge.backends.onnxruntime import OrtRunner
from tests.graphs import expected_logits, tiny_classifier_onnx

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'covidedge[openvino]')")


def test_openvino_matches_onnxruntime_on_the_same_graph(tmp_path):
    path = tmp_path / "tiny.onnx"
    spec = tiny_classifier_onnx(path)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with load(path, backend="openvino", threads=1) as r:
        assert r.backend == "openvino" and r.spec == spec
        out = r.infer(x)
        out1 = r.infer(x[:1])  # another batch size on the same compiled model
        desc = r.describe()
    with OrtRunner(path) as ref:
        expected = ref.infer(x)
    np.testing.assert_allclose(out["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-6)
    np.testing.assert_allclose(out1["logits"], out["logits"][:1], atol=1e-6)
    assert desc["device"] == "cpu" and desc["threads"] == {"inference": 1}
    import importlib.metadata

    assert desc["version"] == importlib.metadata.version("openvino")  # the release, not the build string


def test_openvino_options_are_checked(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    with pytest.raises(BadInputError, match="performance hint 'fast' is not one of AUTO, LATENCY, THROUGHPUT"):
        load(path, backend="openvino", performance_hint="fast")
    with pytest.raises(BadInputError, match="intra_op_threads does not apply to the OpenVINO backend"):
        load(path, backend="openvino", intra_op_threads=2)


def test_openvino_refuses_checkpoints(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(IncompatibleModelError, match="runs on torch, not openvino"):
        load(ckpt, backend="openvino")


def test_openvino_bf16_is_opt_in_and_f32_is_exact(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
    with load(path, backend="openvino") as r:
        assert r.describe()["inference_precision"] == "f32"
        np.testing.assert_allclose(r.infer(x)["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInputError, match="inference precision 'fp64' is not one of f32, bf16, f16"):
        load(path, backend="openvino", inference_precision="fp64")


def test_openvino_compiles_each_batch_shape_static_and_keeps_a_few(tmp_path):
    from covidedge.backends.openvino import STATIC_SHAPES

    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    rng = np.random.default_rng(5)
    with load(path, backend="openvino", threads=1) as r:
        assert list(r._requests) == [(1, 1, 8, 8)]  # compiled at activation
        assert r.compiled.inputs[0].get_partial_shape().is_static
        for n in (2, 3, 4, 5, 2):
            x = rng.random((n, 1, 8, 8), dtype=np.float32)
            np.testing.assert_allclose(r.infer(x)["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
        assert len(r._requests) == STATIC_SHAPES and (5, 1, 8, 8) in r._requests
        assert all(k[1:] == (1, 8, 8) for k in r._requests)


@pytest.mark.parametrize("hint", ["AUTO", "THROUGHPUT", "LATENCY"])
def test_openvino_batches_over_streams_give_the_whole_batch_answer(tmp_path, hint):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    x = np.random.default_rng(7).random((5, 1, 8, 8), dtype=np.float32)
    with load(path, backend="openvino", performance_hint=hint) as r:
        out = r.infer(x)
        one = r.infer(x[2:3])
        streams, queue, shapes = r._streams, r._streaming, list(r._requests)
        assert r.describe()["performance_hint"] == hint
    np.testing.assert_allclose(out["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["logits"], expected_logits(x[2:3]), rtol=1e-5, atol=1e-6)
    if hint == "LATENCY":  # one request per batch shape, no streams
        assert streams is None and not queue and (5, 1, 8, 8) in shapes
    elif hint == "THROUGHPUT":  # every batch over the streams, however many the CPU gave
        assert streams >= 1 and len(queue) == streams and shapes == [(1, 1, 8, 8)]
    else:  # a batch goes over the streams where there are two or more, else it is one request
        assert bool(queue) == (streams >= 2)
        assert ((5, 1, 8, 8) in shapes) == (streams < 2)


def test_openvino_auto_with_one_thread_keeps_whole_batches(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    x = np.random.default_rng(8).random((3, 1, 8, 8), dtype=np.float32)
    with load(path, backend="openvino", threads=1) as r:
        np.testing.assert_allclose(r.infer(x)["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
        assert r._streams == 1 and not r._streaming and (3, 1, 8, 8) in r._requests


def test_openvino_keeps_compiled_models_in_the_cache_folder(tmp_path, monkeypatch):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path / "cache"))
    x = np.random.default_rng(9).random((1, 1, 8, 8), dtype=np.float32)
    with load(path, backend="openvino") as r:
        first = r.infer(x)["logits"]
        assert r.describe()["compile_cache"] == str(tmp_path / "cache" / "openvino")
    blobs = sorted((tmp_path / "cache" / "openvino").iterdir())
    assert blobs, "OpenVINO wrote no compiled model to the cache folder"
    with load(path, backend="openvino") as r:  # loads the cached blob: same answer
        np.testing.assert_allclose(r.infer(x)["logits"], first, rtol=0, atol=0)
    assert sorted((tmp_path / "cache" / "openvino").iterdir()) == blobs


def test_openvino_runs_uncached_where_the_cache_folder_cannot_be_written(tmp_path, monkeypatch):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("COVIDEDGE_CACHE", str(tmp_path / "file" / "cache"))
    with load(path, backend="openvino") as r:
        assert r.compile_cache is None and r.describe()["compile_cache"] == ""
        x = np.ones((1, 1, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(r.infer(x)["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
