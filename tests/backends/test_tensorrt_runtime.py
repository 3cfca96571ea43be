"""The TensorRT runner's decisions that need no GPU: the CUDA context it shares, its DLA core."""

from __future__ import annotations

import dataclasses

import pytest

from covidedge.backends.tensorrt import runner as T


class _Device:
    retained = []

    def __init__(self, index):
        self.index = index

    def retain_primary_context(self):
        _Device.retained.append(self.index)
        return f"ctx{self.index}"


class _Cuda:
    """Only the attribute primary_context reads: pycuda.driver.Device."""

    Device = _Device


@pytest.fixture
def fresh_contexts(monkeypatch):
    monkeypatch.setattr(T, "_PRIMARY_CONTEXTS", {})
    _Device.retained = []


def test_primary_context_is_retained_once_per_device(fresh_contexts):
    cuda = _Cuda()
    # two runners on device 0, activated, deactivated and activated again, and one on device 1
    got = [T.primary_context(cuda, 0) for _ in range(4)] + [T.primary_context(cuda, 1)]
    assert got == ["ctx0"] * 4 + ["ctx1"]
    assert _Device.retained == [0, 1]


def test_dla_core_comes_from_the_manifest(tmp_path):
    from tests.engine.test_manifest import trt_manifest

    (tmp_path / "a.engine").write_bytes(b"plan")
    m = trt_manifest(tmp_path / "a.engine")
    assert T.dla_core_of(m) is None
    dla = dataclasses.replace(m, build_options={**m.build_options, "dla_core": 1})
    assert T.dla_core_of(dla) == 1
