"""DICOM results a PACS understands: Segmentation, TID 1500 Structured Report, Secondary Capture.

For each DICOM chest X-ray, :class:`DicomOutputs` writes up to three objects (built with
highdicom), all in the source's study, with the source's patient and study attributes:

* ``<name>_seg.dcm``: a binary **Segmentation** with two segments at the image's own size,
  1 = lungs (SNOMED CT 39607008 Lung) and 2 = infection (DCM 112001 Opacity in the lung), each
  with the algorithm's identification (covidedge, its version, and the segmenter's model id).
* ``<name>_sr.dcm``: a **Comprehensive SR** holding a TID 1500 measurement report: the predicted
  class as the finding (COVID-19 SCT 840539006, Pneumonia SCT 233604007 for Non-COVID, Normal
  SCT 17621005) with one probability per class, and, for the lungs segment of the SEG, the
  infected fraction of the lungs and the lung fraction of the image in percent. It references
  the source image and the SEG.
* ``<name>_sc.dcm``: the overlay (infection in red, lungs outlined in green, class and severity
  caption) as an RGB **Secondary Capture** (RLE Lossless), for viewers that do not draw SEG on
  radiographs. Its Source Image Sequence points at the source.

New objects get new SOP Instance UIDs; each kind gets one series per study per run (so a run
over one study adds three series to it). Files are written under a temporary name and renamed,
and never replace an existing file. An ``index.csv`` lists, per image, the source, its SOP
Instance UID and the files written; patient name and ID are filled in only with
``show_patient_ids``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from covidedge import __version__
from covidedge.data.imageio import is_dicom_path, read_gray
from covidedge.dicom import codes
from covidedge.dicom.privacy import patient_identity, scrub
from covidedge.dicom.select import MANUFACTURER
from covidedge.errors import BadInputError, require, one_line
from covidedge.fileio import atomic_target, csv_safe, printable
from covidedge.prediction import OutputNamer, Prediction

#: Series number and description of each kind of object written.
SERIES: Dict[str, Tuple[int, str]] = {
    "seg": (9101, "covidedge lungs and infection (SEG)"),
    "sr": (9102, "covidedge findings (SR)"),
    "sc": (9103, "covidedge overlay (SC)"),
}
INDEX_NAME = "index.csv"
INDEX_COLUMNS = ("source", "sop_instance_uid", "study_instance_uid", "seg", "sr", "sc",
                 "patient_id", "patient_name")


def require_highdicom():
    """highdicom (and pydicom), or MissingDependencyError with the install command."""
    require("pydicom", extra="dicom", purpose="writing DICOM results")
    return require("highdicom", extra="dicom", purpose="writing DICOM SEG, SR and Secondary Capture")


def _concept(code: codes.Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(*code)


# ---------------------------------------------------------------------------------------------
# What made the results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm named in every object: covidedge, its version, and per task the model id
    (model name, file name and the first 12 hex digits of the file's sha256)."""

    name: str = "covidedge"
    version: str = __version__
    models: Tuple[Tuple[str, str], ...] = ()
    threshold: Optional[float] = None

    @classmethod
    def from_pipeline(cls, pipe) -> "AlgorithmInfo":
        """From a :class:`~covidedge.runtime.pipeline.Pipeline` (its classifier and segmenter),
        or a pipeline whose models run elsewhere (no spec, no local file: named by their source)."""
        from covidedge.fileio import sha256_file

        models = []
        for m in pipe.models:
            spec = getattr(m, "spec", None)
            if spec is None:  # served by a remote server: its file name is all that is known here
                models.append((m.task, f"{Path(str(m.source)).name} (served)"))
                continue
            model_id = spec.model_name
            source = Path(str(m.source))
            if source.is_file():
                model_id += f" {source.name} sha256:{sha256_file(source)[:12]}"
            models.append((m.task, model_id))
        return cls(models=tuple(models), threshold=pipe.threshold)

    def model_id(self, task: str) -> str:
        return dict(self.models).get(task, "")

    def parameters(self, task: str) -> Dict[str, str]:
        out = {task: self.model_id(task)}
        if task == "segmenter" and self.threshold is not None:
            out["threshold"] = f"{self.threshold:g}"
        return out

    def seg_identification(self):
        import highdicom as hd

        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=_concept(codes.ARTIFICIAL_INTELLIGENCE), version=self.version,
            parameters=self.parameters("segmenter"))

    def sr_identification(self, task: str):
        import highdicom as hd

        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version,
            parameters=[f"{k}={v}" for k, v in self.parameters(task).items()])


# ---------------------------------------------------------------------------------------------
# The three objects
# ---------------------------------------------------------------------------------------------
#: Patient and study attributes of Type 2 (present, possibly empty) that the result objects copy
#: from their source; a source without them (not conformant, but seen) gets them empty.
TYPE2_SOURCE_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def fill_type2_attributes(ds) -> List[str]:
    """Add the :data:`TYPE2_SOURCE_ATTRIBUTES` a source lacks, empty, as the standard allows for
    Type 2; returns their names. (highdicom reads them and failed with "'FileDataset' object has
    no attribute 'PatientID'" on such a source.)"""
    added = [a for a in TYPE2_SOURCE_ATTRIBUTES if a not in ds]
    for attr in added:
        setattr(ds, attr, "")
    return added


def build_segmentation(source, lungs: np.ndarray, infection: np.ndarray, algorithm: AlgorithmInfo, *,
                       series_uid: str, instance_number: int = 1):
    """A binary SEG of ``source`` (a pydicom Dataset, pixels not needed) with segment 1 = lungs
    and 2 = infection; masks are ``Rows x Columns`` bool arrays. Both frames are always stored,
    so segment N is frame N."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    shape = (int(source.Rows), int(source.Columns))
    for what, mask in (("lung mask", lungs), ("infection mask", infection)):
        if np.asarray(mask).shape != shape:
            raise BadInputError(f"{what} has shape {np.asarray(mask).shape}, the DICOM image is "
                                f"{shape[0]}x{shape[1]}", hint="masks must be at the image's size")
    algo = algorithm.seg_identification()
    segments = [
        hd.seg.SegmentDescription(
            segment_number=1, segment_label="lungs",
            segmented_property_category=_concept(codes.ANATOMICAL_STRUCTURE),
            segmented_property_type=_concept(codes.LUNG),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            tracking_id="lungs", tracking_uid=generate_uid()),
        hd.seg.SegmentDescription(
            segment_number=2, segment_label="infection",
            segmented_property_category=_concept(codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
            segmented_property_type=_concept(codes.OPACITY),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            anatomic_regions=[_concept(codes.LUNG)], tracking_id="infection",
            tracking_uid=generate_uid()),
    ]
    pixels = np.stack([np.asarray(lungs, bool), np.asarray(infection, bool)], axis=-1)[None]
    number, description = SERIES["seg"]
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=series_uid, series_number=number, sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        device_serial_number=algorithm.version, content_label="COVIDEDGE",
        content_description="lungs and infection", omit_empty_frames=False)
    seg.SeriesDescription = description
    _drop_partial_pixel_measures(seg)
    return seg


def _drop_partial_pixel_measures(seg) -> None:
    """Remove a Pixel Measures Sequence that holds PixelSpacing but no SliceThickness: highdicom
    copies a projection radiograph's PixelSpacing into one, and then its own reader (``segread``)
    and others refuse the object. A radiograph has no slice; the SEG's pixels are the source's
    pixels, which it references, so the source's spacing still applies."""
    groups = list(seg.get("SharedFunctionalGroupsSequence") or []) + \
        list(seg.get("PerFrameFunctionalGroupsSequence") or [])
    for group in groups:
        measures = group.get("PixelMeasuresSequence")
        if measures and "SliceThickness" not in measures[0]:
            del group.PixelMeasuresSequence


def build_report(source, prediction: Prediction, algorithm: AlgorithmInfo, *, series_uid: str,
                 instance_number: int = 1, segmentation=None):
    """A Comprehensive SR with a TID 1500 measurement report of ``prediction`` for ``source``:
    the class with its probabilities (with a classifier) and, referencing segment 1 (lungs) of
    ``segmentation``, the infected fraction of the lungs and the lung fraction of the image in %."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    groups = []
    if prediction.label is not None:
        algo = algorithm.sr_identification("classifier")
        probabilities = [
            hd.sr.Measurement(name=_concept(codes.class_probability(label)), value=float(p),
                              unit=_concept(codes.NO_UNITS))
            for label, p in (prediction.probabilities or {}).items()]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="classification"),
            finding_type=_concept(codes.class_finding(prediction.label)), algorithm_id=algo,
            measurements=probabilities,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]))
    if segmentation is not None and prediction.infected_fraction is not None:
        algo = algorithm.sr_identification("segmenter")
        measurements = [
            hd.sr.Measurement(name=_concept(codes.INFECTED_FRACTION),
                              value=100.0 * float(prediction.infected_fraction),
                              unit=_concept(codes.PERCENT)),
            hd.sr.Measurement(name=_concept(codes.LUNG_FRACTION),
                              value=100.0 * float(prediction.lung_fraction),
                              unit=_concept(codes.PERCENT))]
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="lungs"),
            referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(
                segmentation, segment_number=1),
            finding_type=_concept(codes.LUNG), algorithm_id=algo, measurements=measurements))
    if not groups:
        raise BadInputError("has neither a class nor masks to report", path=prediction.source)
    observer = hd.sr.ObserverContext(
        observer_type=_concept(codes.DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm.name, algorithm.version]), name=algorithm.name,
            manufacturer_name=MANUFACTURER, model_name=algorithm.name))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_concept(codes.PLAIN_CHEST_XRAY), imaging_measurements=groups)
    number, description = SERIES["sr"]
    evidence = [source] + ([segmentation] if segmentation is not None else [])
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report[0], series_instance_uid=series_uid, series_number=number,
        sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = description
    return sr


def build_secondary_capture(source, rgb: np.ndarray, *, series_uid: str, instance_number: int = 1):
    """An RGB Secondary Capture of ``rgb`` (``Rows x Columns x 3`` uint8) in the source's study,
    with a Source Image Sequence that references ``source`` and its patient orientation. RLE
    Lossless: every PACS and pydicom decode it, and it is far smaller than raw RGB."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import RLELossless, generate_uid

    number, description = SERIES["sc"]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(rgb, np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=series_uid,
        series_number=number, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, patient_orientation=("L", "F"),
        transfer_syntax_uid=RLELossless)
    # The overlay has the source's geometry: its orientation is the source's, or unknown (empty).
    sc.PatientOrientation = source.get("PatientOrientation", "")
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = ("covidedge overlay: infection tinted and outlined in red, "
                                "lungs outlined in green")
    sc.BurnedInAnnotation = "YES"  # the caption: class and severity, no patient data
    sc.SeriesDescription = description
    return sc


# ---------------------------------------------------------------------------------------------
# One run's DICOM outputs
# ---------------------------------------------------------------------------------------------
def read_source(path) -> Any:
    """The header of a DICOM source (pixel data not loaded); BadInputError when unreadable."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as exc:
        raise BadInputError(f"DICOM header cannot be read: {one_line(exc)}", path=path) from exc


class DicomOutputs:
    """Writes the SEG, SR and Secondary Capture of each DICOM result of one run into ``out_dir``.

    ``write(result)`` returns the lines to show the user (a note for a non-DICOM input, a
    one-line error when the objects cannot be made, and, with ``show_patient_ids``, the patient
    of each image); it never raises for one image. Counts: ``written``, ``failed``,
    ``not_dicom``.
    """

    def __init__(self, out_dir, algorithm: AlgorithmInfo, *, show_patient_ids: bool = False,
                 overlay: bool = True):
        require_highdicom()
        self.out_dir = Path(out_dir)
        self.algorithm = algorithm
        self.show_patient_ids = bool(show_patient_ids)
        self.overlay = bool(overlay)
        self.written = self.failed = self.not_dicom = 0
        self._namer = OutputNamer()
        self._series: Dict[Tuple[str, str], List[Any]] = {}  # (study, kind) -> [uid, count]
        self.index_path = self.out_dir / INDEX_NAME
        self._index_fh = None
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(f"DICOM output folder cannot be made: {exc.strerror or exc}",
                                path=self.out_dir, hint="choose a writable --dicom-out folder") from exc

    def check_index(self) -> None:
        """BadInputError when ``index.csv`` in the folder is not covidedge's own (another header, a
        folder, a link): covidedge appends only to an index it wrote. Called before the run."""
        p = self.index_path
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise BadInputError(f"{INDEX_NAME} there is not a plain file; covidedge does not write "
                                "through it", path=p, hint="choose another --dicom-out folder")
        if p.is_file() and p.stat().st_size:
            with open(p, newline="", encoding="utf-8", errors="replace") as f:
                header = f.readline().rstrip("\r\n")
            if header != ",".join(INDEX_COLUMNS):
                raise BadInputError(f"{INDEX_NAME} there is not a covidedge DICOM index (its header is "
                                    "another), and covidedge does not append to it", path=p,
                                    hint="choose another --dicom-out folder")

    def _index_row(self, row: Dict[str, str]) -> None:
        """Append one row to index.csv (opened at the first result; a later run appends). Cells
        are CSV-quoted, spreadsheet formulas are defused and control characters escaped."""
        if self._index_fh is None:
            self.check_index()
            new = not self.index_path.exists() or self.index_path.stat().st_size == 0
            self._index_fh = open(self.index_path, "a", newline="", encoding="utf-8")
            self._index = csv.DictWriter(self._index_fh, fieldnames=INDEX_COLUMNS, lineterminator="\n",
                                         quoting=csv.QUOTE_ALL)
            if new:
                self._index_fh.write(",".join(INDEX_COLUMNS) + "\n")
        self._index.writerow({k: csv_safe(printable(v)) for k, v in row.items()})
        self._index_fh.flush()

    # -- series: one per (study, kind) per run --------------------------------------------------
    def _next(self, study_uid: str, kind: str) -> Tuple[str, int]:
        from pydicom.uid import generate_uid

        entry = self._series.setdefault((study_uid, kind), [generate_uid(), 0])
        entry[1] += 1
        return entry[0], entry[1]

    def _base_name(self, source: str) -> str:
        """A name whose three files do not exist yet (a second run never replaces the first's)."""
        while True:
            name = self._namer(source)
            if not any((self.out_dir / f"{name}_{k}.dcm").exists() for k in SERIES):
                return name

    @staticmethod
    def _save(obj, path: Path) -> Path:
        try:
            with atomic_target(path, overwrite=False) as tmp:  # never replaces a file, even racing
                obj.save_as(str(tmp), enforce_file_format=True)
        except OSError as exc:
            raise BadInputError(f"cannot be written: {exc.strerror or exc}", path=path,
                                hint="check that the --dicom-out folder is writable and has space") from exc
        return path

    # -- one result ------------------------------------------------------------------------------
    def write(self, result) -> List[str]:
        """Write the objects of one result (a Prediction; failures are ignored); see the class."""
        if not getattr(result, "ok", False):
            return []
        if not is_dicom_path(result.source):
            self.not_dicom += 1
            return [printable(f"note: {result.source}: not DICOM, so no DICOM outputs for it (--dicom-out)")]
        ds = None
        who = {"patient_id": "", "patient_name": ""}
        try:
            ds = read_source(result.source)
            written = self._write(ds, result)
            if self.show_patient_ids:
                who = patient_identity(ds)
            self._index_row({"source": result.source, "sop_instance_uid": str(ds.SOPInstanceUID),
                             "study_instance_uid": str(ds.StudyInstanceUID),
                             **{k: written.get(k, "") for k in SERIES}, **who})
        except Exception as exc:  # one image's objects must not stop the run
            self.failed += 1
            return [printable(f"skipped DICOM outputs: {result.source}: {scrub(one_line(exc), ds)}")]
        self.written += 1
        result.outputs.update({f"dicom_{k}": v for k, v in written.items()})
        if self.show_patient_ids:
            return [printable(f"dicom: {result.name}: patient {who['patient_name'] or '-'} "
                              f"(ID {who['patient_id'] or '-'}), SOP Instance UID {ds.SOPInstanceUID}")]
        return []

    def _write(self, ds, result: Prediction) -> Dict[str, str]:
        for attr in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(attr, "") or ""):
                raise BadInputError(f"has no {attr}; DICOM results must refer to it", path=result.source,
                                    hint="re-export the image from the PACS")
        fill_type2_attributes(ds)
        study = str(ds.StudyInstanceUID)
        name = self._base_name(result.source)
        written: Dict[str, str] = {}
        seg = None
        if result.lung_mask is not None and result.infection_mask is not None:
            uid, n = self._next(study, "seg")
            seg = build_segmentation(ds, result.lung_mask, result.infection_mask, self.algorithm,
                                     series_uid=uid, instance_number=n)
            written["seg"] = str(self._save(seg, self.out_dir / f"{name}_seg.dcm"))
            if self.overlay:
                from covidedge.overlay import draw_overlay

                rgb = draw_overlay(read_gray(result.source), result.lung_mask, result.infection_mask,
                                   caption=result.caption)
                uid, n = self._next(study, "sc")
                sc = build_secondary_capture(ds, rgb, series_uid=uid, instance_number=n)
                written["sc"] = str(self._save(sc, self.out_dir / f"{name}_sc.dcm"))
        uid, n = self._next(study, "sr")
        sr = build_report(ds, result, self.algorithm, series_uid=uid, instance_number=n,
                          segmentation=seg)
        written["sr"] = str(self._save(sr, self.out_dir / f"{name}_sr.dcm"))
        return written

    # -- end ---------------------------------------------------------------------------------------
    def summary(self) -> str:
        """``"; DICOM results for N images in DIR"`` (with failures) for the run's summary line."""
        text = f"; DICOM results for {self.written} image{'s' if self.written != 1 else ''} in {self.out_dir}"
        if self.failed:
            text += f" ({self.failed} failed)"
        return text

    def close(self) -> None:
        if self._index_fh is not None and not self._index_fh.closed:
            self._index_fh.close()

    def __enter__(self) -> "DicomOutputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["SERIES", "INDEX_NAME", "INDEX_COLUMNS", "AlgorithmInfo", "DicomOutputs", "build_report",
           "build_secondary_capture", "build_segmentation", "read_source",
           "require_highdicom"]
