"""A real server: ``covidedge serve`` runs a cpu repository of tiny models on the bundled
tritonserver, on free 127.0.0.1 ports, and what it answers over HTTP and gRPC equals covidedge
in-process. Skipped with the reason when the serve extra (or a numpy<2 Python for the python
stub, which nvidia-pytriton 0.7 needs) is missing."""

from __future__ import annotations

import csv
import io
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.graphs import xray
from tests.serve.conftest import bundled_server_missing, free_port
from tests.serve.test_cli import _invoke

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(bundled_server_missing()), reason=bundled_server_missing() or "-")]


def _processes_mentioning(text: str):
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd[:120]}")
    return found


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    from covidedge.errors import MissingDependencyError
    from covidedge.serve.repository import write_repository
    from covidedge.serve.server import check_stub_python, find_bundled_server, server_environment, stub_python

    python = stub_python()
    try:
        check_stub_python(python, server_environment(find_bundled_server(), python=python))
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("served")
    repo = write_repository(root / "repo", *models, max_batch=8, queue_delay_us=2000)
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "covidedge", "serve", str(repo.path), "--http-port",
                             str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    urls = {"http": f"http://127.0.0.1:{ports[0]}", "grpc": f"grpc://127.0.0.1:{ports[1]}",
            "metrics": f"http://127.0.0.1:{ports[2]}/metrics"}
    deadline = time.monotonic() + 90
    ready = False
    while time.monotonic() < deadline and proc.poll() is None and not ready:
        try:
            with urllib.request.urlopen(urls["http"] + "/v2/health/ready", timeout=1) as r:
                ready = r.status == 200
        except OSError:
            time.sleep(0.2)
    if not ready:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"covidedge serve did not become ready: {err[-2000:]}")
    png = root / "xray.png"
    Image.fromarray(xray(40, 48)).save(png)
    yield {"proc": proc, "urls": urls, "repo": repo.path, "png": png, "root": root}
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_networks_answer_as_in_process(served, models, scheme):
    from covidedge.runtime.pipeline import Classifier, Segmenter
    from covidedge.serve.client import ServerClient

    x = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
    with ServerClient(served["urls"][scheme]) as c, Classifier(models[0]) as cls, Segmenter(models[1]) as seg:
        got_c = c.infer("classifier", {"image": x}, ["probabilities"])["probabilities"]
        got_s = c.infer("segmenter", {"image": x}, ["probabilities"])["probabilities"]
        np.testing.assert_allclose(got_c, cls.run(x), atol=1e-6, rtol=0)
        np.testing.assert_allclose(got_s, seg.run(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_ensemble_given_png_bytes_equals_pipeline_predict(served, models, scheme):
    from covidedge.runtime.pipeline import Pipeline
    from covidedge.serve.client import ServerPipeline

    with Pipeline(*models) as local, ServerPipeline(served["urls"][scheme]) as remote:
        want = local.predict(served["png"])
        got = remote.predict(served["png"].read_bytes())
    assert got.image_size == want.image_size == (40, 48)
    assert got.label == want.label
    assert got.probabilities == want.probabilities  # the same float32 values, widened alike
    assert np.array_equal(got.lung_mask, want.lung_mask) and want.lung_mask.any()
    assert np.array_equal(got.infection_mask, want.infection_mask) and want.infection_mask.any()
    assert (got.lung_fraction, got.infected_fraction) == (want.lung_fraction, want.infected_fraction)


def test_a_threshold_other_than_the_repositorys_is_refused(served):
    from covidedge.errors import BadInputError
    from covidedge.serve.client import ServerPipeline

    with pytest.raises(BadInputError, match="server applies mask threshold 0.5, not 0.3"):
        ServerPipeline(served["urls"]["http"], threshold=0.3)


def test_infer_server_prints_and_writes_what_a_local_run_does(served, models):
    bad = served["root"] / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    runs = {}
    for name, how in (("local", ["-c", str(models[0]), "-s", str(models[1])]),
                      ("server", ["--server", served["urls"]["grpc"]])):
        out_dir = served["root"] / f"out-{name}"
        code, out, err = _invoke(["infer", str(served["png"]), str(bad), *how, "--format", "csv",
                                  "--out", str(out_dir)])
        rows = [{k: v.replace(str(out_dir), "OUT") for k, v in row.items() if not k.endswith("_ms")}
                for row in csv.DictReader(io.StringIO(out))]
        skipped = [line for line in err.splitlines() if line.startswith("skipped:")]
        pngs = {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.png"))}
        runs[name] = (code, rows, skipped, pngs)
    assert runs["server"] == runs["local"]
    assert runs["local"][0] == 1 and len(runs["local"][2]) == 1
    assert sorted(runs["local"][3]) == ["xray_infection.png", "xray_lungs.png", "xray_overlay.png"]


def test_eight_concurrent_clients_are_batched(served, models):
    from covidedge.runtime.pipeline import Classifier
    from covidedge.serve.client import ServerClient

    xs = np.random.default_rng(2).random((8, 1, 1, 32, 32), dtype=np.float32)
    with Classifier(models[0]) as cls:
        want = [cls.run(x) for x in xs]
    errors, done = [], [0] * 8

    def client(k):
        with ServerClient(served["urls"]["grpc"]) as c:
            for _ in range(50):
                try:
                    p = c.infer("classifier", {"image": xs[k]}, ["probabilities"])["probabilities"]
                    np.testing.assert_allclose(p, want[k], atol=1e-6, rtol=0)
                    done[k] += 1
                except Exception as exc:  # collected: a thread's failure must fail the test
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and done == [50] * 8
    with ServerClient(served["urls"]["http"]) as c:
        stats = c.statistics("classifier")[0]
    sizes = [int(b["batch_size"]) for b in stats.get("batch_stats", [])]
    assert int(stats["inference_count"]) >= 400
    assert max(sizes) > 1, f"batch sizes seen: {sizes}"


def test_wrong_shape_or_dtype_is_a_clear_error_and_the_server_stays_healthy(served):
    from covidedge.serve.client import ServerClient, ServerError

    with ServerClient(served["urls"]["http"]) as c:
        with pytest.raises(ServerError, match=r"unexpected shape for input 'image'.*\[-1,1,32,32\]"):
            c.infer("classifier", {"image": np.zeros((1, 1, 16, 16), np.float32)})
        with pytest.raises(ServerError, match="FP64"):
            c.infer("classifier", {"image": np.zeros((1, 1, 32, 32), np.float64)})
        with pytest.raises(ServerError, match="is not a recognisable image") as bad:
            c.infer("covidedge", {"IMAGE": np.array([[b"not an image"]], dtype=object)})
        assert bad.value.exit_code == 3
        assert c.is_ready()
        assert c.infer("classifier", {"image": np.zeros((1, 1, 32, 32), np.float32)})["probabilities"].shape == (1, 3)


def test_metrics_count_inferences(served):
    from covidedge.serve.client import ServerClient

    def count():
        text = urllib.request.urlopen(served["urls"]["metrics"], timeout=5).read().decode()
        m = re.search(r'^nv_inference_count\{model="segmenter",version="1"\} (\d+)', text, re.M)
        return int(m.group(1)) if m else 0

    before = count()
    with ServerClient(served["urls"]["grpc"]) as c:
        for _ in range(3):
            c.infer("segmenter", {"image": np.zeros((1, 1, 32, 32), np.float32)})
    deadline = time.monotonic() + 5
    while count() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count() == before + 3


def test_shutdown_leaves_no_process_behind(served):
    proc = served["proc"]
    assert _processes_mentioning(str(served["repo"]))  # the server and its python stubs, while running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "http    " + served["urls"]["http"] in out
    assert "stopped" in err
    assert not re.search(r"cuda|nvml|dcgm", err, re.I)  # GPU noise is not shown to users
    assert _processes_mentioning(str(served["repo"])) == []
