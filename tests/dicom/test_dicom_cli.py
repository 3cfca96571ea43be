"""`covidedge infer --dicom-out`: SEG, SR and Secondary Capture read back with pydicom and checked
against the PNG masks and the results file; references, series, filters and privacy."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.infer import command
from covidedge.cli.main import main
from tests.dicom.builders import PATIENT_ID, PATIENT_NAME, STUDY_UID, radiograph, text_report
from tests.graphs import xray

pydicom = pytest.importorskip("pydicom", reason="pydicom reads the DICOM results back")

LABELS = ["COVID-19", "Non-COVID", "Normal"]
FINDINGS = {"COVID-19": "840539006", "Non-COVID": "233604007", "Normal": "17621005"}
FRONTAL = ["cr.dcm", "dx_m1.dcm", "dx_m2.dcm"]
#: Patient identifiers that must not leave the DICOM objects: the name, its parts, the ID.
SECRETS = [PATIENT_ID, PATIENT_NAME, "Doe", "Jane"]


def invoke(*args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Frontal DX (MONOCHROME2 and MONOCHROME1) and CR images, a lateral, a multi-frame, an SR and
    a PNG, as a PACS export might hold them."""
    d = tmp_path_factory.mktemp("export")
    radiograph(d / "dx_m2.dcm")
    radiograph(d / "dx_m1.dcm", photometric="MONOCHROME1")
    radiograph(d / "cr.dcm", modality="CR", view="AP", shape=(40, 56))
    radiograph(d / "lateral.dcm", view="LL")
    radiograph(d / "multi.dcm", frames=2)
    text_report(d / "report.dcm")
    Image.fromarray(xray(32, 32)).save(d / "plain.png")
    return d


@pytest.fixture(scope="module")
def highdicom():
    return pytest.importorskip("highdicom", reason="highdicom (the dicom extra) writes the DICOM results")


@pytest.fixture(scope="module")
def run(highdicom, models, export, tmp_path_factory):
    """One run over the export with --out and --dicom-out."""
    root = tmp_path_factory.mktemp("run")
    out, dout = root / "out", root / "dicom"
    res = invoke(export, "-c", models[0], "-s", models[1], "--out", out, "--dicom-out", dout)
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out / "results.csv"))}
    return res, out, dout, rows


def read(path):
    return pydicom.dcmread(str(path))


def sr_items(items):
    """Flatten an SR content tree into (concept meaning, value type, item) triples."""
    for it in items:
        yield it.ConceptNameCodeSequence[0].CodeMeaning, it.ValueType, it
        if "ContentSequence" in it:
            yield from sr_items(it.ContentSequence)


def sr_numbers(sr):
    return {name: (float(it.MeasuredValueSequence[0].NumericValue),
                   it.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
            for name, vt, it in sr_items(sr.ContentSequence) if vt == "NUM"}


# ---------------------------------------------------------------------------------------------
def test_run_writes_three_objects_per_frontal_dicom_and_lists_the_rest(run, export):
    res, out, dout, rows = run
    assert res.exit_code == 0, res.output
    assert sorted(rows) == FRONTAL + ["plain.png"]
    assert sorted(p.name for p in dout.iterdir()) == sorted(
        ["index.csv"] + [f"{n[:-4]}_{k}.dcm" for n in FRONTAL for k in ("seg", "sr", "sc")])
    err = res.stderr.splitlines()
    assert f"not selected: {export / 'lateral.dcm'}: ViewPosition LL is not PA or AP (--view-position)" in err
    assert any(ln.startswith(f"not selected: {export / 'multi.dcm'}: multi-frame") for ln in err)
    assert any(ln.startswith(f"not selected: {export / 'report.dcm'}: no pixel data") for ln in err)
    assert f"note: {export / 'plain.png'}: not DICOM, so no DICOM outputs for it (--dicom-out)" in err
    assert err[-1].startswith("4 images: 4 ok, 0 failed")
    assert err[-1].endswith(f"; 3 not selected (DICOM filters); DICOM results for 3 images in {dout}")
    for kind, modality, sop_class in (("seg", "SEG", "Segmentation Storage"),
                                      ("sr", "SR", "Comprehensive SR Storage"),
                                      ("sc", "OT", "Secondary Capture Image Storage")):
        ds = read(dout / f"dx_m1_{kind}.dcm")
        assert ds.Modality == modality and ds.SOPClassUID.name == sop_class


def test_seg_segments_equal_the_png_masks(run, export):
    _, out, dout, _ = run
    for name in FRONTAL:
        stem = name[:-4]
        seg = read(dout / f"{stem}_seg.dcm")
        segments = {s.SegmentNumber: s for s in seg.SegmentSequence}
        assert segments[1].SegmentLabel == "lungs" and segments[2].SegmentLabel == "infection"
        lung_type = segments[1].SegmentedPropertyTypeCodeSequence[0]
        assert (lung_type.CodeValue, lung_type.CodingSchemeDesignator) == ("39607008", "SCT")
        inf_type = segments[2].SegmentedPropertyTypeCodeSequence[0]
        assert (inf_type.CodeValue, inf_type.CodingSchemeDesignator) == ("112001", "DCM")
        algo = segments[1].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "covidedge" and algo.AlgorithmVersion
        assert "seg.onnx sha256:" in algo.AlgorithmParameters
        frames = seg.pixel_array.reshape(seg.NumberOfFrames, seg.Rows, seg.Columns)
        by_segment = {fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber: frames[i]
                      for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence)}
        for number, kind in ((1, "lungs"), (2, "infection")):
            png = np.asarray(Image.open(out / f"{stem}_{kind}.png")) > 0
            assert by_segment[number].shape == png.shape
            assert int(by_segment[number].sum()) == int(png.sum()) > 0, (name, kind)
            assert np.array_equal(by_segment[number] > 0, png)


def test_sr_values_equal_the_results_file(run):
    _, _, dout, rows = run
    for name in FRONTAL:
        sr, row = read(dout / f"{name[:-4]}_sr.dcm"), rows[name]
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        numbers = sr_numbers(sr)
        for label in LABELS:
            value, unit = numbers[f"Probability of {label}"]
            assert unit == "1" and value == pytest.approx(float(row[f"p_{label}"]), abs=2e-6)
        value, unit = numbers["Infected fraction of lungs"]
        assert unit == "%" and value / 100 == pytest.approx(float(row["infected_fraction"]), abs=2e-6)
        value, unit = numbers["Lung fraction of image"]
        assert unit == "%" and value / 100 == pytest.approx(float(row["lung_fraction"]), abs=2e-6)
        findings = [it.ConceptCodeSequence[0].CodeValue for n, vt, it in sr_items(sr.ContentSequence)
                    if n == "Finding"]
        assert findings == [FINDINGS[row["label"]], "39607008"]  # the class, then the lungs group


def test_references_point_at_the_source(run, export):
    _, _, dout, _ = run
    for name in FRONTAL:
        src, stem = read(export / name), name[:-4]
        seg, sr, sc = (read(dout / f"{stem}_{k}.dcm") for k in ("seg", "sr", "sc"))
        for ds in (seg, sr, sc):
            assert ds.StudyInstanceUID == src.StudyInstanceUID == STUDY_UID
            assert ds.PatientID == src.PatientID and ds.AccessionNumber == src.AccessionNumber
            assert ds.SeriesInstanceUID != src.SeriesInstanceUID
            assert ds.SOPInstanceUID != src.SOPInstanceUID
        ref = seg.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == src.SeriesInstanceUID
        assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        evidence = {s.ReferencedSOPInstanceUID for series in sr.CurrentRequestedProcedureEvidenceSequence
                    for item in series.ReferencedSeriesSequence for s in item.ReferencedSOPSequence}
        assert evidence == {src.SOPInstanceUID, seg.SOPInstanceUID}
        images = {n: it.ReferencedSOPSequence[0] for n, vt, it in sr_items(sr.ContentSequence)
                  if vt == "IMAGE"}
        assert images["Source of Measurement"].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert images["Referenced Segmentation Frame"].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert images["Referenced Segmentation Frame"].ReferencedSegmentNumber == 1


def test_one_series_per_kind_per_study_per_run(run):
    _, _, dout, _ = run
    for kind in ("seg", "sr", "sc"):
        objs = [read(dout / f"{n[:-4]}_{kind}.dcm") for n in FRONTAL]
        assert len({o.SeriesInstanceUID for o in objs}) == 1
        assert len({o.SOPInstanceUID for o in objs}) == 3
        assert sorted(int(o.InstanceNumber) for o in objs) == [1, 2, 3]
    assert len({read(dout / f"cr_{k}.dcm").SeriesInstanceUID for k in ("seg", "sr", "sc")}) == 3


def test_secondary_capture_is_the_overlay(run):
    _, out, dout, _ = run
    sc = read(dout / "dx_m1_sc.dcm")
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    png = np.asarray(Image.open(out / "dx_m1_overlay.png").convert("RGB"))
    assert np.array_equal(sc.pixel_array, png)  # same picture, MONOCHROME1 shown the right way
    m2 = read(dout / "dx_m2_sc.dcm").pixel_array
    assert np.array_equal(sc.pixel_array, m2)  # the MONOCHROME1 twin looks the same


def test_no_patient_identifiers_in_stdout_stderr_results_or_index(run):
    res, out, dout, _ = run
    texts = {"stdout": res.stdout, "stderr": res.stderr,
             "results.csv": (out / "results.csv").read_text(), "index.csv": (dout / "index.csv").read_text()}
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, (where, secret)
    index = list(csv.DictReader(open(dout / "index.csv")))
    assert [r["patient_id"] for r in index] == ["", "", ""]
    assert {r["sop_instance_uid"] for r in index} == {read(dout / f"{n[:-4]}_seg.dcm")
                                                      .ReferencedSeriesSequence[0]
                                                      .ReferencedInstanceSequence[0]
                                                      .ReferencedSOPInstanceUID for n in FRONTAL}


def test_show_patient_ids_and_a_second_run_never_replaces_the_first(models, export, run, tmp_path):
    _, _, dout, _ = run
    before = {p.name: p.read_bytes() for p in dout.glob("*.dcm")}
    res = invoke(export / "dx_m2.dcm", "-c", models[0], "--dicom-out", dout, "--show-patient-ids",
                 "--format", "json")
    assert res.exit_code == 0, res.output
    assert f"dicom: dx_m2.dcm: patient {PATIENT_NAME} (ID {PATIENT_ID}), SOP Instance UID " in res.stderr
    assert {p.name: p.read_bytes() for p in dout.glob("*.dcm") if p.name in before} == before
    (doc,) = json.loads(res.stdout)
    assert doc["outputs"] == {"dicom_sr": str(dout / "dx_m2_2_sr.dcm")}  # classifier only: an SR
    assert PATIENT_ID not in res.stdout
    index = list(csv.DictReader(open(dout / "index.csv")))
    assert len(index) == 4
    assert (index[-1]["patient_id"], index[-1]["patient_name"]) == (PATIENT_ID, PATIENT_NAME)
    numbers = sr_numbers(read(dout / "dx_m2_2_sr.dcm"))
    assert set(numbers) == {f"Probability of {lab}" for lab in LABELS}


def test_a_dicom_that_cannot_be_referenced_is_one_line_and_the_run_goes_on(highdicom, models, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    radiograph(d / "good.dcm")
    bad = radiograph(d / "nostudy.dcm")
    ds = pydicom.dcmread(str(bad))
    del ds.StudyInstanceUID
    ds.save_as(str(bad))
    res = invoke(d, "-s", models[1], "--dicom-out", tmp_path / "dicom")
    assert res.exit_code == 1, res.output
    assert f"skipped DICOM outputs: {bad}: {bad}: has no StudyInstanceUID; DICOM results must refer to it " \
           "(re-export the image from the PACS)" in res.stderr.splitlines()
    assert sorted(p.name for p in (tmp_path / "dicom").glob("*.dcm")) == ["good_sc.dcm", "good_seg.dcm",
                                                                          "good_sr.dcm"]
    assert "(1 failed)" in res.stderr.splitlines()[-1]


def test_without_the_dicom_extra_dicom_out_is_refused_with_the_install_command(models, export, tmp_path,
                                                                               monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(export / "dx_m2.dcm"), "-c", str(models[0]), "--dicom-out",
              str(tmp_path / "dicom")])
    assert exc.value.code == 6
    err = capsys.readouterr().err
    assert "highdicom is not installed" in err and "pip install 'covidedge[dicom]'" in err
    assert not (tmp_path / "dicom").exists()
