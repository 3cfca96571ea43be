"""Patient identifiers are scrubbed from messages; identity is read only when asked for."""

from __future__ import annotations

import pytest

pytest.importorskip("pydicom", reason="pydicom builds the test dataset")

from pydicom.dataset import Dataset  # noqa: E402

from covidedge.dicom.privacy import patient_identity, scrub  # noqa: E402


def test_scrub_removes_patient_name_its_parts_and_id():
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-98765"
    text = "invalid value 'Doe^Jane' for patient PID-98765 (Jane, Doe); study 1.2.3"
    assert scrub(text, ds) == ("invalid value '<patient>' for patient <patient> (<patient>, <patient>); "
                               "study 1.2.3")
    assert scrub(text, None) == text
    assert patient_identity(ds) == {"patient_id": "PID-98765", "patient_name": "Doe^Jane"}
