"""TensorRT API surface: every TensorRT name covidedge uses exists in the real bindings.

NVIDIA's TensorRT Python bindings (the ``tensorrt-bindings`` 8.6.1 and ``tensorrt-cu12-bindings``
10.x / 11.x wheels, about 1 MB each, pinned by sha256 in ``trt_stubs/wheels.txt``) are
downloaded into ``$COVIDEDGE_TRT_WHEELS`` (default ``~/.cache/covidedge-trt-wheels``) and
imported against stand-in libnvinfer / libnvonnxparser / libnvinfer_plugin (``trt_stubs/*.c``,
compiled here). ``trt_stubs/api_probe.py`` then checks, per release: every attribute, enum
member, property and method signature that covidedge's builder and runner use, every flag that
``plan_tensorrt_build`` chooses for each precision x DLA x version-compatible x TF32 combination,
and that covidedge's logger is a real ``trt.ILogger``.

This proves the API surface only. No network is built or run here (the stand-in libraries create
no objects); ``test_tensorrt.py`` builds and runs engines on machines with TensorRT and a GPU.
The tests skip, saying why, only when a wheel cannot be had or no C compiler exists; with
COVIDEDGE_REQUIRE_TRT_WHEELS=1 (as .ci/run sets it) a wheel that cannot be had fails instead.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STUBS = HERE / "trt_stubs"
REPO = HERE.parents[1]
#: The releases checked: 8.6 (x86 TensorRT 8; JetPack 5's 8.5 has no PyPI wheel), 10.3 (JetPack 6),
#: the last 10.x, and two 11.x.
VERSIONS = ("8.6.1", "10.3.0", "10.16.1.11", "11.1.0.106", "11.4.0.106")
#: Stand-in libraries per TensorRT major (8.6's bindings also link the Caffe / UFF parsers).
LIBRARIES = {8: ("nvinfer", "nvonnxparser", "nvinfer_plugin", "nvparsers"),
             10: ("nvinfer", "nvonnxparser", "nvinfer_plugin"),
             11: ("nvinfer", "nvonnxparser", "nvinfer_plugin")}
#: Plans per release: 3 precisions x (no DLA, DLA) x version-compatible x TF32, less fp32 on DLA.
PLANS = 3 * 2 * 2 * 2 - 4


def wheel_dir() -> Path:
    return Path(os.environ.get("COVIDEDGE_TRT_WHEELS") or Path.home() / ".cache" / "covidedge-trt-wheels")


def pinned_wheels():
    """{(version, python tag): (project, file name, sha256)} from trt_stubs/wheels.txt."""
    out = {}
    for line in (STUBS / "wheels.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            project, version, tag, name, sha = line.split()
            out[(version, tag)] = (project, name, sha)
    return out


def _cannot_have(reason: str):
    """Skip, saying why; fail instead where CI asks for the check (COVIDEDGE_REQUIRE_TRT_WHEELS=1)."""
    if os.environ.get("COVIDEDGE_REQUIRE_TRT_WHEELS") == "1":
        pytest.fail(reason + " (COVIDEDGE_REQUIRE_TRT_WHEELS=1)")
    pytest.skip(reason)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(version: str) -> Path:
    """The pinned bindings wheel of ``version`` for this Python, from the cache or PyPI."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    pin = pinned_wheels().get((version, tag))
    if pin is None:
        pytest.skip(f"no TensorRT {version} bindings wheel is pinned for Python {tag} "
                    "(tensorrt-bindings 8.6.1 has no wheel for Python 3.12 or later)")
    project, name, sha = pin
    folder = wheel_dir()
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        req = folder / f".{name}.requirements.txt"
        req.write_text(f"{project}=={version} --hash=sha256:{sha}\n")
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "--require-hashes", "-r", str(req), "-d", str(folder), "-q"],
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _cannot_have(f"{project}=={version} could not be downloaded in 300 s into {folder}")
        finally:
            req.unlink(missing_ok=True)
        if proc.returncode != 0 or not path.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            _cannot_have(f"{project}=={version} could not be downloaded into {folder}: {last}")
    got = _sha256(path)
    assert got == sha, f"{path} has sha256 {got}, pinned {sha}: delete it to download it again"
    return path


@pytest.fixture(scope="module")
def stub_libs(tmp_path_factory):
    """The stand-in libraries, compiled once, as lib<name>.so.<major> for every major."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler (cc / gcc) to build the stand-in TensorRT libraries")
    out = tmp_path_factory.mktemp("trt-stubs")
    for major, names in LIBRARIES.items():
        for name in names:
            lib = out / f"lib{name}.so.{major}"
            if not lib.exists():
                subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-Wl,-soname,{lib.name}", "-o", str(lib),
                                str(STUBS / f"{name}.c")], check=True, capture_output=True, timeout=120)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_covidedge_uses_only_what_the_real_bindings_have(version, stub_libs, tmp_path):
    wheel = fetch_wheel(version)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    env = dict(os.environ, LD_LIBRARY_PATH=str(stub_libs), LD_BIND_NOW="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    proc = subprocess.run([sys.executable, str(STUBS / "api_probe.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["version"] == version
    assert report["execution_api"] == ("bindings" if version.startswith("8.") else "tensors")
    assert report["plans"] == PLANS
    assert report["checked"] >= 90  # the REQUIRED table and the plans' flags were all visited
    assert report["problems"] == []


def _trt_names(path: Path):
    """Every ``trt.A`` / ``trt.A.B`` chain in a source file (trt is the tensorrt module there)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            chain, cur = [node.attr], node.value
            while isinstance(cur, ast.Attribute):
                chain.insert(0, cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "trt":
                names.add("trt." + ".".join(chain[:2]))
    return names


def test_every_tensorrt_name_in_the_sources_is_checked():
    """A new ``trt.X`` anywhere in covidedge (the TensorRT backend's builder, logger and runner
    live in covidedge/backends/tensorrt/) must be added to the probe's REQUIRED table."""
    sys.path.insert(0, str(STUBS))
    try:
        from api_probe import REQUIRED
    finally:
        sys.path.remove(str(STUBS))
    paths = {p for p, *_ in REQUIRED}
    by_file = {path.relative_to(REPO).as_posix(): _trt_names(path)
               for path in sorted((REPO / "covidedge").rglob("*.py"))}
    users = {f for f, names in by_file.items() if names}
    # the scan sees the backend's files and the names each is known to use
    assert {"covidedge/backends/tensorrt/build.py", "covidedge/backends/tensorrt/logger.py",
            "covidedge/backends/tensorrt/runner.py"} <= users
    assert "trt.BuilderFlag" in by_file["covidedge/backends/tensorrt/build.py"]
    assert "trt.ILogger.__init__" in by_file["covidedge/backends/tensorrt/logger.py"]
    assert "trt.Runtime" in by_file["covidedge/backends/tensorrt/runner.py"]
    used = set().union(*by_file.values())
    missing = sorted(n for n in used if not any(p == n or p.startswith(n + ".") for p in paths))
    assert missing == []
