"""OpenVINO engines: the precision graph with a manifest, checked against ONNX Runtime at build."""

import numpy as np
import pytest

from covidedge.backends.openvino import SELF_CHECK_ATOL as OPENVINO_SELF_CHECK_ATOL
from covidedge.engine import build as B
from covidedge.engine.paths import default_engine_path
from covidedge.backends import check_compatible
from covidedge.formats.manifest import EngineManifest, manifest_path_for
from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.runtime import load
from covidedge.backends.onnxruntime import OrtRunner

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'covidedge[openvino]')")


@pytest.mark.parametrize("precision, task", [("fp32", "classifier"), ("int8", "classifier"),
                                             ("fp16", "segmenter")])
def test_openvino_engine_builds_loads_and_matches_onnxruntime(tiny_onnx, tmp_path, precision, task):
    src, spec = tiny_onnx(precision, task)
    res = B.build_engine(src, tmp_path / f"m.{precision}.ov.onnx", backend="openvino", max_batch=4,
                         progress=False)
    m = EngineManifest.read(manifest_path_for(res.engine_path))
    assert res.backend == m.backend == "openvino" and m.precision == precision
    assert res.note.startswith(f"OpenVINO {m.backend_version} {precision} model (CPU), batch 1..4, built in ")
    assert m.build_options["verification"]["max_abs_diff"]["probabilities"] <= OPENVINO_SELF_CHECK_ATOL[precision]
    x = np.random.default_rng(2).random((3, 1, *spec.input_size), dtype=np.float32)
    with load(res.engine_path) as r, OrtRunner(src) as ref:
        assert r.backend == "openvino" and (r.min_batch, r.max_batch) == (1, 4)
        np.testing.assert_allclose(r.infer(x)["probabilities"], ref.infer(x)["probabilities"],
                                   atol=OPENVINO_SELF_CHECK_ATOL[precision])
        with pytest.raises(BadInputError, match="accepts batch 1..4"):
            r.infer(np.zeros((5, 1, *spec.input_size), np.float32))


def test_openvino_engine_refuses_tensorrt_options_and_other_backends(tiny_onnx, tmp_path):
    src, _ = tiny_onnx("fp32")
    with pytest.raises(BadInputError, match="applies to TensorRT engines only, but this build is for OpenVINO"):
        B.build_engine(src, tmp_path / "a.onnx", backend="openvino", workspace_mib=64, progress=False)
    res = B.build_engine(src, tmp_path / "b.ov.onnx", backend="openvino", progress=False)
    with pytest.raises(IncompatibleModelError, match="is an OpenVINO engine"):
        load(res.engine_path, backend="onnxruntime")


def test_openvino_manifest_compatibility():
    m = EngineManifest(backend="openvino", backend_version="2026.4.1", precision="fp32", spec={},
                       engine_file="m.ov.onnx", engine_sha256="0" * 64, engine_bytes=1, onnx_sha256="0" * 64)
    assert check_compatible(m, {"openvino": "2026.4.1"}) == []
    assert check_compatible(m, {"openvino": "2027.0.0"}) == []
    assert "older than the build" in check_compatible(m, {"openvino": "2024.6.0"})[0]
    assert "OpenVINO is not installed here" in check_compatible(m, {})[0]


def test_openvino_int8_from_a_graph_keeps_signed_activations():
    assert B.resolve_int8_activations("auto", "openvino") == "int8"
    assert default_engine_path("runs/cls/best.pt", "int8", "openvino").name == "cls-best.int8.ov.onnx"
