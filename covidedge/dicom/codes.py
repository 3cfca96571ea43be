"""The coded concepts covidedge writes into DICOM objects, each defined once.

Segments, findings and measurements are coded so that a PACS, a viewer or a registry can read
them without knowing covidedge: SNOMED CT (``SCT``) where a concept exists there, the DICOM
controlled terminology (``DCM``) for radiology findings, UCUM for units, and a local scheme
(``99COVIDEDGE``, the ``99`` prefix marks a private scheme) for what has no standard code (the
probability of one class, the infected fraction of the lungs).

Values are plain ``(value, scheme, meaning)`` tuples so this module imports nothing heavy; the
writers turn them into highdicom ``CodedConcept`` objects.
"""

from __future__ import annotations

from typing import Dict, Tuple

Code = Tuple[str, str, str]

#: Private coding scheme for covidedge's own concepts.
LOCAL_SCHEME = "99COVIDEDGE"

# -- segments ----------------------------------------------------------------------------------
ANATOMICAL_STRUCTURE: Code = ("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = ("49755003", "SCT", "Morphologically Abnormal Structure")
LUNG: Code = ("39607008", "SCT", "Lung")
#: The infection segment: a lung opacity, the chest radiography finding (DCM CID 6102).
OPACITY: Code = ("112001", "DCM", "Opacity")

# -- report ------------------------------------------------------------------------------------
PLAIN_CHEST_XRAY: Code = ("399208008", "SCT", "Plain chest X-ray")
ARTIFICIAL_INTELLIGENCE: Code = ("123110", "DCM", "Artificial Intelligence")
DEVICE: Code = ("121007", "DCM", "Device")

#: Classifier labels (lower case) -> the finding they stand for. COVID-QU-Ex's "Non-COVID" class
#: holds viral and bacterial pneumonia.
CLASS_FINDINGS: Dict[str, Code] = {
    "covid-19": ("840539006", "SCT", "COVID-19"),
    "non-covid": ("233604007", "SCT", "Pneumonia"),
    "normal": ("17621005", "SCT", "Normal"),
}

INFECTED_FRACTION: Code = ("infected-lungs", LOCAL_SCHEME, "Infected fraction of lungs")
LUNG_FRACTION: Code = ("lung-area", LOCAL_SCHEME, "Lung fraction of image")

# -- units (UCUM) ------------------------------------------------------------------------------
PERCENT: Code = ("%", "UCUM", "percent")
NO_UNITS: Code = ("1", "UCUM", "no units")


def class_finding(label: str) -> Code:
    """The finding a classifier label stands for; a label without a standard code gets a local one."""
    return CLASS_FINDINGS.get(label.lower(), (label[:16], LOCAL_SCHEME, label[:64]))


def class_probability(label: str) -> Code:
    """The measurement name of the probability of class ``label`` (local code, no units)."""
    return (f"p-{label}"[:16], LOCAL_SCHEME, f"Probability of {label}"[:64])


__all__ = ["Code", "LOCAL_SCHEME", "ANATOMICAL_STRUCTURE", "MORPHOLOGICALLY_ABNORMAL_STRUCTURE", "LUNG",
           "OPACITY", "PLAIN_CHEST_XRAY", "ARTIFICIAL_INTELLIGENCE", "DEVICE", "CLASS_FINDINGS",
           "INFECTED_FRACTION", "LUNG_FRACTION", "PERCENT", "NO_UNITS", "class_finding",
           "class_probability"]
