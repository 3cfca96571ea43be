"""DICOM in and out: which instances of a PACS export to run on, and results as DICOM objects.

* :mod:`covidedge.dicom.select`: series selection by Modality, ViewPosition and body part, with a
  reason for every file left out.
* :mod:`covidedge.dicom.writers`: Segmentation, TID 1500 Structured Report and Secondary Capture
  per image (needs the ``dicom`` extra: pydicom and highdicom).
* :mod:`covidedge.dicom.privacy`: patient identifiers stay out of logs, tables and results.
* :mod:`covidedge.dicom.codes`: the coded concepts written, each defined once.

pydicom and highdicom are imported only when a DICOM file is read or written.
"""

from covidedge.dicom.privacy import patient_identity, scrub
from covidedge.dicom.select import NotSelected, Selection, SeriesFilter, select_instances
from covidedge.dicom.writers import AlgorithmInfo, DicomOutputs, require_highdicom

__all__ = ["AlgorithmInfo", "DicomOutputs", "NotSelected", "Selection", "SeriesFilter",
           "patient_identity", "require_highdicom", "scrub", "select_instances"]
