"""Nothing an earlier or a concurrent run wrote is lost: one never-overwrite rule and one lock
(covidedge.fileio) for every shared output, checked with two real processes where two runs meet."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from covidedge.errors import BadInputError
from covidedge.fileio import OutputExistsError, OutputLock, atomic_target, refuse_existing, write_atomic
from tests.graphs import tiny_models, xray


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def _images(folder, n, size=64, name="scan"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.roll(xray(size, size), i, axis=1)).save(folder / f"{name}{i:04d}.png")
    return folder


def _covidedge(*args):
    return subprocess.Popen([sys.executable, "-m", "covidedge", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd())


def _wait_for(path, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.005)


# -- the rule itself ----------------------------------------------------------------------------------
def test_never_overwrite_rule_refuses_existing_and_racing_files(tmp_path):
    target = tmp_path / "engine.onnx"
    target.write_bytes(b"first")
    with pytest.raises(OutputExistsError, match="already exists; covidedge does not overwrite it"):
        refuse_existing(target, what="engine")
    with pytest.raises(OutputExistsError):
        write_atomic(target, b"second", overwrite=False)
    # a file that appears while this one is written (another process) is not replaced either
    late = tmp_path / "late.png"
    with pytest.raises(OutputExistsError, match="appeared while it was written"):
        with atomic_target(late, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            late.write_bytes(b"theirs")
    assert target.read_bytes() == b"first" and late.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    refuse_existing(tmp_path / "new.onnx")  # a free name is fine


def test_file_lock_is_exclusive_and_names_the_holder(tmp_path):
    target = tmp_path / "r.csv"
    with OutputLock.for_file(target):
        with pytest.raises(Exception, match=f"results file is in use by another covidedge run \\(pid {os.getpid()}"):
            OutputLock.for_file(target).acquire()
    OutputLock.for_file(target).acquire().release()


# -- item 1: a second run into one --out never replaces the first run's masks -------------------------
def test_second_run_into_one_out_keeps_the_first_runs_masks(models, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Image.fromarray(xray(40, 40)).save(a / "scan.png")
    Image.fromarray(255 - xray(40, 40)).save(b / "scan.png")
    out = tmp_path / "R"
    cls, seg = models
    r1 = CliRunner().invoke(command, [str(a / "scan.png"), "-c", str(cls), "-s", str(seg), "--out", str(out)])
    assert r1.exit_code == 0, r1.output
    first = {p.name: p.read_bytes() for p in out.glob("scan_*.png")}
    assert set(first) == {"scan_lungs.png", "scan_infection.png", "scan_overlay.png"}
    for extra in (["--format", "json"], ["--results", str(tmp_path / "other.csv")]):
        r2 = CliRunner().invoke(command, [str(b / "scan.png"), "-c", str(cls), "-s", str(seg), "--out", str(out),
                                          *extra])
        assert r2.exit_code == 0, r2.output
    assert {p.name: p.read_bytes() for p in out.glob("scan_*.png") if p.name in first} == first
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[0]["lungs_png"].endswith("scan_lungs.png")
    second = [json.loads(ln) for ln in open(out / "results.jsonl")]
    third = list(csv.DictReader(open(tmp_path / "other.csv")))
    names = {os.path.basename(second[0]["outputs"]["lungs"]), os.path.basename(third[0]["lungs_png"])}
    assert names == {"scan_2_lungs.png", "scan_3_lungs.png"}
    for n in names:
        assert (out / n).is_file()


# -- item 5: --format json is streamed --------------------------------------------------------------
def test_json_on_stdout_is_streamed_and_closed_when_the_run_stops(models, tmp_path, monkeypatch):
    from covidedge.runtime import pipeline as pipeline_module

    folder = _images(tmp_path / "in", 5, size=32)
    real = pipeline_module.Pipeline.predict_many

    def two_then_stop(self, *args, **kwargs):
        for i, r in enumerate(real(self, *args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(pipeline_module.Pipeline, "predict_many", two_then_stop)
    res = CliRunner().invoke(command, [str(folder), "-c", str(models[0]), "--format", "json"])
    assert isinstance(res.exception, KeyboardInterrupt) or res.exit_code != 0
    got = json.loads(res.stdout)
    assert [os.path.basename(d["source"]) for d in got] == ["scan0000.png", "scan0001.png"]


def test_json_on_stdout_is_a_list_of_every_result(models, tmp_path):
    folder = _images(tmp_path / "in", 3, size=32)
    res = CliRunner().invoke(command, [str(folder), "-c", str(models[0]), "--json"])
    assert res.exit_code == 0, res.output
    assert [d["status"] for d in json.loads(res.stdout)] == ["ok"] * 3


# -- item 6: two real processes, one --results file ---------------------------------------------------
def test_two_processes_with_one_results_file_do_not_tear_it(models, tmp_path):
    folder = _images(tmp_path / "in", 150)
    results = tmp_path / "r.csv"
    cls, seg = models
    first = _covidedge("infer", folder, "-c", cls, "-s", seg, "--results", results, "--overwrite")
    try:
        _wait_for(results, first)
        first.send_signal(signal.SIGSTOP)  # the first run is mid-way: the second starts now
        second = _covidedge("infer", folder, "-c", cls, "-s", seg, "--results", results, "--overwrite")
        out2, err2 = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 3 and "results file is in use by another covidedge run (pid" in err2, err2
    rows = list(csv.DictReader(open(results, newline="")))
    assert len(rows) == 150 and all(r["status"] == "ok" and r["exit_code"] == "" for r in rows)
    assert len({r["source"] for r in rows}) == 150
    assert not list(tmp_path.glob(".*.lock"))


# -- item 3: two real processes, one --dicom-out; a user's own index.csv ---------------------------------
def _dicom_export(folder, n):
    from tests.dicom.builders import radiograph

    folder.mkdir()
    for i in range(n):
        radiograph(folder / f"dx{i:03d}.dcm")
    return folder


def test_two_processes_with_one_dicom_out_keep_every_object(models, tmp_path):
    pytest.importorskip("highdicom", reason="highdicom (the dicom extra) writes the DICOM results")
    pydicom = pytest.importorskip("pydicom")
    export = _dicom_export(tmp_path / "export", 12)
    out = tmp_path / "pacs"
    cls, seg = models
    first = _covidedge("infer", export, "-c", cls, "-s", seg, "--dicom-out", out)
    try:
        _wait_for(out / "index.csv", first)
        first.send_signal(signal.SIGSTOP)
        second = _covidedge("infer", export, "-c", cls, "-s", seg, "--dicom-out", out)
        out2, err2 = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 3 and "DICOM output folder is in use by another covidedge run" in err2, err2
    rows = list(csv.DictReader(open(out / "index.csv", newline="")))
    files = [r[k] for r in rows for k in ("seg", "sr", "sc")]
    assert len(rows) == 12 and len(set(files)) == 36
    for f in files:  # each file is the object its row names: the row's source
        ds = pydicom.dcmread(f)
        src = pydicom.dcmread(next(r["source"] for r in rows if f in (r["seg"], r["sr"], r["sc"])))
        assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.csv", *(os.path.basename(f) for f in files)])


def test_a_users_own_index_csv_is_not_appended_to(models, tmp_path):
    pytest.importorskip("highdicom", reason="highdicom (the dicom extra) writes the DICOM results")
    export = _dicom_export(tmp_path / "export", 1)
    out = tmp_path / "pacs"
    out.mkdir()
    (out / "index.csv").write_text("patient,notes\nDoe,private\n")
    res = CliRunner().invoke(command, [str(export), "-c", str(models[0]), "--dicom-out", str(out)])
    assert isinstance(res.exception, BadInputError) and "is not a covidedge DICOM index" in str(res.exception)
    assert (out / "index.csv").read_text() == "patient,notes\nDoe,private\n"
    assert sorted(p.name for p in out.iterdir()) == ["index.csv"]
