"""Turn command-line INPUT items (files, folders, glob patterns) into an ordered list of images.

Files named explicitly are always kept, whatever their suffix (the decoder decides whether they
are images, so a DICOM without ``.dcm`` still works). Folders are searched recursively and
globs expanded, keeping files whose suffix is an image suffix (``.png .jpg .jpeg .bmp .tif
.tiff .dcm``, any case). Hidden files and folders are skipped, and so is an excluded folder
(the run's own output folder, so a second run does not read the first run's overlays). The
order is the order of the items, then sorted paths inside each; a file reached twice is kept
once. Items that give no image become problems the caller reports, instead of errors that stop
the whole batch; so do folders that cannot be read and symbolic link loops met on the way
(a glob follows links to folders, as ``glob.glob`` does, but never around a loop; a folder
walk does not follow them).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

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


def _scan(folder: str, *, recursive: bool, follow_links: bool, excluded: List[str],
          problems: List[InputProblem], visited: Optional[Set[Tuple[int, int]]] = None,
          descend: Optional[Callable[[Tuple[str, ...]], bool]] = None,
          ) -> Iterator[Tuple[str, Tuple[str, ...], bool]]:
    """Entries under ``folder`` as ``(path, parts relative to folder, is_folder)``, depth-first
    with names sorted, each folder's files before its subfolders; hidden names skipped.

    A folder that cannot be listed, and a symlink that leads back to a folder above it (a
    loop), become problems instead of being skipped silently or followed forever. A folder
    reached twice through links is listed once. ``visited`` holds the folders' (device, inode)
    across calls; ``descend(parts)`` says whether a subfolder is worth entering.
    """
    visited = set() if visited is None else visited
    stack: List[Tuple[str, Tuple[str, ...], FrozenSet[Tuple[int, int]]]] = [(folder, (), frozenset())]
    while stack:
        path, parts, ancestors = stack.pop()
        if _is_excluded(path, excluded):
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append(InputProblem(path, f"folder cannot be read ({exc.strerror or exc}); "
                                               "check it and its permissions"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            problems.append(InputProblem(path, "is a symbolic link loop (it leads back to "
                                               f"{os.path.realpath(path)}); not followed"))
            continue
        if key in visited:
            continue
        visited.add(key)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(InputProblem(path, f"folder cannot be read ({exc.strerror or exc}); "
                                               "check its permissions"))
            continue
        subfolders = []
        for e in entries:
            if _hidden(e.name):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=follow_links)
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(e)
                yield e.path, parts + (e.name,), True
            else:
                yield e.path, parts + (e.name,), False
        if recursive:
            below = ancestors | {key}
            for e in reversed(subfolders):
                sub = parts + (e.name,)
                if descend is None or descend(sub):
                    stack.append((e.path, sub, below))


def _walk(folder: str, suffixes: Sequence[str], excluded: List[str], recursive: bool,
          problems: List[InputProblem], visited: Optional[Set[Tuple[int, int]]] = None) -> List[str]:
    """Image files under ``folder`` in order (folders depth-first, names sorted); symbolic
    links to folders are not followed. An image name that is a broken symbolic link (or not a
    regular file) becomes a problem, never a silent skip."""
    files = []
    for path, parts, is_dir in _scan(folder, recursive=recursive, follow_links=False, excluded=excluded,
                                     problems=problems, visited=visited):
        if is_dir or not _suffix_ok(path, suffixes):
            continue
        if os.path.isfile(path):
            files.append(path)
        else:
            problems.append(_not_a_file(path))
    return files


def _not_a_file(path: str) -> InputProblem:
    """The problem of an image name that is no regular file: a broken link, a FIFO, a socket."""
    if os.path.islink(path) and not os.path.exists(path):
        return InputProblem(path, f"is a broken symbolic link (to {os.readlink(path)}); not read")
    return InputProblem(path, "is not a regular file; not read")


def _split_pattern(pattern: str) -> Tuple[str, List[str]]:
    """``(base folder, wildcard components)``: the leading components without wildcards, and
    the rest, e.g. ``data/x/**/*.png`` -> ``("data/x", ["**", "*.png"])``."""
    parts = (pattern.replace(os.altsep, os.sep) if os.altsep else pattern).split(os.sep)
    for i, part in enumerate(parts):
        if is_glob(part):
            break
    base_parts, rest = parts[:i], [p for p in parts[i:] if p not in ("", ".")]
    base = os.sep.join(base_parts)
    if not base and pattern.startswith(os.sep):
        base = os.sep
    return base, rest


def _matches(parts: Sequence[str], pats: Sequence[str]) -> bool:
    """True when path components ``parts`` match ``pats`` (``**`` = zero or more folders)."""
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_matches(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and _matches(parts[1:], pats[1:])


def _glob(pattern: str, excluded: List[str], problems: List[InputProblem]) -> List[Tuple[str, bool]]:
    """Matches of ``pattern`` as sorted ``(path, is_folder)``, like ``glob.glob(recursive=True)``
    (hidden names are not matched, links to folders are followed) but safe: symbolic link
    loops and unreadable folders become problems, and folders are only entered while the
    pattern can still match below them."""
    base, pats = _split_pattern(pattern)
    root = base or os.curdir
    if not os.path.isdir(root):
        return []
    found: List[Tuple[str, bool]] = []
    scan = _scan(root, recursive=True, follow_links=True, excluded=excluded, problems=problems,
                 descend=lambda parts: _may_match_below(parts, pats))
    for _path, parts, is_dir in scan:
        if _matches(parts, pats):
            found.append((os.path.join(base, *parts) if base else os.path.join(*parts), is_dir))
    return sorted(found)


def _may_match_below(parts: Sequence[str], pats: Sequence[str]) -> bool:
    """True when something inside the folder ``parts`` may match ``pats``: entering only those
    folders keeps ``a/*/b/*.png`` from walking the whole tree under ``a``."""
    for i, part in enumerate(parts):
        if i >= len(pats):
            return False
        if pats[i] == "**":
            return True
        if not fnmatch.fnmatchcase(part, pats[i]):
            return False
    return len(parts) < len(pats)


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

    reported = set()

    def report(problems: List[InputProblem]) -> None:
        for problem in problems:  # a folder reached by two items is reported once
            if (problem.item, problem.message) not in reported:
                reported.add((problem.item, problem.message))
                out.problems.append(problem)

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
            problems: List[InputProblem] = []
            found = _walk(item, suffixes, excluded, recursive, problems)
            report(problems)
            if not found and not problems:
                where = "in it or its subfolders" if recursive else "in it"
                out.problems.append(InputProblem(item, f"folder has no images ({wanted}) {where}"))
            for f in found:
                add(f)
            continue
        if is_glob(item):
            problems = []
            matches = _glob(item, excluded, problems)
            walked: Set[Tuple[int, int]] = set()  # 'x/**' matches every folder: list each once
            added = 0
            for m, is_dir in matches:
                if _is_excluded(m, excluded) or _hidden(os.path.basename(m)):
                    continue
                if is_dir:
                    added += sum(add(f) for f in _walk(m, suffixes, excluded, recursive, problems,
                                                       visited=walked))
                elif _suffix_ok(m, suffixes):
                    if os.path.isfile(m):
                        added += add(m)
                    else:
                        problems.append(_not_a_file(m))
            report(problems)
            if not added and not problems and not any(_real(m) in seen for m, _ in matches):
                out.problems.append(InputProblem(item, f"pattern matches no image files ({wanted})"))
            continue
        if os.path.lexists(item):
            out.problems.append(InputProblem(item, "is neither a file nor a folder (a broken link?)"))
        else:
            out.problems.append(InputProblem(item, "no such file or folder"))
    return out


__all__ = ["InputProblem", "ExpandedInputs", "expand_inputs", "is_glob"]
