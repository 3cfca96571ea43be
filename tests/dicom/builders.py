"""DICOM test objects made with pydicom: radiographs of the drawn X-ray, a multi-frame, an SR."""

from __future__ import annotations

import numpy as np
import pytest

from tests.graphs import xray

pydicom = pytest.importorskip("pydicom", reason="pydicom is needed to write DICOM test files")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-98765"
STUDY_UID = generate_uid()


def _base(sop_class: str, modality: str, **attrs) -> Dataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = attrs.pop("SOPInstanceUID", None) or generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "101500", "S1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC-1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.Manufacturer = "test"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def radiograph(path, *, modality="DX", view="PA", photometric="MONOCHROME2", body_part="CHEST",
               shape=(48, 40), frames=1, **attrs):
    """A 12-bit radiograph of the drawn X-ray; MONOCHROME1 stores it inverted, so it decodes alike."""
    ds = _base(DX if modality == "DX" else CR, modality, **attrs)
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    img = xray(*shape).astype(np.uint16) * 16  # 0..4080 in 12 bits
    if photometric == "MONOCHROME1":
        img = 4095 - img
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PatientOrientation = ["L", "F"]
    if frames > 1:
        ds.NumberOfFrames = frames
        img = np.stack([img] * frames)
    ds.PixelData = img.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def text_report(path):
    """A Basic Text SR: a DICOM object without pixel data."""
    ds = _base(BASIC_TEXT_SR, "SR")
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.save_as(str(path), enforce_file_format=True)
    return path
