"""Fixtures for the Triton tests: tiny models, a fake TensorRT engine, and the serve extra's presence."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from covidedge.formats.manifest import EngineManifest, manifest_path_for
from covidedge.fileio import sha256_file
from covidedge.spec import classifier_spec
from tests.graphs import tiny_models


def serve_extra_missing() -> str:
    """Why the serve extra cannot be used here ('' when it can)."""
    try:
        import importlib

        for name in ("tritonclient.grpc.model_config_pb2", "tritonclient.grpc", "tritonclient.http"):
            importlib.import_module(name)
    except Exception as exc:  # ImportError, or a protobuf that does not fit the generated code
        return f"the serve extra is not installed (pip install 'covidedge[serve]'): {exc}"
    return ""


needs_serve_extra = pytest.mark.skipif(bool(serve_extra_missing()), reason=serve_extra_missing() or "-")


def bundled_server_missing() -> str:
    if importlib.util.find_spec("pytriton") is None:
        return "nvidia-pytriton (the bundled tritonserver of the serve extra) is not installed"
    return serve_extra_missing()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(classifier.onnx, segmenter.onnx): hand-made 32x32 graphs with known outputs."""
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def trt_engine(tmp_path):
    """A TensorRT 10.3 classifier 'engine' (bytes) with its manifest: 16 px, batch 1..4."""
    path = tmp_path / "cls.fp16.trt10.3.sm89.engine"
    path.write_bytes(b"not a real plan, only bytes to hash " * 40)
    EngineManifest(
        backend="tensorrt", backend_version="10.3.0.30", precision="fp16",
        spec=classifier_spec(input_size=(16, 16)).to_dict(), engine_file=path.name,
        engine_sha256=sha256_file(path), engine_bytes=path.stat().st_size, onnx_sha256="ab" * 32,
        min_batch=1, opt_batch=2, max_batch=4,
        inputs=[{"name": "image", "shape": [-1, 1, 16, 16], "dtype": "float32"}],
        outputs=[{"name": "probabilities", "shape": [-1, 3], "dtype": "float32"}],
        device={"gpu": "NVIDIA L4", "gpu_compute_capability": "8.9"}, covidedge_version="0.1.0",
    ).write(manifest_path_for(path))
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
