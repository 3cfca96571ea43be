"""Engine manifests: round trip, compatibility checks, refusals with the rebuild command, and the
machine probe's parsers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from covidedge.machine import (parse_cpuinfo, parse_l4t_release, parse_meminfo, parse_nvidia_smi,
                                      parse_nvpmodel, probe_machine)
from covidedge.backends import check_compatible, load_manifest
from covidedge.formats.manifest import MANIFEST_FORMAT, EngineManifest, engine_path_for, manifest_path_for, parse_version, rebuild_command, tensorrt_version_difference, same_release
from covidedge.fileio import sha256_file
from covidedge.errors import EXIT_INCOMPATIBLE, BadInputError, IncompatibleModelError
from covidedge.spec import classifier_spec

ORIN = {"gpu": "Orin", "gpu_compute_capability": "8.7", "gpu_memory_mib": 7620, "gpu_driver": "CUDA 12.6",
        "board": "NVIDIA Jetson Orin Nano Developer Kit"}


def trt_manifest(engine_path, **over) -> EngineManifest:
    """A manifest as build_engine writes it for a TensorRT 10.3 engine on a Jetson Orin."""
    data = engine_path.read_bytes()
    m = EngineManifest(
        backend="tensorrt", backend_version="10.3.0.30", precision="fp16",
        spec=classifier_spec(input_size=(16, 16)).to_dict(), engine_file=engine_path.name,
        engine_sha256=sha256_file(engine_path), engine_bytes=len(data), onnx_sha256="ab" * 32,
        calibration_sha256=None, min_batch=1, opt_batch=4, max_batch=8,
        inputs=[{"name": "image", "shape": [-1, 1, 16, 16], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [-1, 3], "dtype": "float32"},
                 {"name": "probabilities", "shape": [-1, 3], "dtype": "float32"}],
        device=dict(ORIN), l4t_release="36.4.0", version_compatible=False,
        build_options={"model": "/data/runs/cls/best.pt", "onnx": "/data/build/cls.fp16.onnx",
                       "from_checkpoint": True, "workspace_mib": 512, "dla_core": None},
        covidedge_version="0.1.0", built_at="2026-01-02T03:04:05+00:00", build_seconds=81.5)
    return dataclasses.replace(m, **over)


def orin_machine(**over):
    m = {"tensorrt": "10.3.0", "onnxruntime": "1.20.0", "l4t_release": "36.4.0", **ORIN}
    m.update(over)
    return m


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "cls.fp16.engine"
    path.write_bytes(b"not a real plan, only bytes to hash " * 40)
    m = trt_manifest(path)
    m.write(manifest_path_for(path))
    return path, m


# -- naming and round trip ---------------------------------------------------------------------
def test_manifest_naming_rule(tmp_path):
    assert manifest_path_for(tmp_path / "a.engine") == tmp_path / "a.engine.manifest.json"
    assert engine_path_for(tmp_path / "a.engine.manifest.json") == tmp_path / "a.engine"
    with pytest.raises(BadInputError, match="not an engine manifest"):
        engine_path_for(tmp_path / "a.json")


def test_round_trip_keeps_every_field(engine):
    path, m = engine
    back = EngineManifest.read(manifest_path_for(path))
    assert back == m
    d = json.loads(manifest_path_for(path).read_text())
    assert d["format"] == MANIFEST_FORMAT
    # readable copies of the spec's key facts at the top level
    assert d["task"] == "classifier" and d["labels"] == ["COVID-19", "Non-COVID", "Normal"]
    assert d["preprocessing"] == "gray-unit-bilinear-v1"
    assert back.model_spec == classifier_spec(input_size=(16, 16))
    assert (back.min_batch, back.opt_batch, back.max_batch) == (1, 4, 8)


def test_broken_manifests_are_refused(tmp_path, engine):
    path, m = engine
    mpath = manifest_path_for(path)
    mpath.write_text("{not json")
    with pytest.raises(IncompatibleModelError, match="not valid JSON"):
        load_manifest(path, check=False)
    d = m.to_dict()
    del d["engine_sha256"]
    mpath.write_text(json.dumps(d))
    with pytest.raises(IncompatibleModelError, match="lacks engine_sha256"):
        load_manifest(path, check=False)
    d = m.to_dict()
    d["format"] = "something-else"
    mpath.write_text(json.dumps(d))
    with pytest.raises(IncompatibleModelError, match="manifest format"):
        load_manifest(path, check=False)


def test_parse_version():
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("8.6.1.post1") == (8, 6, 1)
    assert parse_version("1.20.0+cpu") == (1, 20, 0)
    assert parse_version(None) == () and parse_version("") == ()
    assert same_release("10.3.0.30", "10.3.0") and not same_release("10.3.0", "10.3.1")
    assert not same_release("", "10.3")


# -- compatibility -------------------------------------------------------------------------------
def test_same_machine_is_compatible(engine):
    _, m = engine
    assert check_compatible(m, orin_machine()) == []


@pytest.mark.parametrize("change, expected", [
    ({"gpu": "NVIDIA GeForce RTX 4090"}, "GPU: engine 'Orin', here 'NVIDIA GeForce RTX 4090'"),
    ({"tensorrt": "10.7.0"}, "TensorRT version: engine 10.3.0.30, here 10.7.0"),
    ({"gpu_compute_capability": "8.9"}, "compute capability: engine 8.7, here 8.9"),
    ({"l4t_release": "35.4.1"}, "Jetson L4T release: engine 36.4.0, here 35.4.1"),
    ({"l4t_release": None}, "Jetson L4T release: engine 36.4.0, here none (not a Jetson)"),
    ({"tensorrt": None}, "TensorRT is not installed here"),
    ({"gpu": None, "gpu_compute_capability": None}, "no NVIDIA GPU found here"),
])
def test_each_difference_is_named(engine, change, expected):
    _, m = engine
    diffs = check_compatible(m, orin_machine(**change))
    assert len(diffs) == 1, diffs
    assert expected in diffs[0]


def test_version_compatible_engine_allows_later_tensorrt_only(engine):
    _, m = engine
    vc = dataclasses.replace(m, version_compatible=True)
    assert check_compatible(vc, orin_machine(tensorrt="10.7.0")) == []
    assert check_compatible(vc, orin_machine(tensorrt="11.1.0")) == []
    older = check_compatible(vc, orin_machine(tensorrt="10.1.0"))
    assert len(older) == 1 and "runs on 10.3.0.30 or later 10.x, 11.x), here 10.1.0" in older[0]
    assert len(check_compatible(vc, orin_machine(tensorrt="10.3.0.26"))) == 1  # an older build
    # the GPU is still binding for a version-compatible plan
    assert any("compute capability" in d for d in check_compatible(vc, orin_machine(gpu_compute_capability="8.6")))


def test_onnxruntime_artifact_needs_same_or_later_release(engine):
    _, m = engine
    ort = dataclasses.replace(m, backend="onnxruntime", backend_version="1.20.1", device={"cpu": "x"},
                              l4t_release=None)
    cpu_box = {"onnxruntime": "1.22.0", "tensorrt": None, "gpu": None, "l4t_release": None}
    assert check_compatible(ort, cpu_box) == []
    diffs = check_compatible(ort, dict(cpu_box, onnxruntime="1.18.0"))
    assert len(diffs) == 1 and "optimised with 1.20.1, here 1.18.0" in diffs[0]
    assert "not installed" in check_compatible(ort, dict(cpu_box, onnxruntime=None))[0]


def test_load_manifest_refuses_another_machine_with_rebuild_command(engine):
    path, m = engine
    with pytest.raises(IncompatibleModelError) as err:
        load_manifest(path, machine=orin_machine(gpu="NVIDIA GeForce RTX 4090", gpu_compute_capability="8.9",
                                                 tensorrt="10.7.0", l4t_release=None))
    text = str(err.value)
    assert err.value.exit_code == EXIT_INCOMPATIBLE
    assert "\n" not in text
    for part in ("TensorRT version: engine 10.3.0.30, here 10.7.0", "GPU: engine 'Orin'",
                 "compute capability: engine 8.7, here 8.9", "L4T release"):
        assert part in text
    assert rebuild_command(m, path) in text
    assert text.count("covidedge build-engine /data/runs/cls/best.pt") == 1


def test_rebuild_command_repeats_the_build(engine):
    path, m = engine
    cmd = rebuild_command(m, path)
    assert cmd.startswith(f"covidedge build-engine /data/runs/cls/best.pt --out {path}")
    for part in ("--precision fp16", "--min-batch 1 --opt-batch 4 --max-batch 8", "--workspace 512",
                 "--backend tensorrt"):
        assert part in cmd
    assert "--dla-core" not in cmd and "--version-compatible" not in cmd
    cmd_vc = rebuild_command(dataclasses.replace(m, version_compatible=True), path)
    assert "--version-compatible" in cmd_vc
    cmd_tf32 = rebuild_command(dataclasses.replace(m, build_options={**m.build_options, "allow_tf32": True,
                                                                      "dla_core": 0}), path)
    assert "--dla-core 0 --allow-tf32 --backend tensorrt" in cmd_tf32
    assert "--allow-tf32" not in cmd_vc


# -- refusals before deserializing ---------------------------------------------------------------
def test_missing_manifest_is_a_one_line_error(tmp_path):
    path = tmp_path / "orphan.engine"
    path.write_bytes(b"x" * 100)
    with pytest.raises(IncompatibleModelError) as err:
        load_manifest(path, machine=orin_machine())
    assert "no manifest orphan.engine.manifest.json next to the engine" in str(err.value)
    assert "covidedge build-engine" in str(err.value) and "\n" not in str(err.value)


def test_missing_engine_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="engine file not found"):
        load_manifest(tmp_path / "nothing.engine")


def test_truncated_engine_is_refused(engine):
    path, m = engine
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompatibleModelError) as err:
        load_manifest(path, machine=orin_machine())
    assert f"engine is {len(data) // 2} bytes but its manifest says {len(data)}" in str(err.value)
    assert "truncated" in str(err.value) and "\n" not in str(err.value)


def test_replaced_engine_of_same_size_is_refused(engine):
    path, m = engine
    data = path.read_bytes()
    path.write_bytes(bytes(reversed(data)))
    with pytest.raises(IncompatibleModelError, match=r"engine sha256 [0-9a-f]{12}\.\.\. does not match"):
        load_manifest(path, machine=orin_machine())
    # the manifest path itself is accepted and points to the same engine
    path.write_bytes(data)
    assert load_manifest(manifest_path_for(path), machine=orin_machine()) == m


# -- machine probe -------------------------------------------------------------------------------
def test_probe_parsers():
    assert parse_l4t_release("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, "
                             "EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024") == "36.4.0"
    assert parse_l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178") == "35.4.1"
    assert parse_l4t_release("garbage") is None
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (mode 0)"
    assert parse_nvpmodel("NV Power Mode: 15W") == "15W"
    assert parse_nvpmodel("") is None
    assert parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0, 81559, 550.54.15\n") == {
        "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mib": 81559,
        "driver": "550.54.15"}
    old = parse_nvidia_smi("Tesla T4, 15360, 470.82.01")
    assert old["name"] == "Tesla T4" and old["compute_capability"] is None and old["memory_mib"] == 15360
    assert parse_nvidia_smi("") is None
    assert parse_meminfo("MemTotal:       16310948 kB\nMemFree: 1 kB") == 15928
    assert parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert parse_cpuinfo("Hardware\t: BCM2835\n") == "BCM2835"


def test_probe_machine_is_cheap_and_torch_free():
    code = ("import sys, json; from covidedge.machine import probe_machine; m = probe_machine(); "
            "print(json.dumps({'m': m, 'heavy': [k for k in ('torch', 'tensorrt', 'pycuda') if k in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    res = json.loads(out.stdout)
    assert res["heavy"] == []
    m = res["m"]
    for key in ("cpu", "cpu_cores", "memory_mib", "os", "python", "onnxruntime", "tensorrt", "gpu",
                "gpu_compute_capability", "l4t_release", "power_mode"):
        assert key in m
    assert m["cpu_cores"] >= 1
    assert m["python"] == ".".join(map(str, sys.version_info[:3]))
    import onnxruntime

    assert m["onnxruntime"] == onnxruntime.__version__
    assert probe_machine()["onnxruntime"] == onnxruntime.__version__


@pytest.mark.parametrize("built, here, version_compatible, allowed", [
    ("10.3.0.30", "10.3.0.30", False, True),
    ("10.3.0.30", "10.3.0.26", False, False),   # the build number matters
    ("10.3.0.30", "10.3.0", False, True),       # a version without one: the parts both have
    ("10.3.0.30", "10.3.1.2", False, False),
    ("8.5.2.2", "8.5.2.2", False, True),
    ("8.6.1.6", "8.6.2.3", True, True),
    ("8.6.1.6", "8.6.1.2", True, False),
    ("8.6.1.6", "10.3.0.30", True, True),       # 8 -> 10
    ("8.6.1.6", "11.1.0", True, False),         # never two majors at once
    ("10.3.0.30", "11.1.0.106", True, True),    # 10 -> 11
    ("10.3.0.30", "10.16.1.11", True, True),
    ("10.16.1.11", "10.3.0.30", True, False),   # never backwards
    ("11.1.0.106", "10.16.1.11", True, False),
    ("11.1.0.106", "12.0.0", True, False),      # no step beyond 11 is documented
    ("10.3.0.30", "10.16.1.11", False, False),
])
def test_tensorrt_version_rule(built, here, version_compatible, allowed):
    why = tensorrt_version_difference(built, here, version_compatible)
    assert (why is None) == allowed, why
    if why is not None:
        assert why.startswith("TensorRT version: engine") and why.endswith(f"here {here}")


def test_unreadable_tensorrt_version_is_a_difference():
    assert "cannot be read" in tensorrt_version_difference("10.3.0", "dev", True)
