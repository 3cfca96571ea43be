"""COVID-QU-Ex folders as users download them: finding the root, listing samples and masks.

The dataset's layout (Tahir et al., Computers in Biology and Medicine 139, 2021)::

    Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,lung masks,infection masks}/<name>.png

``Lung Segmentation Data/`` has the same layout without ``infection masks``. Masks carry the
image's file name. Listing uses ``os.scandir`` only (no image is decoded), so the 3728 images of
the Train split are listed in milliseconds.
"""

from __future__ import annotations

import os
from collections import defaultdict
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from covidedge.data.imageio import IMAGE_SUFFIXES
from covidedge.errors import BadInputError, DatasetError
from covidedge.spec import CLASS_LABELS

#: Class folders, in the order of the classifier's outputs.
CLASSES: Tuple[str, ...] = CLASS_LABELS  # the class folders are named after the labels
#: Split folders, in the order they are reported.
SPLITS: Tuple[str, ...] = ("Train", "Val", "Test")
#: The two subsets of COVID-QU-Ex; the first is preferred when both are present.
INFECTION_SUBSET = "Infection Segmentation Data"
LUNG_SUBSET = "Lung Segmentation Data"
SUBSETS: Tuple[str, ...] = (INFECTION_SUBSET, LUNG_SUBSET)
IMAGES_DIR = "images"
LUNG_MASKS_DIR = "lung masks"
INFECTION_MASKS_DIR = "infection masks"

LAYOUT = ("[Infection Segmentation Data/]{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/"
          "{images,lung masks,infection masks}/<name>.png")

_SUBSET_ALIASES = {
    "infection": INFECTION_SUBSET, "infection segmentation data": INFECTION_SUBSET,
    "lung": LUNG_SUBSET, "lungs": LUNG_SUBSET, "lung segmentation data": LUNG_SUBSET,
}


@dataclass(frozen=True)
class Sample:
    """One image of the dataset with its label and same-named masks (None when absent)."""

    image: Path
    label: str
    label_index: int
    lung_mask: Optional[Path]
    infection_mask: Optional[Path]
    split: str

    @property
    def name(self) -> str:
        """The image's file name without suffix, e.g. ``covid_1``; masks share it."""
        return self.image.stem


# ---------------------------------------------------------------------------------------------
# Folder helpers
# ---------------------------------------------------------------------------------------------
def _subdirs(folder: Path) -> Dict[str, Path]:
    """Sub-folder name -> path, via one scandir; empty when the folder cannot be read."""
    try:
        with os.scandir(folder) as it:
            return {e.name: Path(e.path) for e in it if e.is_dir()}
    except OSError:
        return {}


def _image_files(folder: Path) -> Dict[str, str]:
    """File stem -> file name for the images (by suffix) directly inside ``folder``."""
    out: Dict[str, str] = {}
    try:
        with os.scandir(folder) as it:
            for e in it:
                stem, dot, ext = e.name.rpartition(".")
                if dot and ("." + ext.lower()) in IMAGE_SUFFIXES and e.is_file():
                    # On a stem clash keep the lexicographically first name: deterministic.
                    if stem not in out or e.name < out[stem]:
                        out[stem] = e.name
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DatasetError(f"cannot list the folder: {exc.strerror or exc}", path=folder,
                           hint="check its permissions") from exc
    return out


def _split_dirs(folder: Path) -> Dict[str, Path]:
    """Canonical split name -> folder for the splits under ``folder`` that hold a class folder."""
    subs = _subdirs(folder)
    lower = {name.lower(): path for name, path in subs.items()}
    found = {}
    for split in SPLITS:
        path = subs.get(split) or lower.get(split.lower())
        if path is not None and any(c in _subdirs(path) for c in CLASSES):
            found[split] = path
    return found


def _natural_key(name: str):
    """Sort key that orders ``covid_2`` before ``covid_10``; ties broken by the plain name."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts), name


def _normalise_subset(subset: Optional[str]) -> Optional[str]:
    if subset is None:
        return None
    key = str(subset).strip().lower()
    if key not in _SUBSET_ALIASES:
        raise DatasetError(f"unknown subset {subset!r}",
                           hint="expected 'infection' (Infection Segmentation Data) or 'lung' "
                                "(Lung Segmentation Data)")
    return _SUBSET_ALIASES[key]


def _found_listing(folder: Path, limit: int = 8) -> str:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return "nothing readable"
    if not names:
        return "an empty folder"
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def resolve_root(root: Union[str, os.PathLike], subset: Optional[str] = None) -> Tuple[Path, Optional[str]]:
    """Find the folder holding the split folders; returns ``(folder, subset name or None)``.

    Accepted: that folder itself, the ``Infection Segmentation Data`` or ``Lung Segmentation
    Data`` folder, their parent, and the Kaggle download's doubled nesting
    (``X/X/Train``). When both subsets are present ``subset`` chooses (default: infection).
    """
    root = Path(os.fspath(root)).expanduser()
    wanted = _normalise_subset(subset)
    if not root.exists():
        raise DatasetError("dataset folder does not exist", path=root,
                           hint=f"expected the layout {LAYOUT}")
    if not root.is_dir():
        raise DatasetError("is a file, not a dataset folder", path=root,
                           hint=f"expected the layout {LAYOUT}")

    def named_subset(folder: Path) -> Optional[str]:
        for name in (folder.name, folder.parent.name):
            if name in SUBSETS:
                return name
        return None

    if _split_dirs(root):
        name = named_subset(root)
        if wanted is not None and name is not None and name != wanted:
            raise DatasetError(f"is the {name!r} subset, but subset {wanted!r} was requested",
                               path=root, hint="point at the parent folder holding both subsets")
        return root, name or wanted

    # The folder may be a subset folder with the Kaggle doubled nesting, or the parent of one
    # or both subsets (each possibly doubled).
    candidates: List[Tuple[str, Path]] = []
    if root.name in SUBSETS:
        inner = root / root.name
        if inner.is_dir() and _split_dirs(inner):
            candidates.append((root.name, inner))
    for name in SUBSETS:
        for folder in (root / name, root / name / name):
            if folder.is_dir() and _split_dirs(folder):
                candidates.append((name, folder))
                break
    if candidates:
        if wanted is None:
            wanted = candidates[0][0] if len({n for n, _ in candidates}) == 1 else INFECTION_SUBSET
        for name, folder in candidates:
            if name == wanted:
                return folder, name
        present = sorted({n for n, _ in candidates})
        raise DatasetError(f"has no {wanted!r} subset (found {', '.join(present)})", path=root,
                           hint="choose one of the present subsets")

    raise DatasetError(
        f"is not a COVID-QU-Ex folder: found {_found_listing(root)}", path=root,
        hint=f"expected the layout {LAYOUT}, or its parent folder")


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
class CovidQuDataset:
    """A COVID-QU-Ex folder: its splits, samples (image, label, masks) and counts.

    ``root`` may be any of the folders :func:`resolve_root` accepts; ``.root`` is the resolved
    folder that holds the split folders. Nothing is decoded; samples are listed on first use
    and cached.
    """

    def __init__(self, root: Union[str, os.PathLike], subset: Optional[str] = None):
        self.requested_root = Path(os.fspath(root))
        self.root, self.subset = resolve_root(root, subset)
        self._split_paths = _split_dirs(self.root)
        self._cache: Dict[str, List[Sample]] = {}
        if not any(self._has_images(p) for p in self._split_paths.values()):
            raise DatasetError(
                f"holds the split folders {', '.join(self._split_paths)} but no images", path=self.root,
                hint=f"expected the layout {LAYOUT}; the download may be incomplete")
        self._check_distinct()

    def _check_distinct(self) -> None:
        """DatasetError when two splits or two classes are one folder, or one image file is
        listed twice (symbolic or hard links): Val would be Train, or one class's images would
        be scored as another's, and every number computed on them would be wrong."""
        folders: Dict[Tuple[int, int], str] = {}
        for split, split_dir in self._split_paths.items():
            for label in CLASSES:
                for what, folder in ((f"split folder {split}", split_dir),
                                     (f"class folder {split}/{label}", split_dir / label / IMAGES_DIR)):
                    try:
                        st = os.stat(folder)
                    except OSError:
                        continue
                    key = (st.st_dev, st.st_ino)
                    other = folders.setdefault(key, what)
                    if other != what:
                        raise DatasetError(
                            f"the {what} and the {other} are the same folder ({os.path.realpath(folder)}, "
                            "reached through a symbolic link)", path=folder,
                            hint="give each split and class its own images; remove the link")
        files: Dict[Tuple[int, int], Path] = {}
        for split in self.splits:
            for sample in self.samples(split):
                try:
                    st = os.stat(sample.image)
                except OSError:
                    continue
                other = files.setdefault((st.st_dev, st.st_ino), sample.image)
                if other != sample.image:
                    raise DatasetError(
                        f"is the same file as {other} (a symbolic or hard link): one image would be "
                        "counted twice, in two classes or splits", path=sample.image,
                        hint="give each split and class its own images; remove the link")

    @staticmethod
    def _has_images(split_dir: Path) -> bool:
        for cls in CLASSES:
            folder = split_dir / cls / IMAGES_DIR
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                            return True
            except OSError:
                continue
        return False

    def __repr__(self) -> str:
        return f"CovidQuDataset(root={str(self.root)!r}, subset={self.subset!r}, splits={self.splits})"

    @property
    def splits(self) -> Tuple[str, ...]:
        """The splits present, in Train, Val, Test order."""
        return tuple(self._split_paths)

    def _canonical_split(self, split: str) -> str:
        for s in self.splits:
            if str(split).lower() == s.lower():
                return s
        raise DatasetError(
            f"has no split {split!r}; present: {', '.join(self.splits) or 'none'}", path=self.root,
            hint="choose one of the present splits")

    def samples(self, split: str) -> List[Sample]:
        """All samples of ``split`` (case-insensitive), by class order then natural file order."""
        split = self._canonical_split(split)
        if split not in self._cache:
            self._cache[split] = self._list_split(split)
        return list(self._cache[split])

    def _list_split(self, split: str) -> List[Sample]:
        split_dir = self._split_paths[split]
        out: List[Sample] = []
        for index, label in enumerate(CLASSES):
            class_dir = split_dir / label
            if not class_dir.is_dir():
                continue
            images_dir = class_dir / IMAGES_DIR
            if not images_dir.is_dir():
                raise DatasetError(
                    f"has no '{IMAGES_DIR}' folder (found {_found_listing(class_dir)})",
                    path=class_dir, hint=f"expected the layout {LAYOUT}")
            images = _image_files(images_dir)
            lungs = _image_files(class_dir / LUNG_MASKS_DIR)
            infections = _image_files(class_dir / INFECTION_MASKS_DIR)
            for stem in sorted(images, key=_natural_key):
                lung = lungs.get(stem)
                inf = infections.get(stem)
                out.append(Sample(
                    image=images_dir / images[stem],
                    label=label,
                    label_index=index,
                    lung_mask=None if lung is None else class_dir / LUNG_MASKS_DIR / lung,
                    infection_mask=None if inf is None else class_dir / INFECTION_MASKS_DIR / inf,
                    split=split,
                ))
        return out

    def missing_classes(self, split: str) -> List[str]:
        """The classes of :data:`CLASSES` with no image in ``split`` (folder missing or empty)."""
        present = {s.label for s in self.samples(split)}
        return [c for c in CLASSES if c not in present]

    def check_classes(self, split: str, allow_missing: bool = False) -> List[str]:
        """Refuse a ``split`` that lacks images of a class; returns the missing classes.

        A model is still built with one output per class of :data:`CLASSES`, so a class without
        images would train with weight 0 and be averaged into metrics without any support.
        ``allow_missing=True`` (``--allow-missing-classes``) accepts it; callers record the
        returned list in their checkpoint or report.
        """
        missing = self.missing_classes(split)
        if missing and not allow_missing:
            split = self._canonical_split(split)
            which = "class" if len(missing) == 1 else "classes"
            raise DatasetError(
                f"split {split} has no images of the {which} {', '.join(missing)} (class folder "
                f"missing or empty), expected images of each of {', '.join(CLASSES)}",
                path=self._split_paths[split],
                hint="add the missing images, or pass --allow-missing-classes "
                     "(allow_missing_classes=True) to go on without them; the checkpoint and "
                     "report then record it")
        return missing

    def counts(self) -> Dict[str, Dict[str, int]]:
        """``{split: {label: number of images}}`` for the present splits (every label listed)."""
        result = {}
        for split in self.splits:
            per = {label: 0 for label in CLASSES}
            for s in self.samples(split):
                per[s.label] += 1
            result[split] = per
        return result

    def summary(self) -> Dict[str, object]:
        """Counts and mask availability per split and class, plus the resolved root; JSON-ready."""
        splits: Dict[str, object] = {}
        total = 0
        for split in self.splits:
            per_class = {}
            for label in CLASSES:
                per_class[label] = {"images": 0, "lung_masks": 0, "infection_masks": 0}
            for s in self.samples(split):
                row = per_class[s.label]
                row["images"] += 1
                row["lung_masks"] += s.lung_mask is not None
                row["infection_masks"] += s.infection_mask is not None
            n = sum(r["images"] for r in per_class.values())
            total += n
            splits[split] = {
                "classes": per_class,
                "images": n,
                "lung_masks": sum(r["lung_masks"] for r in per_class.values()),
                "infection_masks": sum(r["infection_masks"] for r in per_class.values()),
            }
        return {
            "root": str(self.root),
            "requested_root": str(self.requested_root),
            "subset": self.subset,
            "classes": list(CLASSES),
            "splits": splits,
            "images": total,
        }


def select_samples(samples: Sequence, limit_per_class: Optional[int] = None, seed: int = 0) -> List:
    """At most ``limit_per_class`` samples of each label, picked at random but deterministically
    from ``seed`` (the same seed gives the same images on any machine, whatever the listing
    order), ordered by label, then by file name in natural order (``covid_2`` before
    ``covid_10``). ``None`` keeps everything."""
    ordered = sorted(samples, key=lambda s: (s.label_index, _natural_key(s.name), str(s.image)))
    if limit_per_class is None:
        return ordered
    limit = int(limit_per_class)
    if limit < 1:
        raise BadInputError(f"limit_per_class={limit_per_class} is not a positive count",
                            hint="pass a number >= 1, or no limit")
    by_label: Dict[int, list] = defaultdict(list)
    for s in ordered:
        by_label[s.label_index].append(s)
    rng = np.random.default_rng(int(seed))
    keep = []
    for label_index in sorted(by_label):
        group = by_label[label_index]
        if len(group) > limit:
            pick = np.sort(rng.permutation(len(group))[:limit])
            group = [group[i] for i in pick]
        keep.extend(group)
    return keep


__all__ = [
    "select_samples",
    "CLASSES",
    "INFECTION_SUBSET",
    "LAYOUT",
    "LUNG_SUBSET",
    "SPLITS",
    "SUBSETS",
    "CovidQuDataset",
    "Sample",
    "resolve_root",
]
