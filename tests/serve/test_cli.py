"""``covidedge triton-repo`` / ``serve`` / ``infer --server`` on the command line: refusals without
the serve extra (exit 6 and the install command), the GPU container command, usage errors."""

from __future__ import annotations

import json
import sys

import pytest
from covidedge.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_USAGE, BadInputError
from covidedge.serve.repository import REPOSITORY_FILE, REPOSITORY_FORMAT
from tests.serve.conftest import needs_serve_extra


def _invoke(args):
    """Run ``covidedge ARGS`` through main() and return (exit code, stdout, stderr)."""
    import contextlib
    import io

    from covidedge.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def fake_repository(path, target, models):
    path.mkdir()
    (path / REPOSITORY_FILE).write_text(json.dumps(
        {"format": REPOSITORY_FORMAT, "target": target, "ensemble": "covidedge", "models": models}))
    return path


@pytest.fixture
def no_serve_extra(monkeypatch):
    """Make tritonclient and nvidia-pytriton unimportable, as when the extra is not installed."""
    for name in ("tritonclient", "tritonclient.grpc", "tritonclient.grpc.model_config_pb2",
                 "tritonclient.http", "tritonclient.utils", "pytriton"):
        monkeypatch.setitem(sys.modules, name, None)


def test_triton_repo_without_the_extra_exits_6_with_the_install_command(models, tmp_path, no_serve_extra):
    code, out, err = _invoke(["triton-repo", "-c", str(models[0]), "--out", str(tmp_path / "repo")])
    assert code == EXIT_MISSING_DEPENDENCY
    assert "pip install 'covidedge[serve]'" in err and err.count("\n") == 1
    assert not (tmp_path / "repo").exists()


def test_serve_cpu_repository_without_the_extra_exits_6(tmp_path, no_serve_extra):
    repo = fake_repository(tmp_path / "repo", "cpu", {})
    code, out, err = _invoke(["serve", str(repo)])
    assert code == EXIT_MISSING_DEPENDENCY
    assert "nvidia-pytriton" in err and "pip install 'covidedge[serve]'" in err


def test_serve_gpu_repository_prints_the_matching_triton_container(tmp_path, no_serve_extra):
    repo = fake_repository(tmp_path / "repo", "gpu", {
        "classifier": {"source": "cls.engine", "backend": "tensorrt", "tensorrt": "10.3.0.30"},
        "segmenter": {"source": "seg.engine", "backend": "tensorrt", "tensorrt": "10.3.0.30"}})
    code, out, err = _invoke(["serve", str(repo), "--http-port", "9000"])
    assert code == 0
    assert out.strip() == (f"docker run --rm --gpus all -p 127.0.0.1:9000:8000 -p 127.0.0.1:8001:8001 "
                           f"-p 127.0.0.1:8002:8002 "
                           f"-v {repo.resolve()}:/models nvcr.io/nvidia/tritonserver:24.08-py3 "
                           "tritonserver --model-repository=/models")
    assert "TensorRT 10.3" in err


def test_serve_gpu_repository_with_unknown_tensorrt_points_at_the_support_matrix(tmp_path):
    repo = fake_repository(tmp_path / "repo", "gpu", {
        "classifier": {"source": "cls.engine", "backend": "tensorrt", "tensorrt": "42.1.0"}})
    code, out, err = _invoke(["serve", str(repo)])
    assert code == 0
    assert "tritonserver:<release>-py3" in out and "42.1.0" in err and "support-matrix" in err


def test_serve_refuses_a_folder_that_is_not_a_repository(tmp_path):
    code, out, err = _invoke(["serve", str(tmp_path)])
    assert code == EXIT_BAD_INPUT
    assert f"{tmp_path}: has no {REPOSITORY_FILE}" in err and "covidedge triton-repo" in err


def test_infer_server_usage_errors(models, tmp_path):
    code, out, err = _invoke(["infer", str(tmp_path / "x.png"), "--server", "http://127.0.0.1:9",
                              "-c", str(models[0])])
    assert code == EXIT_USAGE and "drop --classifier" in err
    code, out, err = _invoke(["infer", str(tmp_path / "x.png"), "--server", "ftp://host:1"])
    assert code == EXIT_BAD_INPUT and "server URL 'ftp://host:1' is not http://HOST:PORT" in err


@needs_serve_extra
def test_triton_repo_writes_and_serve_prints_docker_for_gpu(models, trt_engine, tmp_path):
    code, out, err = _invoke(["triton-repo", "-c", str(trt_engine), "-s", str(models[1]),
                              "--target", "gpu", "--out", str(tmp_path / "repo")])
    assert code == 0, err
    assert "classifier: " in out and "max_batch_size 4" in out
    code, out, err = _invoke(["serve", str(tmp_path / "repo")])
    assert code == 0
    assert "nvcr.io/nvidia/tritonserver:24.08-py3" in out


def test_gpu_noise_is_filtered_and_real_errors_are_not():
    from covidedge.serve.server import is_noise

    noise = ['E1202 05:02:52.614745 14628 server.cc:241] "CudaDriverHelper has not been initialized."',
             'E1202 05:03:01.572700 14628 ensemble_scheduler.cc:1468] "unable to create stream for covidedge: '
             'CUDA driver version is insufficient for CUDA runtime version"',
             'W1202 05:03:02.886082 14628 pinned_memory_manager.cc:170] "failed to allocate pinned system '
             'memory: no pinned memory pool, falling back to non-pinned system memory"',
             'W1202 05:02:52.614 1 metrics.cc:811] "DCGM unable to start: DCGM initialization error"']
    real = ['E1202 05:03:01.1 14628 model_lifecycle.cc:641] "failed to load \'classifier\' version 1: '
            'Internal: ModuleNotFoundError: No module named \'covidedge\'"',
            'I1202 05:03:01.1 14628 http_server.cc:4713] "Started HTTPService at 127.0.0.1:8000"']
    assert all(is_noise(line) for line in noise)
    assert not any(is_noise(line) for line in real)


def test_jetson_engines_are_pointed_at_tritons_jetson_release(tmp_path):
    from covidedge.serve.server import docker_command

    d = docker_command(tmp_path, {"models": {"classifier": {"tensorrt": "10.3.0.30", "l4t_release": "36.4.0"}}})
    assert any("Jetson" in n for n in d["notes"])
    with pytest.raises(BadInputError, match="different TensorRT versions"):
        docker_command(tmp_path, {"models": {"classifier": {"tensorrt": "10.3.0"}, "segmenter": {"tensorrt": "10.7.0"}}})
