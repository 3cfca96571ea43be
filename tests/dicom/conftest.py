"""Fixtures for the DICOM tests: tiny models and a PACS-like export folder built with pydicom."""

from __future__ import annotations

import pytest

from tests.graphs import tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(classifier.onnx, segmenter.onnx): hand-made graphs whose outputs are known exactly."""
    return tiny_models(tmp_path_factory.mktemp("models"))
