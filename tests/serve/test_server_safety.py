"""The server neither leaks nor lingers (issue 22, items 7, 8, 9, 11, 16, 19, 26, 28): labels of
a repository are checked against the served models, the docker command binds loopback, absurd
IMAGE_SIZE requests are refused, request bytes never get a name on disk, a second server on busy
ports is refused, shared memory is private and removed, and a SIGKILLed `covidedge serve` takes
tritonserver and its stubs with it. Live tests run the bundled tritonserver on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import bundled_server_missing, free_port, needs_serve_extra
from tests.serve.test_cli import _invoke

live = pytest.mark.skipif(bool(bundled_server_missing()), reason=bundled_server_missing() or "-")


# -- item 16: labels wherever they travel ------------------------------------------------------------
def _edit_pbtxt(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


@needs_serve_extra
@pytest.mark.parametrize("place", ["postprocess", "ensemble", "facts", "network"])
def test_reordered_labels_in_a_repository_are_refused(models, tmp_path, place):
    from covidedge.errors import IncompatibleModelError
    from covidedge.serve.check import check_repository_labels
    from covidedge.serve.repository import write_repository

    repo = write_repository(tmp_path / "repo", *models).path
    assert check_repository_labels(repo)["classifier"] == ["COVID-19", "Non-COVID", "Normal"]
    right = json.dumps(["COVID-19", "Non-COVID", "Normal"])
    wrong = json.dumps(["Normal", "Non-COVID", "COVID-19"])
    if place == "facts":
        f = repo / "covidedge-repository.json"
        f.write_text(f.read_text().replace('"COVID-19",\n    "Non-COVID",\n    "Normal"',
                                           '"Normal",\n    "Non-COVID",\n    "COVID-19"'))
        assert json.loads(f.read_text())["labels"][0] == "Normal"
    else:
        folder = {"postprocess": "postprocess", "ensemble": "covidedge", "network": "classifier"}[place]
        quoted = lambda s: json.dumps(s)[1:-1]  # noqa: E731  (as the pbtxt string holds it)
        if place == "ensemble":
            _edit_pbtxt(repo / folder / "config.pbtxt", quoted('"labels": ' + right), quoted('"labels": ' + wrong))
        else:
            _edit_pbtxt(repo / folder / "config.pbtxt", quoted(right), quoted(wrong))
    with pytest.raises(IncompatibleModelError, match="labels in the repository differ from the spec embedded"):
        check_repository_labels(repo)
    code, out, err = _invoke(["serve", str(repo)])
    assert code == 4 and "labels in the repository differ" in err
    assert not any(line.startswith("ready") for line in err.splitlines())


# -- item 11: the docker command binds loopback ---------------------------------------------------
def test_docker_command_publishes_ports_on_loopback_only(tmp_path):
    from covidedge.serve.server import docker_command

    cmd = docker_command(tmp_path, {"models": {"classifier": {"tensorrt": "10.3.0.30"}}})["command"]
    assert "-p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002" in cmd
    wide = docker_command(tmp_path, {"models": {}}, address="0.0.0.0")["command"]
    assert "-p 0.0.0.0:8000:8000" in wide


# -- item 9 / 26: IMAGE_SIZE of a direct postprocess request -----------------------------------------
def test_image_sizes_that_no_decoded_image_has_are_refused():
    from covidedge.errors import BadInputError
    from covidedge.serve.models import check_image_sizes

    check_image_sizes(np.array([[2048, 2500]]))
    for bad in ([0, 0], [46000, 46000], [-1, 5], [1, 70_000_000]):
        with pytest.raises(BadInputError, match="is not an image size"):
            check_image_sizes(np.array([bad]))


# -- item 8 / 26: request bytes are decoded in memory; a DICOM without preamble works -----------------
def test_preprocess_decodes_in_memory_and_reads_a_dicom_without_preamble(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    import tempfile

    from covidedge.serve.models import PreprocessModel
    from tests.dicom.builders import radiograph

    raw = Path(radiograph(tmp_path / "dx.dcm")).read_bytes()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    seen = []
    real_open = open

    def watching_open(file, *a, **k):
        seen.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", watching_open)
    model = PreprocessModel()
    model.max_pixels = None
    full = model.decode(raw)
    bare = model.decode(raw[132:])  # no preamble, no DICM marker
    np.testing.assert_array_equal(full, bare)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert all(p.startswith("/proc/self/fd/") for p in seen if "covidedge" not in p and "site-packages" not in p)


# -- live: busy ports, shared memory, SIGKILL ---------------------------------------------------------
def _stub_python_or_skip():
    from covidedge.errors import MissingDependencyError
    from covidedge.serve.server import check_stub_python, find_bundled_server, server_environment, stub_python

    python = stub_python()
    try:
        check_stub_python(python, server_environment(find_bundled_server(), python=python))
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@live
def test_a_second_server_on_busy_ports_is_refused_before_it_starts(models, tmp_path):
    from covidedge.serve.repository import write_repository

    _stub_python_or_skip()
    repo = write_repository(tmp_path / "repo", models[0], None).path
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        t0 = time.monotonic()
        code, out, err = _invoke(["serve", str(repo), "--http-port", str(port), "--grpc-port", str(free_port()),
                                  "--metrics-port", str(free_port())])
    finally:
        busy.close()
    assert code == 3 and f"http port {port} on 127.0.0.1 is in use" in err, err
    assert not any(line.startswith("ready") for line in err.splitlines())
    assert out == "" and time.monotonic() - t0 < 10


def _children(pid: int):
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(d.name))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@live
def test_sigkill_of_serve_takes_the_server_its_stubs_and_shared_memory_with_it(models, tmp_path):
    from covidedge.serve.repository import write_repository
    from covidedge.serve.server import SHM_FOLDER, SHM_PREFIX

    _stub_python_or_skip()
    repo = write_repository(tmp_path / "repo", *models).path
    ports = [free_port() for _ in range(3)]
    serve = subprocess.Popen([sys.executable, "-m", "covidedge", "serve", str(repo), "--http-port", str(ports[0]),
                              "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and not ready:
            assert serve.poll() is None, serve.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.2)
        assert ready
        time.sleep(0.5)  # the regions are made private right after readiness
        prefix = f"{SHM_PREFIX}{serve.pid}_"
        regions = [p for p in SHM_FOLDER.iterdir() if p.name.startswith(prefix)]
        assert len(regions) >= 4  # preprocess, classifier, segmenter, postprocess
        assert all(p.stat().st_mode & 0o077 == 0 for p in regions), [oct(p.stat().st_mode) for p in regions]
        triton = [c for c in _children(serve.pid)
                  if b"tritonserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(triton) == 1
        pgid = triton[0]
        assert len(_children(pgid)) >= 4  # the python stubs
    finally:
        serve.kill()  # SIGKILL: no cleanup code of covidedge runs
        serve.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_group_alive(pgid) or any(
            p.name.startswith(prefix) for p in SHM_FOLDER.iterdir())):
        time.sleep(0.2)
    assert not _group_alive(pgid), "tritonserver or a python stub outlived covidedge serve"
    assert not [p for p in SHM_FOLDER.iterdir() if p.name.startswith(prefix)]
    for port in ports:  # the ports are free again (no listener; TIME_WAIT aside, as servers bind)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


from tests.serve.test_server import served  # noqa: E402,F401  (the live server of tiny models)


@live
def test_postprocess_called_directly_with_an_absurd_size_answers_400_at_once(served):
    from covidedge.serve.client import ServerClient, ServerError

    with ServerClient(served["urls"]["http"], timeout_s=30) as client:
        for size in ([46000, 46000], [0, 0]):
            t0 = time.monotonic()
            with pytest.raises(ServerError) as info:
                client.infer("postprocess", {"IMAGE_SIZE": np.array([size], np.int32),
                                             "CLASSIFIER_PROBABILITIES": np.zeros((1, 3), np.float32),
                                             "SEGMENTER_PROBABILITIES": np.zeros((1, 2, 32, 32), np.float32)})
            assert info.value.status == "400" and "is not an image size" in str(info.value)
            assert time.monotonic() - t0 < 10
        assert client.is_ready()


@live
def test_a_dicom_without_preamble_works_through_the_server_as_locally(served, models, tmp_path):
    pytest.importorskip("pydicom")
    from click.testing import CliRunner

    from covidedge.cli.infer import command
    from tests.dicom.builders import radiograph

    raw = Path(radiograph(tmp_path / "full.dcm")).read_bytes()
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(raw[132:])
    local = CliRunner().invoke(command, [str(bare), "-c", str(models[0]), "--json"])
    remote = CliRunner().invoke(command, [str(bare), "--server", served["urls"]["http"], "--json"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    a, b = json.loads(local.stdout)[0], json.loads(remote.stdout)[0]
    assert a["label"] == b["label"] and a["image_size"] == b["image_size"]


def test_shared_memory_left_by_a_dead_covidedge_server_is_removed_at_the_next_start(tmp_path, monkeypatch):
    import covidedge.serve.server as S

    monkeypatch.setattr(S, "SHM_FOLDER", tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{S.SHM_PREFIX}{dead.pid}_ab12_region"
    alive = tmp_path / f"{S.SHM_PREFIX}{os.getpid()}_cd34_region"
    other = tmp_path / "triton_python_backend_shm_region_someone_elses"
    for p in (stale, alive, other):
        p.write_bytes(b"patient data")
    assert S.remove_stale_shm() == [stale.name]
    assert not stale.exists() and alive.exists() and other.exists()
