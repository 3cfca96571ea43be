"""Shared fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A small synthetic COVID-QU-Ex (Train and Val, 4 images per class, 64 px), read only."""
    from covidedge.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), per_class=4, size=64,
                                  splits=("Train", "Val"))
