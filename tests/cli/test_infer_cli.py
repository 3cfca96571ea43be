"""`covidedge infer`: output formats, files written as it goes, usage errors, model checks, and a
start-up that never imports torch for an ONNX model."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from covidedge.errors import BadInputError
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from covidedge.cli.main import main
from tests.graphs import expected_masks, xray

LABELS = ["COVID-19", "Non-COVID", "Normal"]


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(xray(64, 64)).save(folder / "a.png")
    Image.fromarray(np.roll(xray(64, 64), 8, axis=1)).save(folder / "b.png")
    Image.fromarray(xray(40, 48)).save(folder / "sub" / "c.png")
    return folder


def invoke(*args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_table_on_stdout_and_backend_line_on_stderr(models, images):
    cls, seg = models
    res = invoke(images, "--classifier", cls, "--segmenter", seg)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["image", "class", *LABELS, "lungs", "infected", "ms"]
    assert [ln.split()[0] for ln in lines[1:]] == ["a.png", "b.png", "sub/c.png"]  # relative to scans/
    assert all(ln.split()[5].endswith("%") for ln in lines[1:])
    err = res.stderr.splitlines()
    assert err[0] == "backend: onnxruntime fp32 on cpu (classifier cls.onnx, segmenter seg.onnx)"
    assert any(ln.startswith("note: masks and overlays are not saved without an output folder") for ln in err)
    assert err[-1].startswith("3 images: 3 ok, 0 failed")


@pytest.mark.parametrize("compute, shown", [("bf16", "bf16"), ("f32", "fp32")])
def test_backend_line_names_the_precision_an_openvino_engine_computes_in(models, images, tmp_path, compute, shown):
    """An OpenVINO engine built for bf16 compute runs its fp32 graph in bf16 (its manifest's
    inference_precision): the line said "openvino fp32"."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'covidedge[openvino]')")
    from covidedge.engine.build import build_engine

    engine = build_engine(models[0], tmp_path / f"cls.{compute}.ov.onnx", backend="openvino",
                          inference_precision=compute).engine_path
    res = invoke(images / "a.png", "-c", engine)
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[0] == f"backend: openvino {shown} on cpu (classifier {engine.name})"


def test_the_table_tells_images_of_the_same_name_apart(models, images, tmp_path):
    """Paths relative to the input folder (issue 23): class subfolders with the same file names."""
    Image.fromarray(xray(64, 64)).save(images / "sub" / "a.png")
    cls, seg = models
    res = invoke(images, tmp_path / "scans" / "sub" / "a.png", "-c", cls, "-s", seg)
    assert res.exit_code == 0, res.output
    names = [ln.split()[0] for ln in res.stdout.splitlines()[1:]]
    assert names == ["a.png", "b.png", "sub/a.png", "sub/c.png"]  # the second sub/a.png is the same file
    res = invoke(images / "sub", "-c", cls)
    assert [ln.split()[0] for ln in res.stdout.splitlines()[1:]] == ["a.png", "c.png"]


def test_a_missing_model_lists_what_exists_and_how_to_build_one(models, images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COVIDEDGE_ENGINES", str(tmp_path / "engines"))

    def run(*argv):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        return exc.value.code, capsys.readouterr().err

    code, err = run("infer", images / "a.png", "-c", "build/cls.int8.onnx")
    assert code == 3
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: build/cls.int8.onnx: model file not found (no engine is built here; shipped models: ")
    assert "'covidedge build-engine'" in last and "'covidedge build-engine MODEL --out FILE'" in last
    code, err = run("build-engine", models[0], "--out", "build/cls.engine")
    assert code == 0, err
    code, err = run("infer", images / "a.png", "-c", "build/cls.int8.onnx")
    assert code == 3 and "engines here: build/cls.engine;" in err


def test_json_has_every_field_per_image(models, images):
    cls, seg = models
    res = invoke(images / "a.png", "-c", cls, "-s", seg, "--format", "json")
    assert res.exit_code == 0
    (doc,) = json.loads(res.stdout)
    assert doc["source"] == str(images / "a.png") and doc["status"] == "ok"
    assert doc["image_size"] == [64, 64] and list(doc["probabilities"]) == LABELS
    lungs, infection = expected_masks(xray(64, 64))
    # 64x64 image, 32x32 model: compare with the drawn regions loosely
    assert doc["lung_fraction"] == pytest.approx(lungs.mean(), abs=0.08)
    assert set(doc["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess", "total"}
    assert doc["outputs"] == {}
    assert json.loads(invoke(images / "a.png", "-c", cls, "--json").stdout)[0]["label"] == doc["label"]


def test_csv_on_stdout(models, images):
    res = invoke(images, "-c", models[0], "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.png", "c.png"]
    assert all(r["status"] == "ok" and r["label"] in LABELS for r in rows)
    assert all(abs(sum(float(r[f"p_{lab}"]) for lab in LABELS) - 1) < 1e-5 for r in rows)
    assert rows[0]["lung_fraction"] == ""  # no segmenter


def test_out_writes_masks_overlays_and_results_csv(models, images, tmp_path):
    cls, seg = models
    out = tmp_path / "out"
    res = invoke(images, "-c", cls, "-s", seg, "--out", out)
    assert res.exit_code == 0
    assert "not saved" not in res.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["results.csv"] + [f"{n}_{k}.png" for n in "abc"
                                                 for k in ("lungs", "infection", "overlay")])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert rows[2]["height"] == "40" and rows[2]["width"] == "48"
    assert rows[0]["overlay_png"] == str(out / "a_overlay.png")
    c = np.asarray(Image.open(out / "c_lungs.png"))
    assert c.shape == (40, 48)
    # a second run over the same folder with --out inside it does not read its own outputs
    out2 = images / f"out-{tmp_path.name}"
    invoke(images, "-c", cls, "-s", seg, "--out", out2)
    before = (out2 / "results.csv").read_bytes()
    # ... and never truncates the earlier run's results without --overwrite
    with pytest.raises(BadInputError, match="results file already holds results of an earlier run"):
        invoke(images, "-c", cls, "-s", seg, "--out", out2)
    assert (out2 / "results.csv").read_bytes() == before and not (out2 / ".covidedge.lock").exists()
    res = invoke(images, "-c", cls, "-s", seg, "--out", out2, "--overwrite")
    assert res.stderr.splitlines()[-1].startswith("3 images: 3 ok")


def test_json_format_writes_results_jsonl_and_no_overlay(models, images, tmp_path):
    out = tmp_path / "out"
    res = invoke(images, "-s", models[1], "--out", out, "--format", "json", "--no-overlay")
    assert res.exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(ln)["source"].rsplit("/", 1)[-1] for ln in lines] == ["a.png", "b.png", "c.png"]
    assert not list(out.glob("*_overlay.png")) and len(list(out.glob("*_lungs.png"))) == 3


def test_results_file_without_out(models, images, tmp_path):
    target = tmp_path / "r" / "all.jsonl"
    res = invoke(images, "-c", models[0], "--results", target)
    assert res.exit_code == 0 and len(target.read_text().splitlines()) == 3
    assert f"results in {target}" in res.stderr


def test_results_file_is_written_as_it_goes(models, images, tmp_path, monkeypatch):
    """Interrupt the run after the second image: the results file already holds two rows."""
    from covidedge.runtime.pipeline import Pipeline

    real = Pipeline.predict_many

    def interrupted(self, *a, **kw):
        for i, r in enumerate(real(self, *a, **kw)):
            if i == 2:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(Pipeline, "predict_many", interrupted)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(images), "-c", str(models[0]), "--out", str(out), "--batch-size", "1"])
    assert exc.value.code == 130
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.png"]


def test_segmenter_as_classifier_is_refused_before_reading_images(models, tmp_path, capsys):
    cls, seg = models
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")  # would be reported if it were read
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(bad), "--classifier", str(seg)])
    assert exc.value.code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {seg}: is a segmenter model, but a classifier was expected "
                   "(pass it as --segmenter instead)"]
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(bad), "--segmenter", str(cls), "--classifier", str(cls)])
    assert exc.value.code == 4 and "pass it as --classifier" in capsys.readouterr().err


def test_bad_option_values_are_usage_errors(models, images):
    for args in (["--threshold", "1.5"], ["--batch-size", "0"], ["--backend", "cuda"],
                 ["--format", "xml"]):
        res = CliRunner().invoke(command, [str(images), "-c", str(models[0]), *args])
        assert res.exit_code == 2, args


def test_help_teaches_with_an_example():
    res = CliRunner().invoke(command, ["--help"])
    assert res.exit_code == 0
    assert "covidedge infer scans/ --classifier" in res.output and "--segmenter" in res.output
    assert "Exit codes" in res.output


def test_infer_with_an_onnx_model_never_imports_torch(models, images):
    """A fresh interpreter runs the real entry point and reports, at exit, whether torch loaded."""
    script = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: print("TORCH_LOADED=" + str("torch" in sys.modules), file=sys.stderr))
        from covidedge.cli.main import main
        main(["infer", {str(images)!r}, "-c", {str(models[0])!r}, "-s", {str(models[1])!r},
              "--format", "json"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 3
    assert "TORCH_LOADED=False" in proc.stderr.splitlines()


@pytest.mark.realdata
def test_real_covid_qu_ex_images(real_data_root, models, tmp_path):
    """Real 256x256 PNGs from the dataset go through decode, both models and the writers."""
    from covidedge.data.covidqu import CovidQuDataset

    samples = CovidQuDataset(real_data_root).samples("Val")[:3]
    out = tmp_path / "out"
    res = invoke(*[s.image for s in samples], "-c", models[0], "-s", models[1], "--out", out,
                 "--format", "csv")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["source"] for r in rows] == [str(s.image) for s in samples]
    assert all((r["height"], r["width"]) == ("256", "256") for r in rows)
    for r in rows:
        assert np.asarray(Image.open(r["lungs_png"])).shape == (256, 256)
        assert Image.open(r["overlay_png"]).size == (256, 256)


def test_progress_bar_on_a_terminal_and_not_in_a_pipe(models, images):
    """With stderr on a terminal (a pseudo-terminal here) tqdm draws a bar; piped, it does not."""
    pty = pytest.importorskip("pty", reason="needs POSIX pseudo-terminals")
    import fcntl
    import os
    import struct
    import termios

    cmd = [sys.executable, "-m", "covidedge", "infer", str(images), "-c", str(models[0])]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=slave, timeout=120)
    os.close(slave)
    chunks = []
    try:
        while True:
            data = os.read(master, 4096)
            if not data:
                break
            chunks.append(data)
    except OSError:  # EIO once the terminal's writer has gone
        pass
    os.close(master)
    tty_err = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "0/3 [" in tty_err and "img/s" in tty_err
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "img/s" not in piped.stderr and "%|" not in piped.stderr
