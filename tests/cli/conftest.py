"""Fixtures shared by the command-line tests."""

import pytest

from tests.graphs import tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(classifier.onnx, segmenter.onnx): hand-made graphs whose outputs are known exactly."""
    return tiny_models(tmp_path_factory.mktemp("models"))
