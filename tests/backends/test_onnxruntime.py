import sys

import numpy as np
import pytest

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure
from covidedge.backends.onnxruntime import OrtRunner, resolve_providers
from tests.graphs import expected_logits, strip_metadata, tiny_classifier_onnx


def test_runs_graph_and_reads_spec_from_metadata(tmp_path):
    path = tmp_path / "tiny.onnx"
    spec = tiny_classifier_onnx(path)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with OrtRunner(path, intra_op_threads=1) as r:
        assert r.spec == spec
        out = r.infer(x)
        desc = r.describe()
    np.testing.assert_allclose(out["logits"], expected_logits(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-6)
    assert desc["backend"] == "onnxruntime" and desc["threads"]["intra_op"] == 1
    assert desc["providers"] == ["CPUExecutionProvider"]


def test_static_batch_graph_narrows_batch_range(tmp_path):
    path = tmp_path / "static.onnx"
    tiny_classifier_onnx(path, batch=2)
    with OrtRunner(path) as r:
        assert (r.min_batch, r.max_batch) == (2, 2)
        with pytest.raises(BadInputError, match="accepts batch 2..2"):
            r.infer(np.zeros((1, 1, 8, 8), np.float32))


def test_model_without_spec_is_refused(tmp_path):
    path = tmp_path / "nospec.onnx"
    tiny_classifier_onnx(path)
    strip_metadata(path)
    with pytest.raises(IncompatibleModelError, match="no 'covidedge.spec' entry"):
        OrtRunner(path)


def test_garbage_file_is_one_line_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not protobuf at all \x00\xff" * 10)
    with pytest.raises(IncompatibleModelError) as info:
        OrtRunner(path)
    assert "\n" not in str(info.value) and "junk.onnx" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="model file not found"):
        OrtRunner(tmp_path / "absent.onnx")


def test_unavailable_provider_is_named():
    with pytest.raises(RuntimeFailure, match="TensorrtExecutionProvider is not available"):
        resolve_providers(["tensorrt"])


def test_runtime_import_does_not_load_heavy_modules():
    import subprocess

    code = ("import sys, covidedge.runtime, covidedge.backends.onnxruntime, covidedge.backends.torch;"
            "print(','.join(m for m in ('torch','tensorrt','pycuda') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_checkpoint_without_torch_is_a_missing_dependency(tmp_path):
    """With torch absent, opening a checkpoint says how to get torch (exit code 6), not a traceback."""
    import subprocess

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"PK\x03\x04")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from covidedge.errors import MissingDependencyError\n"
            "from covidedge.backends.torch import TorchRunner\n"
            "try:\n    TorchRunner(sys.argv[1])\n"
            "except MissingDependencyError as e:\n    print(e.exit_code, e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("6 torch is needed to run a checkpoint")
