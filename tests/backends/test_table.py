"""The backend table: one row per backend, each module's one Backend object, found without
importing TensorRT code unless TensorRT's row is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from covidedge import backends
from covidedge.backends.base import Backend
from covidedge.errors import BadInputError, MissingDependencyError
from covidedge.spec import ENGINE_BACKENDS, RUNNER_BACKENDS


def test_every_row_is_its_module_s_backend_object():
    assert tuple(backends.TABLE) == RUNNER_BACKENDS
    rows = [backends.get(name) for name in backends.TABLE]
    assert all(isinstance(r, Backend) for r in rows)
    assert [r.name for r in rows] == list(backends.TABLE)
    assert tuple(r.name for r in backends.engine_backends()) == ENGINE_BACKENDS
    suffixes = [r.suffix for r in backends.engine_backends()]
    assert len(set(suffixes)) == len(suffixes)  # an engine's file name says its backend
    assert set(backends.AUTO_ORDER) <= set(ENGINE_BACKENDS)
    with pytest.raises(BadInputError, match="backend 'cuda' is unknown"):
        backends.get("cuda")


def test_auto_takes_the_first_row_whose_modules_are_present():
    assert backends.resolve("auto", present=lambda m: True).name == "tensorrt"
    assert backends.resolve("auto", present=lambda m: m != "pycuda").name == "onnxruntime"
    assert backends.resolve("onnxruntime", present=lambda m: False).name == "onnxruntime"
    with pytest.raises(MissingDependencyError, match="OpenVINO is not installed, so no OpenVINO engine"):
        backends.resolve("openvino", present=lambda m: False)


def test_engine_names_come_from_the_rows():
    assert backends.get("onnxruntime").engine_name("cls", "fp16") == "cls.fp16.ort.onnx"
    assert backends.get("openvino").engine_name("cls", "int8") == "cls.int8.ov.onnx"
    assert backends.get("tensorrt").engine_name("cls", "fp16", "10.3.0.30", "8.7") == "cls.fp16.trt10.3.sm87.engine"


def test_asking_about_onnx_runtime_imports_no_tensorrt_code():
    code = ("import sys; from covidedge import backends; backends.get('onnxruntime'); backends.get('openvino'); "
            "print([m for m in sys.modules if m.startswith('covidedge.backends.tensorrt')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
