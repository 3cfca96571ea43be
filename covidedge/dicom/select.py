"""Series selection: which DICOM instances of a PACS export covidedge runs on, and why not the others.

A folder pulled from a PACS holds more than frontal chest radiographs: lateral views, other
modalities, reports (SR), presentation states, multi-frame objects, and sometimes the same
instance twice. :func:`select_instances` reads each DICOM file's header (never its pixels) and
keeps the single-frame images whose Modality, ViewPosition and BodyPartExamined pass a
:class:`SeriesFilter`. Every file left out gets a one-line reason; nothing is dropped silently.

Rules:

* A filter checks an attribute where the file has it: a file without ViewPosition (or Modality,
  or BodyPartExamined) passes that filter, since nothing says it is the wrong kind.
* Objects without pixel data (SR, KO, PR ...) and multi-frame objects are left out: covidedge
  reads single-frame radiographs.
* Objects covidedge wrote (Manufacturer ``covidedge``: its Secondary Capture overlays fed back
  in) and other derived secondary images (ImageType ``DERIVED\\SECONDARY``) are left out: they
  are pictures of results, not radiographs.
* One result per SOP instance: a second file with the same SOP Instance UID is left out.
* Files that are not DICOM pass through untouched, and so does a DICOM file whose header cannot
  be read or has no SOP Class UID: the decoder reports it on its own ``skipped:`` line.

Reasons name the file and the attributes, never the patient.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from covidedge.data.dicomio import has_dicom_magic
from covidedge.data.imageio import is_dicom_path
from covidedge.errors import BadInputError, require
from covidedge.fileio import printable

#: Defaults of the filters: frontal chest radiographs from CR and DX detectors.
DEFAULT_MODALITIES: Tuple[str, ...] = ("CR", "DX")
DEFAULT_VIEW_POSITIONS: Tuple[str, ...] = ("PA", "AP")
#: An option value that switches a filter off.
ANY = "any"
#: The Manufacturer of every object covidedge writes (covidedge.dicom.writers).
MANUFACTURER = "covidedge"

def _parse_values(text: Optional[str], option: str) -> Tuple[str, ...]:
    """``"cr, DX"`` -> ("CR", "DX"); None, "" or "any" -> () (no filter)."""
    if text is None:
        return ()
    values = tuple(v.strip().upper() for v in str(text).split(",") if v.strip())
    if not values or (len(values) == 1 and values[0] == ANY.upper()):
        return ()
    bad = [v for v in values if len(v) > 16 or not all(c.isalnum() or c in " _" for c in v)]
    if bad:
        raise BadInputError(f"{option} {text!r}: {bad[0]!r} is not a DICOM code string",
                            hint=f"give comma-separated values such as CR,DX, or '{ANY}'")
    return values


@dataclass(frozen=True)
class SeriesFilter:
    """Which instances to run on: allowed Modality, ViewPosition and BodyPartExamined values
    (upper case; an empty tuple lets any value through)."""

    modalities: Tuple[str, ...] = DEFAULT_MODALITIES
    view_positions: Tuple[str, ...] = DEFAULT_VIEW_POSITIONS
    body_parts: Tuple[str, ...] = ()

    @classmethod
    def parse(cls, modality: Optional[str] = ",".join(DEFAULT_MODALITIES),
              view_position: Optional[str] = ",".join(DEFAULT_VIEW_POSITIONS),
              body_part: Optional[str] = None) -> "SeriesFilter":
        """A filter from option strings: comma-separated values, ``any`` or None for no filter."""
        return cls(_parse_values(modality, "--modality"),
                   _parse_values(view_position, "--view-position"),
                   _parse_values(body_part, "--body-part"))

    @property
    def is_default(self) -> bool:
        return self == SeriesFilter()

    def mismatches(self, modality: str, view_position: str, body_part: str) -> List[str]:
        """Why an instance with these attribute values (empty = absent) does not pass."""
        out = []
        for value, allowed, attr, option in (
                (modality, self.modalities, "Modality", "--modality"),
                (view_position, self.view_positions, "ViewPosition", "--view-position"),
                (body_part, self.body_parts, "BodyPartExamined", "--body-part")):
            if value and allowed and value.upper() not in allowed:
                out.append(f"{attr} {value} is not {' or '.join(allowed)} ({option})")
        return out


@dataclass(frozen=True)
class NotSelected:
    """A file left out by the selection, and why (one line)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Selection:
    """The files to run on, in input order, and the DICOM files left out with their reasons."""

    files: List[Path] = field(default_factory=list)
    not_selected: List[NotSelected] = field(default_factory=list)

    def lines(self) -> List[str]:
        """One ``not selected: FILE: reason`` line per file left out."""
        return [printable(f"not selected: {n}") for n in self.not_selected]

    def summary(self) -> str:
        """``"; N not selected (DICOM filters)"`` for the run's summary line, or ""."""
        n = len(self.not_selected)
        return f"; {n} not selected (DICOM filters)" if n else ""


def _text(ds, name: str) -> str:
    value = ds.get(name)
    return "" if value is None else str(value).strip()


def _read_header(pydicom, path: Path):
    """The header of ``path`` (pixel data deferred, never loaded), or None when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the decoder reports a broken file on its own line
            with open(path, "rb") as fh:
                has_magic = has_dicom_magic(fh.read(132))
            return pydicom.dcmread(str(path), force=not has_magic, defer_size=256)
    except Exception:
        return None


def select_instances(files: Iterable, series_filter: Optional[SeriesFilter] = None) -> Selection:
    """Split ``files`` into those to run on and the DICOM files left out (see the module rules).

    Without pydicom, DICOM files pass through when the filter is the default one (the decoder
    then says pydicom is missing); a filter asked for explicitly needs pydicom and raises
    MissingDependencyError.
    """
    series_filter = series_filter or SeriesFilter()
    files = [Path(f) for f in files]
    dicoms = [f for f in files if is_dicom_path(f)]
    out = Selection()
    if not dicoms:
        out.files = files
        return out
    try:
        import pydicom
    except ImportError:
        if series_filter.is_default:
            out.files = files
            return out
        pydicom = require("pydicom", extra="dicom", purpose="filtering DICOM series")

    dicom_set = set(dicoms)
    seen: dict = {}
    for f in files:
        if f not in dicom_set:
            out.files.append(f)
            continue
        ds = _read_header(pydicom, f)
        if ds is None or not _text(ds, "SOPClassUID"):  # not a readable DICOM object
            out.files.append(f)
            continue
        reasons = _reasons(ds, series_filter)
        uid = _text(ds, "SOPInstanceUID")
        if not reasons and uid:
            if uid in seen:
                reasons = [f"same SOP Instance UID as {seen[uid]} (one result per instance)"]
            else:
                seen[uid] = f
        if reasons:
            out.not_selected.append(NotSelected(f, "; ".join(reasons)))
        else:
            out.files.append(f)
    return out


def _reasons(ds, series_filter: SeriesFilter) -> List[str]:
    modality = _text(ds, "Modality")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = f"Modality {modality}" if modality else "no Modality"
        return [f"no pixel data ({what}): not an image"]
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return [f"multi-frame object ({frames} frames): covidedge reads single-frame radiographs"]
    if _text(ds, "Manufacturer").lower() == MANUFACTURER:
        return ["written by covidedge (a result, such as its overlay), not a radiograph"]
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])] \
        if not isinstance(ds.get("ImageType"), str) else [ds.get("ImageType").strip().upper()]
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return ["ImageType DERIVED\\SECONDARY: a derived picture, not an original radiograph"]
    return series_filter.mismatches(modality, _text(ds, "ViewPosition"), _text(ds, "BodyPartExamined"))


__all__ = ["ANY", "DEFAULT_MODALITIES", "DEFAULT_VIEW_POSITIONS", "NotSelected", "Selection",
           "SeriesFilter", "select_instances"]
