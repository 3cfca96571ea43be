"""Fixtures of the engine tests: hand-made graphs in each precision (built by tests.graphs)."""

from __future__ import annotations

import pytest

from tests.graphs import tiny_precision_onnx


@pytest.fixture
def tiny_onnx(tmp_path):
    """Factory: tiny_onnx(precision="fp32", task="classifier", size=16, batch=None, name=None) ->
    (path, spec) of ``tests.graphs.tiny_precision_onnx`` in this test's folder."""
    def make(precision="fp32", task="classifier", size=16, batch=None, name=None):
        path = tmp_path / (name or f"tiny-{task}.{precision}.onnx")
        spec = tiny_precision_onnx(path, precision, task, size, batch)
        return path, spec

    return make
