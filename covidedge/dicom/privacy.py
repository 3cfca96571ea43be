"""Patient identifiers stay inside DICOM objects unless the user asks to see them.

Results, tables, logs and the DICOM index name an image by its file name and SOP Instance UID.
Patient name and ID are shown only on request (``--show-patient-ids``), and messages that come
from libraries (which may quote attribute values) are scrubbed of them before they are printed.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

#: Attributes whose values identify the patient; never printed unless asked for.
PATIENT_ID_ATTRIBUTES = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames",
                         "PatientBirthDate", "IssuerOfPatientID")
#: What stands in for a scrubbed value.
REDACTED = "<patient>"


def _values(ds, attributes: Iterable[str]) -> List[str]:
    """Non-empty string values of ``attributes`` in ``ds`` (names also by their components)."""
    out: List[str] = []
    for name in attributes:
        value = ds.get(name) if ds is not None else None
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
            else [value]
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            out.append(text)
            if "^" in text:  # Doe^Jane: "Doe", "Jane" and "Jane Doe" may appear on their own
                parts = [p for p in text.split("^") if len(p) > 2]
                out.extend(parts)
    return out


def patient_identity(ds) -> Dict[str, str]:
    """``{"patient_id": ..., "patient_name": ...}`` of a dataset (empty strings when absent)."""
    return {"patient_id": str(ds.get("PatientID", "") or "").strip(),
            "patient_name": str(ds.get("PatientName", "") or "").strip()}


def scrub(text: str, ds) -> str:
    """``text`` with every patient identifier of ``ds`` replaced by ``<patient>``; longest first,
    so a name is replaced whole before its parts."""
    for value in sorted(set(_values(ds, PATIENT_ID_ATTRIBUTES)), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


__all__ = ["PATIENT_ID_ATTRIBUTES", "REDACTED", "patient_identity", "scrub"]
