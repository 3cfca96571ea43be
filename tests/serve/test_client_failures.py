"""The Triton client when the server misbehaves (issue 22, items 10 and 25), against a stand-in
server on loopback: credentials in --server are used but never printed, and a server that stops
answering stops the run after one timeout, saying how many images were done."""

from __future__ import annotations

import base64
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from tests.graphs import xray
from tests.serve.conftest import needs_serve_extra
from tests.serve.fake_triton import FakeTriton

FACTS = {"labels": ["COVID-19", "Non-COVID", "Normal"], "threshold": None,
         "models": {"classifier": {"source": "cls.onnx", "backend": "onnxruntime", "precision": "fp32"}}}

pytestmark = needs_serve_extra


def _images(folder, n):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(xray()).save(folder / f"x{i:02d}.png")
    return folder


def test_credentials_in_the_server_url_are_sent_but_never_printed(tmp_path):
    folder = _images(tmp_path / "in", 2)
    with FakeTriton(FACTS, stall_s=5) as fake:
        url = fake.url.replace("http://", "http://alice:s3cr%3At@")
        res = CliRunner().invoke(command, [str(folder), "--server", url, "--timeout", "0.5"])
    assert "s3cr" not in res.output and "alice" not in res.output
    assert "http://***@127.0.0.1" in res.output
    expected = "Basic " + base64.b64encode(b"alice:s3cr:t").decode()
    assert fake.authorizations and set(fake.authorizations) == {expected}
    # a malformed URL is named redacted too
    bad = CliRunner().invoke(command, [str(folder), "--server", "ftp://bob:hunter2@127.0.0.1:1"])
    assert "hunter2" not in str(bad.exception) and "***@" in str(bad.exception)


def test_a_stalled_server_stops_the_run_after_one_timeout(tmp_path):
    folder = _images(tmp_path / "in", 12)
    with FakeTriton(FACTS, stall_s=30) as fake:
        t0 = time.monotonic()
        res = CliRunner().invoke(command, [str(folder), "--server", fake.url, "--timeout", "1",
                                           "--batch-size", "2", "--results", str(tmp_path / "r.csv")])
        took = time.monotonic() - t0
    assert took < 10, took  # not 12 timeouts
    assert fake.infer_requests <= 4
    text = str(res.exception)
    assert "stopped answering" in text and "stopped after 2 of 12 images, 0 of them answered" in text, res.output
    assert getattr(res.exception, "exit_code", None) == 5
    assert (tmp_path / "r.csv").read_text().count("\n") == 3  # header + the two unanswered


def test_timeout_needs_a_server(tmp_path):
    folder = _images(tmp_path / "in", 1)
    res = CliRunner().invoke(command, [str(folder), "--timeout", "3"])
    assert "--timeout applies to --server" in str(res.exception)
