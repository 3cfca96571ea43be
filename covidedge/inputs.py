"""Turn command-line INPUT items (files, folders, glob patterns) into an ordered list of images.

Files named explicitly are always kept, whatever their suffix (the decoder decides whether they
are images, so a DICOM without ``.dcm`` still works). Folders are searched recursively and
globs expanded, keeping files whose suffix is an image suffix (``.png .jpg .jpeg .bmp .tif
.tiff .dcm``, any case). Hidden files and folders are skipped, and so is an excluded folder
(the run's own output folder, so a second run does not read the first run's overlays). The
order is the order of the items, then sorted paths inside each; a file reached twice is kept
once. Items that give no image become problems the caller reports, instead of errors that stop
the whole batch.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

from covidedge.data.imageio import IMAGE_SUFFIXES

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputProblem:
    """An INPUT item that gave no image, and why (one line)."""

    item: str
    message: str

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


@dataclass
class ExpandedInputs:
    """The images found (in order, without duplicates) and the items that gave none."""

    files: List[Path] = field(default_factory=list)
    problems: List[InputProblem] = field(default_factory=list)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def is_glob(item: str) -> bool:
    """True when ``item`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(c in _GLOB_CHARS for c in item)


def _suffix_ok(path: str, suffixes: Sequence[str]) -> bool:
    return os.path.splitext(path)[1].lower() in suffixes


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(folder: str, suffixes: Sequence[str], excluded: List[str], recursive: bool) -> List[str]:
    """Image files under ``folder`` in sorted order (folders depth-first, names sorted)."""
    found: List[str] = []
    errors: List[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        if _is_excluded(root, excluded):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not _hidden(d)) if recursive else []
        found.extend(os.path.join(root, f) for f in sorted(files)
                     if not _hidden(f) and _suffix_ok(f, suffixes))
    if errors and not found:
        raise errors[0]
    return found


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _is_excluded(path: str, excluded: List[str]) -> bool:
    real = _real(path)
    return any(real == ex or real.startswith(ex + os.sep) for ex in excluded)


def expand_inputs(items: Iterable, *, suffixes: Optional[Sequence[str]] = None,
                  recursive: bool = True, exclude: Iterable = ()) -> ExpandedInputs:
    """Expand ``items`` (paths or glob patterns) into image files; see the module docstring.

    ``suffixes`` defaults to :data:`covidedge.data.imageio.IMAGE_SUFFIXES`; ``exclude`` lists
    folders whose contents are never picked up by a folder or glob.
    """
    suffixes = tuple(s.lower() for s in (suffixes or IMAGE_SUFFIXES))
    excluded = [_real(os.fspath(e)) for e in exclude if e is not None]
    out = ExpandedInputs()
    seen = set()

    def add(path: str) -> bool:
        key = _real(path)
        if key in seen:
            return False
        seen.add(key)
        out.files.append(Path(path))
        return True

    wanted = ", ".join(suffixes)
    for raw in items:
        item = os.fspath(raw)
        if os.path.isfile(item):
            add(item)
            continue
        if os.path.isdir(item):
            try:
                found = _walk(item, suffixes, excluded, recursive)
            except OSError as exc:
                out.problems.append(InputProblem(item, f"folder cannot be read ({exc.strerror or exc})"))
                continue
            if not found:
                where = "in it or its subfolders" if recursive else "in it"
                out.problems.append(InputProblem(item, f"folder has no images ({wanted}) {where}"))
            for f in found:
                add(f)
            continue
        if is_glob(item):
            matches = sorted(glob.glob(item, recursive=True))
            added = 0
            for m in matches:
                if _is_excluded(m, excluded) or _hidden(os.path.basename(m)):
                    continue
                if os.path.isdir(m):
                    try:
                        files = _walk(m, suffixes, excluded, recursive)
                    except OSError:
                        files = []
                    added += sum(add(f) for f in files)
                elif os.path.isfile(m) and _suffix_ok(m, suffixes):
                    added += add(m)
            if not added and not any(_real(m) in seen for m in matches):
                out.problems.append(InputProblem(item, f"pattern matches no image files ({wanted})"))
            continue
        if os.path.lexists(item):
            out.problems.append(InputProblem(item, "is neither a file nor a folder (a broken link?)"))
        else:
            out.problems.append(InputProblem(item, "no such file or folder"))
    return out


__all__ = ["InputProblem", "ExpandedInputs", "expand_inputs", "is_glob"]
