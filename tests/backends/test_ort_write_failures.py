"""A build whose optimised model cannot be written (issue 22, item 26): a full disk or a folder
that cannot be written is named as such, not blamed on the source model as INVALID_PROTOBUF.
The full disk is a file size limit (RLIMIT_FSIZE) in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from covidedge.cli.main import main
main(sys.argv[2:])
"""


def test_a_full_disk_during_a_build_names_the_output_folder_not_the_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from covidedge.pretrained import default_model

    shipped = default_model("segmenter")
    if shipped is None:
        pytest.skip("this checkout ships no segmenter")
    source = shipped.fp32_onnx()
    assert source.stat().st_size > 4_000_000
    out = tmp_path / "build" / "seg.ort.onnx"
    res = subprocess.run([sys.executable, "-c", SCRIPT, "3000000", "build-engine", str(source), "--out", str(out),
                          "--backend", "onnxruntime"], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 5, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"{out.parent}: ONNX Runtime could not write the optimised model into this folder" in line, line
    assert str(source) not in line
    assert not any(p.name.endswith(".tmp.onnx") for p in out.parent.iterdir())


def test_a_broken_model_is_still_blamed_on_the_model(tmp_path):
    from covidedge.backends.onnxruntime import optimise_failure

    err = optimise_failure(RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad node"), tmp_path / "m.onnx",
                           tmp_path / "out.tmp.onnx")
    assert str(err).startswith(f"{tmp_path / 'm.onnx'}: ONNX Runtime could not optimise the model")


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    # what ONNX Runtime raised when build/ was not writable: "SystemError: 1" (as root every
    # folder is writable, so the folder check is shown through the error ONNX Runtime gives)
    from covidedge.backends.onnxruntime import optimise_failure

    err = optimise_failure(SystemError("1"), tmp_path / "m.onnx", tmp_path / "build" / "x.tmp.onnx")
    assert str(err).startswith(f"{tmp_path / 'build'}: ONNX Runtime could not write the optimised model")
    import covidedge.backends.onnxruntime as O

    monkeypatch.setattr(O, "_can_write", lambda folder, size=0: False)
    err = optimise_failure(RuntimeError("odd failure"), tmp_path / "m.onnx", tmp_path / "build" / "x.tmp.onnx")
    assert "could not write the optimised model" in str(err)
