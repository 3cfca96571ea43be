"""Results files never lose or overwrite anything: inputs and models are protected, an earlier
run's results are kept, one run at a time per folder, whole lines only on a full disk, and file
names can neither break lines nor smuggle spreadsheet formulas."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.runtime.results import CsvResultsWriter, JsonlResultsWriter, OutputLock, TableFormatter, csv_safe, printable
from covidedge.prediction import Failure, Prediction
from tests.graphs import tiny_models, xray


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def _pred(source="a.png"):
    return Prediction(source=source, image_size=(4, 4), label="Normal",
                      probabilities={"COVID-19": 0.1, "Non-COVID": 0.2, "Normal": 0.7})


def test_results_path_that_is_an_input_or_a_model_is_refused(models, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(xray()).save(img)
    before_img, before_model = img.read_bytes(), models[0].read_bytes()
    for target in (img, models[0]):
        res = CliRunner().invoke(command, [str(img), "-c", str(models[0]), "--results", str(target)])
        assert res.exit_code != 0 and isinstance(res.exception, BadInputError)
        assert "would overwrite an input or a model" in str(res.exception)
    assert img.read_bytes() == before_img and models[0].read_bytes() == before_model


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(models, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(xray()).save(img)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / OutputLock.NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                       "started": "2026-01-01 00:00:00"}))
        res = CliRunner().invoke(command, [str(img), "-c", str(models[0]), "--out", str(out)])
        assert isinstance(res.exception, BadInputError)
        assert f"in use by another covidedge run (pid {holder.pid}" in str(res.exception)
        assert not (out / "results.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over, and released at the end
    res = CliRunner().invoke(command, [str(img), "-c", str(models[0]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "results.csv").is_file() and not (out / OutputLock.NAME).exists()


def test_existing_results_are_kept_without_overwrite(tmp_path):
    target = tmp_path / "r.csv"
    target.write_text("earlier\n")
    with pytest.raises(BadInputError, match="already holds results of an earlier run"):
        CsvResultsWriter(target, ["COVID-19", "Non-COVID", "Normal"])
    assert target.read_text() == "earlier\n"
    with CsvResultsWriter(target, ["COVID-19", "Non-COVID", "Normal"], overwrite=True) as w:
        w.write(_pred())
    assert len(target.read_text().splitlines()) == 2


class _FullDisk:
    """Wraps a writer's open file: the disk is full after ``room`` bytes (ENOSPC), and the
    write that hits it lands partly, as a real one can."""

    def __init__(self, f, room):
        self._f = f
        self.room = room

    def write(self, data):
        if self._f.tell() + len(data) > self.room:
            self._f.write(data[: max(0, self.room - self._f.tell())])
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("writer_cls", [CsvResultsWriter, JsonlResultsWriter])
def test_full_disk_ends_with_one_line_and_whole_results(tmp_path, writer_cls):
    target = tmp_path / ("r.csv" if writer_cls is CsvResultsWriter else "r.jsonl")
    w = writer_cls(target, ["COVID-19", "Non-COVID", "Normal"])
    header = target.stat().st_size
    w.write(_pred("a.png"))
    one = target.stat().st_size - header
    w._fh = _FullDisk(w._fh, header + int(2.5 * one))
    w.write(_pred("b.png"))
    with pytest.raises(RuntimeFailure, match="No space left on device writing .* after 2 results; the "
                                              "results up to 2 are complete"):
        w.write(_pred("c.png"))
    w.close()
    text = target.read_text()
    assert text.endswith("\n") and target.stat().st_size == header + 2 * one
    if writer_cls is CsvResultsWriter:
        assert [r["source"] for r in csv.DictReader(target.open())] == ["a.png", "b.png"]
    else:
        assert [json.loads(ln)["source"] for ln in text.splitlines()] == ["a.png", "b.png"]


def test_names_cannot_break_lines_or_inject_formulas(tmp_path):
    evil = "=HYPERLINK(\"http://x\")\nskipped: fake.png"
    assert printable(evil) == '=HYPERLINK("http://x")\\nskipped: fake.png'
    assert "\n" not in TableFormatter(["A"]).row(Failure(source=evil, error=f"{evil}: bad", exit_code=3))
    assert csv_safe("=1+1") == "'=1+1" and csv_safe("@SUM(A1)") == "'@SUM(A1)" and csv_safe("-2") == "'-2"
    assert csv_safe("scan.png") == "scan.png"
    target = tmp_path / "r.csv"
    with CsvResultsWriter(target, ["COVID-19", "Non-COVID", "Normal"]) as w:
        w.write(_pred("+cmd|' /C calc'!A0"))
    row = next(csv.DictReader(target.open()))
    assert row["source"] == "'+cmd|' /C calc'!A0" and row["p_Normal"] == "0.700000"


def test_skipped_lines_escape_control_characters(models, tmp_path):
    bad = tmp_path / "a\nskipped: fake.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.fromarray(xray()).save(good)
    res = CliRunner().invoke(command, [str(bad), str(good), "-c", str(models[0])])
    assert res.exit_code == 1
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped:")]
    assert len(skipped) == 1 and "a\\nskipped: fake.png" in skipped[0]


def test_blank_tiny_and_strip_images_are_flagged_or_refused_with_strict(models, tmp_path):
    paths = {"blank.png": np.full((128, 128), 77, np.uint8), "tiny.png": xray()[:20, :20],
             "strip.png": np.tile(np.linspace(0, 255, 600, dtype=np.uint8)[:, None], (1, 100)),
             "good.png": np.asarray(Image.fromarray(xray()).resize((96, 96)))}
    for name, arr in paths.items():
        Image.fromarray(arr).save(tmp_path / name)
    files = [str(tmp_path / n) for n in paths]
    res = CliRunner().invoke(command, [*files, "-c", str(models[0]), "--format", "json"])
    assert res.exit_code == 0, res.output
    flags = {r["source"].rsplit("/", 1)[-1]: r["quality_flags"] for r in json.loads(res.stdout)}
    assert flags == {"blank.png": ["constant"], "tiny.png": ["tiny"], "strip.png": ["extreme_aspect_ratio"],
                     "good.png": []}
    assert sum("do not trust this result" in ln for ln in res.stderr.splitlines()) == 3
    res = CliRunner().invoke(command, [*files, "-c", str(models[0]), "--strict"])
    assert res.exit_code == 1
    assert sum("fails the input quality check" in ln for ln in res.stderr.splitlines()) == 3
