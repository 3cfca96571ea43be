"""Shared fixtures: where real data lives (if anywhere) and small synthetic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_real_data() -> Path | None:
    """COVID-QU-Ex root from $COVIDEDGE_DATA, else ../shared/data/covid-qu-ex beside the repo."""
    env = os.environ.get("COVIDEDGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "covid-qu-ex")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    root = find_real_data()
    if root is None:
        pytest.skip(
            "real COVID-QU-Ex data not found: set COVIDEDGE_DATA or place it at ../shared/data/covid-qu-ex"
        )
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run faster on one thread here, and parallel test workers don't oversubscribe."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
