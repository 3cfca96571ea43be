"""TensorRT for real: build engines from tiny ONNX graphs and compare them with ONNX Runtime.

These run wherever tensorrt, pycuda and an NVIDIA GPU are present (a Jetson, a CUDA box) and are
skipped elsewhere; nothing here stands in for TensorRT.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from covidedge.formats.manifest import manifest_path_for
from covidedge.fileio import sha256_file


def _tensorrt_ready() -> bool:
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT, pycuda and an NVIDIA GPU")]

#: Largest |probability| difference from ONNX Runtime (CPU, same graph) per precision.
ATOL = {"fp32": 1e-3, "fp16": 1e-2, "int8": 2e-2}


@pytest.fixture
def build(tiny_onnx, tmp_path):
    from covidedge.engine.build import build_engine

    def make(precision="fp32", task="classifier", **kw):
        src, spec = tiny_onnx(precision, task)
        kw.setdefault("min_batch", 1)
        kw.setdefault("opt_batch", 2)
        kw.setdefault("max_batch", 4)
        res = build_engine(src, tmp_path / f"{task}.{precision}.engine", backend="tensorrt", progress=False, **kw)
        return src, res

    return make


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_engine_matches_onnxruntime(build, precision, task):
    import tensorrt as trt

    from covidedge.runtime import load
    from tests.graphs import run_onnx

    src, res = build(precision, task)
    m = res.manifest
    assert res.backend == "tensorrt" and m.backend_version == trt.__version__
    check = m.build_options["verification"]  # the build ran the plan against ONNX Runtime
    assert check["batch"] == 2 and check["max_abs_diff"]["probabilities"] <= ATOL[precision]
    assert m.build_options["allow_tf32"] is False
    assert m.precision == precision and m.device["gpu"] and m.device["gpu_compute_capability"]
    assert [i["name"] for i in m.inputs] == ["image"] and m.inputs[0]["shape"][0] == -1
    runner = load(res.engine_path)
    assert runner.backend == "tensorrt"
    rng = np.random.default_rng(3)
    with runner:
        for n in (1, 3, 4, 3):  # shapes change and come back: buffers are reused per shape
            x = rng.random((n, 1, 16, 16), dtype=np.float32)
            out = runner.infer(x)
            ref = run_onnx(src, x)
            for name in ("logits", "probabilities"):
                assert out[name].dtype == np.float32 and out[name].shape == ref[name].shape
            np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=ATOL[precision])
            t = runner.last_timings_ms
            assert set(t) == {"h2d", "compute", "d2h", "total"} and min(t.values()) >= 0
        d = runner.describe()
        assert d["execution_api"] == ("tensors" if int(trt.__version__.split(".")[0]) >= 9 else "bindings")
        from covidedge.errors import BadInputError

        with pytest.raises(BadInputError, match="batch 5, this model accepts batch 1..4"):
            runner.infer(np.zeros((5, 1, 16, 16), np.float32))


def test_timing_cache_is_written_and_reused(build, tmp_path):
    cache = tmp_path / "gpu.cache"
    build("fp16", timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    _, res = build("fp16", timing_cache=cache)
    assert res.manifest.build_options["timing_cache"] == str(cache.resolve())


def _tensorrt_version():
    import tensorrt as trt

    from covidedge.formats.manifest import parse_version

    return parse_version(trt.__version__)


def test_version_compatible_engine_loads(build):
    from covidedge.runtime import load

    if _tensorrt_version()[:2] < (8, 6):
        pytest.skip("version-compatible engines need TensorRT 8.6 or later (JetPack 5 has 8.5)")
    _, res = build("fp32", version_compatible=True, max_batch=2)
    assert res.manifest.version_compatible
    with load(res.engine_path) as runner:
        assert runner.infer(np.zeros((2, 1, 16, 16), np.float32))["probabilities"].shape == (2, 3)


def test_corrupt_engine_with_a_matching_manifest_fails_in_one_line(build):
    """Bytes that match their manifest but are no plan: TensorRT's own error, in one line."""
    from covidedge.errors import RuntimeFailure
    from covidedge.runtime import load

    _, res = build("fp32")
    res.engine_path.write_bytes(b"\x00" * 4096)
    m = dataclasses.replace(res.manifest, engine_sha256=sha256_file(res.engine_path), engine_bytes=4096)
    m.write(manifest_path_for(res.engine_path))
    runner = load(res.engine_path)
    with pytest.raises(RuntimeFailure) as err:
        runner.activate()
    assert "TensorRT could not deserialize" in str(err.value) and "\n" not in str(err.value)


def test_tampered_engine_is_refused_before_tensorrt(build):
    from covidedge.errors import IncompatibleModelError
    from covidedge.runtime import load

    _, res = build("fp32")
    data = res.engine_path.read_bytes()
    res.engine_path.write_bytes(data[:-16])
    with pytest.raises(IncompatibleModelError, match="truncated"):
        load(res.engine_path)


# -- what 'covidedge export' writes, through the real converters ---------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torch", reason="exporting a model needs torch")
    from tests.graphs import exported_graphs

    return exported_graphs(tmp_path_factory)


@pytest.mark.parametrize("kind", ["fp16", "int8-tensorrt"])
def test_exported_graph_builds_runs_and_reuses_its_timing_cache(exported, kind, tmp_path):
    """The fp16 converter's and the TensorRT-placement int8 quantizer's output of a small
    exported segmenter: built with a timing cache, built again from it, run, two runners at
    once, deactivated and activated again."""
    from covidedge.backends.tensorrt.build import SELF_CHECK_ATOL as TENSORRT_SELF_CHECK_ATOL
    from covidedge.engine.build import build_engine
    from covidedge.runtime import load
    from tests.graphs import run_onnx

    src = exported["segmenter"][kind]
    cache = tmp_path / "gpu.cache"
    first = build_engine(src, tmp_path / "a.engine", backend="tensorrt", timing_cache=cache, min_batch=1,
                         opt_batch=2, max_batch=4, progress=False)
    size = cache.stat().st_size
    assert size > 0
    second = build_engine(src, tmp_path / "b.engine", backend="tensorrt", timing_cache=cache, min_batch=1,
                          opt_batch=2, max_batch=4, progress=False)
    assert cache.stat().st_size == size  # every tactic came from the cache: nothing new was timed
    assert not any("timing cache" in n for n in second.manifest.build_options["notes"])
    x = np.random.default_rng(5).random((3, 1, 64, 64), dtype=np.float32)
    ref = run_onnx(src, x)
    a, b = load(first.engine_path), load(second.engine_path)
    with a, b:  # two runners on one device at once share its primary context
        for runner in (a, b):
            np.testing.assert_allclose(runner.infer(x)["probabilities"], ref["probabilities"],
                                       atol=TENSORRT_SELF_CHECK_ATOL[kind[:4]])
    for _ in range(2):  # deactivate / activate cycles leave the context stack as they found it
        with a:
            assert a.infer(x[:1])["probabilities"].shape == (1, 2, 64, 64)
