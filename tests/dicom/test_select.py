"""Series selection: the filters keep what they say, and every file left out has a reason."""

from __future__ import annotations

import shutil
import sys

import pytest
from PIL import Image

from covidedge.dicom.select import SeriesFilter, select_instances
from covidedge.errors import BadInputError, MissingDependencyError
from tests.dicom.builders import radiograph, text_report
from tests.graphs import xray


@pytest.fixture()
def export(tmp_path):
    """A PACS-like folder: frontal DX (MONOCHROME1 and 2) and CR, a lateral, a CT, a multi-frame,
    an SR, an abdomen, a radiograph without ViewPosition or BodyPartExamined, a duplicate, a PNG."""
    d = tmp_path / "export"
    d.mkdir()
    radiograph(d / "dx_m2.dcm")
    radiograph(d / "dx_m1.dcm", photometric="MONOCHROME1")
    radiograph(d / "cr_ap.dcm", modality="CR", view="AP")
    radiograph(d / "lateral.dcm", view="LL")
    radiograph(d / "ct.dcm", modality="CT", view=None)
    radiograph(d / "multi.dcm", frames=3)
    text_report(d / "report.dcm")
    radiograph(d / "abdomen.dcm", body_part="ABDOMEN")
    radiograph(d / "bare.dcm", view=None, body_part=None)
    shutil.copy(d / "dx_m2.dcm", d / "dx_m2_copy.dcm")
    Image.fromarray(xray(32, 32)).save(d / "plain.png")
    return d


def names(paths):
    return [p.name for p in paths]


def run(folder, **options):
    files = sorted(folder.iterdir())
    sel = select_instances(files, SeriesFilter.parse(**options) if options else None)
    return names(sel.files), {n.path.name: n.reason for n in sel.not_selected}


def test_default_filter_keeps_frontal_cr_and_dx_and_gives_a_reason_for_every_other_file(export):
    kept, left_out = run(export)
    assert kept == ["abdomen.dcm", "bare.dcm", "cr_ap.dcm", "dx_m1.dcm", "dx_m2.dcm", "plain.png"]
    assert left_out == {
        "ct.dcm": "Modality CT is not CR or DX (--modality)",
        "dx_m2_copy.dcm": f"same SOP Instance UID as {export / 'dx_m2.dcm'} (one result per instance)",
        "lateral.dcm": "ViewPosition LL is not PA or AP (--view-position)",
        "multi.dcm": "multi-frame object (3 frames): covidedge reads single-frame radiographs",
        "report.dcm": "no pixel data (Modality SR): not an image",
    }
    # every input is either kept or listed, none dropped silently
    assert len(kept) + len(left_out) == len(list(export.iterdir()))


def test_filters_select_what_they_say(export):
    kept, left_out = run(export, modality="cr", view_position="any", body_part=None)
    assert kept == ["cr_ap.dcm", "plain.png"]
    assert left_out["lateral.dcm"] == "Modality DX is not CR (--modality)"
    assert left_out["ct.dcm"] == "Modality CT is not CR (--modality)"

    kept, left_out = run(export, modality="CR,DX", view_position="PA")
    assert kept == ["abdomen.dcm", "bare.dcm", "dx_m1.dcm", "dx_m2.dcm", "plain.png"]
    assert left_out["cr_ap.dcm"] == "ViewPosition AP is not PA (--view-position)"

    # body part: checked where present, so the radiograph without it passes
    kept, left_out = run(export, modality="DX", view_position="PA,AP,LL", body_part="chest")
    assert kept == ["bare.dcm", "dx_m1.dcm", "dx_m2.dcm", "lateral.dcm", "plain.png"]
    assert left_out["abdomen.dcm"] == "BodyPartExamined ABDOMEN is not CHEST (--body-part)"

    kept, _ = run(export, modality="any", view_position="any")
    assert "ct.dcm" in kept and "lateral.dcm" in kept and "multi.dcm" not in kept


def test_unreadable_dicom_passes_to_the_decoder(tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00" + b"\xff" * 40)
    sel = select_instances([broken])
    assert sel.files == [broken] and not sel.not_selected and sel.summary() == ""


def test_a_bad_filter_value_is_a_one_line_error():
    with pytest.raises(BadInputError, match=r"--modality 'C\$R': 'C\$R' is not a DICOM code string"):
        SeriesFilter.parse(modality="C$R")


def test_without_pydicom_default_filters_pass_files_through_and_asked_filters_need_it(export, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    files = sorted(export.iterdir())
    assert select_instances(files).files == files
    with pytest.raises(MissingDependencyError, match=r"pip install 'covidedge\[dicom\]'"):
        select_instances(files, SeriesFilter.parse(view_position="PA"))

