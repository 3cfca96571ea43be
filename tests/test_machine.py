"""covidedge.machine as the one home of machine facts: CPU flags, GPU clocks, package versions,
and the callers (backend table, bench reports) that read them from there."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

from covidedge import machine as M
from covidedge.backends.available import available_backends
from covidedge.bench.report import machine_summary, probe_machine_safely

X86_CPUINFO = """processor\t: 0
model name\t: Test CPU 3000
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni amx_int8 some_new_flag
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes asimdhp asimddp i8mm sve
"""


def test_cpu_flags_keep_the_kernel_deciding_ones_in_table_order():
    assert M.parse_cpu_flags(X86_CPUINFO) == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"]
    assert M.parse_cpu_flags(ARM_CPUINFO) == ["asimd", "asimddp", "asimdhp", "i8mm", "sve"]
    assert M.parse_cpu_flags("processor : 0\nmodel name : x\n") == []
    assert set(M.cpu_isa()) <= set(M.ISA_FLAGS)


def test_gpu_clocks_line():
    assert M.parse_gpu_clocks("1980, 1980, 3201, 3201\n") == \
        "SM 1980 / 1980 MHz, memory 3201 / 3201 MHz (now / max)"
    assert M.parse_gpu_clocks("[N/A], 1980\n") is None
    assert M.parse_gpu_clocks("") is None


def test_latency_facts_ask_nvidia_smi_for_clocks_only_with_a_gpu(monkeypatch):
    asked = []

    def fake_run(cmd, timeout=3.0):
        asked.append(list(cmd))
        return "1410, 1980, 1593, 1593\n"

    monkeypatch.setattr(M, "_run", fake_run)
    assert "gpu_clocks" not in M.probe_latency_facts({"gpu": None})
    assert asked == []
    facts = M.probe_latency_facts({"gpu": "NVIDIA H200"})
    assert facts["gpu_clocks"] == "SM 1410 / 1980 MHz, memory 1593 / 1593 MHz (now / max)"
    assert asked and asked[0][0] == "nvidia-smi"


def _fake_metadata(monkeypatch, installed):
    def version(dist):
        if dist in installed:
            return installed[dist]
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_package_version_finds_a_backend_under_any_of_its_distribution_names(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    _fake_metadata(monkeypatch, {"tensorrt-cu12": "10.3.0.26", "onnxruntime-gpu": "1.32.0"})
    assert M.package_version("tensorrt") == "10.3.0.26"
    assert M.package_version("onnxruntime") == "1.32.0"
    assert M.package_version("pycuda") is None


def test_imported_module_version_wins_except_for_openvinos_build_string(monkeypatch):
    _fake_metadata(monkeypatch, {"tensorrt": "10.3.0", "openvino": "2026.4.1"})
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.26"))
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(
        __version__="2026.4.1-22982-e213a147257-releases/2026/4"))
    assert M.package_version("tensorrt") == "10.3.0.26"  # the version that runs
    assert M.package_version("openvino") == "2026.4.1"  # the release, imported or not


def test_backend_table_and_bench_report_read_versions_from_the_machine_module():
    table = available_backends()["backends"]
    for name in ("onnxruntime", "torch", "openvino"):
        assert table[name]["version"] == M.package_version(name)
    assert table["onnxruntime"]["version"]  # a base dependency: always installed
    machine = probe_machine_safely()
    assert machine["onnxruntime"] == M.package_version("onnxruntime")
    isa = M.cpu_isa()
    assert machine.get("cpu_isa") == (" ".join(isa) if isa else None)
    if machine.get("openvino"):
        assert any(f"openvino {machine['openvino']}" in line for line in machine_summary(machine))


@pytest.mark.skipif(not M.module_present("openvino"), reason="openvino is not installed")
def test_openvino_version_is_the_release_after_import():
    import openvino  # noqa: F401

    assert M.package_version("openvino") == importlib.metadata.version("openvino")
