"""DICOM results read back by the readers a PACS side uses (issue 22, items 20, 24, 12): SEGs of
sources with PixelSpacing through highdicom's segread, covidedge's own Secondary Capture fed
back in is left out, and index.csv cells and note lines cannot be forged by names or IDs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from tests.dicom.builders import radiograph

pydicom = pytest.importorskip("pydicom", reason="pydicom reads the DICOM results back")
hd = pytest.importorskip("highdicom", reason="highdicom (the dicom extra) writes and reads the results")


def invoke(*args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_seg_of_sources_with_pixel_spacing_reads_back_with_segread(models, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    radiograph(src / "cr.dcm", modality="CR", PixelSpacing=[0.143, 0.143])
    radiograph(src / "dx.dcm", ImagerPixelSpacing=[0.1, 0.1], PixelSpacing=[0.1, 0.1])
    radiograph(src / "plain.dcm")
    out, pngs = tmp_path / "pacs", tmp_path / "png"
    res = invoke(src, "-c", models[0], "-s", models[1], "--dicom-out", out, "--out", pngs)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "index.csv", newline="")))
    results = {r["source"]: r for r in csv.DictReader(open(pngs / "results.csv", newline=""))}
    assert len(rows) == 3
    for row in rows:
        seg = hd.seg.segread(row["seg"])
        source = pydicom.dcmread(row["source"])
        got = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2])[0]
        lungs = np.asarray(Image.open(results[row["source"]]["lungs_png"])) > 0
        infection = np.asarray(Image.open(results[row["source"]]["infection_png"])) > 0
        np.testing.assert_array_equal(got[..., 0].astype(bool), lungs)
        np.testing.assert_array_equal(got[..., 1].astype(bool), infection)


def test_covidedge_secondary_capture_fed_back_is_not_selected(models, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    radiograph(src / "dx.dcm")
    out = tmp_path / "pacs"
    assert invoke(src, "-c", models[0], "-s", models[1], "--dicom-out", out).exit_code == 0
    sc = next(out.glob("*_sc.dcm"))
    assert pydicom.dcmread(sc).Modality in ("DX", "OT", "CR")
    again = CliRunner().invoke(command, [str(out), "-c", str(models[0])])  # the results fed back in
    assert "no images to process" in str(again.exception)  # nothing left to run on
    assert f"not selected: {sc}: written by covidedge" in again.output
    # a derived secondary picture from elsewhere is left out too
    other = tmp_path / "other"
    other.mkdir()
    radiograph(other / "derived.dcm", ImageType=["DERIVED", "SECONDARY"])
    radiograph(other / "original.dcm", ImageType=["ORIGINAL", "PRIMARY"])
    res = invoke(other, "-c", models[0], "--json")
    assert "derived.dcm: ImageType DERIVED\\SECONDARY" in res.output and "original.dcm" in res.stdout


def test_index_cells_and_note_lines_cannot_be_forged(models, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    name = "=HYPERLINK(1)\nforged.dcm"
    radiograph(src / name, PatientID="X\nnote: forged line", PatientName="=cmd^Jane")
    out = tmp_path / "pacs"
    res = invoke(src, "-c", models[0], "-s", models[1], "--dicom-out", out, "--show-patient-ids")
    assert res.exit_code == 0, res.output
    assert not any(line.startswith("note: forged line") for line in res.output.splitlines())
    assert not any(line.startswith("forged.dcm") for line in res.output.splitlines())
    text = (out / "index.csv").read_text()
    rows = list(csv.DictReader(open(out / "index.csv", newline="")))
    assert len(rows) == 1 and len(text.splitlines()) == 2  # header + one line: no cell spans lines
    row = rows[0]
    assert row["source"].startswith(str(src)) and "\\n" in row["source"]
    assert row["patient_id"] == "X\\nnote: forged line"
    assert row["patient_name"] == "'=cmd^Jane"
    for cell in row.values():
        assert not cell.startswith(("=", "+", "-", "@"))
