"""Errors that misled or came late (issue 22, item 26): each now names the real cause, at once.
(The server's: a DICOM without preamble through --server and IMAGE_SIZE 0 answered 400 are in
tests/serve/test_server_safety.py.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from covidedge.cli.infer import command
from covidedge.errors import BadInputError, UsageError
from tests.graphs import tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def test_dicom_out_equal_to_the_input_folder_is_named(models, tmp_path):
    pytest.importorskip("pydicom")
    from tests.dicom.builders import radiograph

    folder = tmp_path / "export"
    folder.mkdir()
    radiograph(folder / "dx.dcm")
    for flag in ("--dicom-out", "--out"):
        res = CliRunner().invoke(command, [str(folder), "-c", str(models[0]), flag, str(folder)])
        assert isinstance(res.exception, UsageError), res.output
        assert f"is the {flag} folder" in str(res.exception) and "no images to process" not in str(res.exception)


def test_dicom_without_patient_id_gets_its_results(models, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from tests.dicom.builders import radiograph

    src = tmp_path / "src"
    src.mkdir()
    p = radiograph(src / "anon.dcm")
    ds = pydicom.dcmread(p)
    del ds.PatientID, ds.PatientName, ds.PatientBirthDate
    ds.save_as(p)
    out = tmp_path / "pacs"
    res = CliRunner().invoke(command, [str(src), "-c", str(models[0]), "-s", str(models[1]), "--dicom-out", str(out)])
    assert res.exit_code == 0, res.output
    assert "AttributeError" not in res.output and "(1 failed)" not in res.output
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 3
    for f in written:
        assert pydicom.dcmread(f).PatientID == ""


def test_calibrate_refuses_a_zero_byte_image_when_the_set_is_made(tmp_path):
    from covidedge.data.synth import make_synthetic_dataset
    from covidedge.export.calibration import make_calibration_set

    data = make_synthetic_dataset(tmp_path / "data", per_class=2, size=32, splits=("Train",))
    victim = sorted(data.rglob("images/*.png"))[0]
    victim.write_bytes(b"")
    with pytest.raises(BadInputError, match="calibration image cannot be read") as info:
        make_calibration_set(data, 6, out=tmp_path / "c.json")
    assert str(victim) in str(info.value)
    assert not (tmp_path / "c.json").exists()
