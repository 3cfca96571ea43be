"""INT8 calibration sets: which real images calibrate a graph, pinned by their sha256.

A calibration set is a JSON manifest, by default
``calibration/<dataset>-<split>-<count>-seed<seed>.json``: the data root as it was given, every
image's path relative to it with its label and sha256, the class balance, the preprocessing id,
the input size (px), the seed, the creation time and the manifest's own sha256. That hash covers the canonical content except the creation time and the
data root, so the same images make the same calibration wherever the dataset sits; an int8 model
records it as ``covidedge.calibration_sha256``.

Loading a manifest verifies every image's sha256: a missing or changed file is an error naming
it, never a silently different calibration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from covidedge.errors import BadInputError, CovidEdgeError, DatasetError
from covidedge.spec import as_size
from covidedge.fileio import refuse_existing, sha256_file, write_atomic

FORMAT = "covidedge-calibration-v1"
#: Folder (relative to the working directory) where manifests go by default.
DEFAULT_DIR = Path("calibration")
#: Keys left out of the manifest's own hash: when it was made and where the images were.
_UNHASHED = ("created", "data_root", "sha256")

PathLike = Union[str, "os.PathLike[str]"]


def manifest_sha256(manifest: Dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces), without ``created``,
    ``data_root`` and ``sha256``."""
    content = {k: v for k, v in manifest.items() if k not in _UNHASHED}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _size(input_size) -> Tuple[int, int]:
    h, w = as_size(input_size, "input size")
    if h < 8 or w < 8:
        raise BadInputError(f"input size {h}x{w} px is too small", hint="pass e.g. 256")
    return h, w


def dataset_slug(data_root: PathLike) -> str:
    """A file-name-safe name for a dataset folder, e.g. ``covid-qu-ex``."""
    name = Path(os.fspath(data_root)).expanduser().resolve().name.lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return slug or "dataset"


def default_manifest_path(dataset: str, split: str, count: int, seed: int) -> Path:
    """``calibration/<dataset>-<split>-<count>-seed<seed>.json`` (relative to the working dir)."""
    return DEFAULT_DIR / f"{dataset}-{str(split).lower()}-{int(count)}-seed{int(seed)}.json"


def _allocate(available: Dict[str, int], count: int) -> Dict[str, int]:
    """Images per class: equal shares where the classes have enough, the rest spread over the
    classes that still have images, in class order (deterministic)."""
    take = {label: 0 for label in available}
    left = count
    while left > 0:
        open_ = [label for label in available if take[label] < available[label]]
        if not open_:
            break
        share, extra = divmod(left, len(open_))
        for i, label in enumerate(open_):
            want = share + (1 if i < extra else 0)
            got = min(want, available[label] - take[label])
            take[label] += got
            left -= got
    return take


class CalibrationSet:
    """A verified list of calibration images and how to feed them to a model.

    Made by :func:`make_calibration_set` or read with :meth:`load`. ``batches(n)`` yields
    ``{"image": (N, 1, H, W) float32}`` through covidedge's one preprocessing.
    """

    def __init__(self, manifest: Dict[str, Any], data_root: Path, path: Optional[Path] = None):
        self.manifest = manifest
        self.data_root = Path(data_root)
        self.path = None if path is None else Path(path)

    # -- what it is ----------------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.manifest["input_size"])

    @property
    def preprocessing(self) -> str:
        return self.manifest["preprocessing"]

    @property
    def split(self) -> str:
        return self.manifest["split"]

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def class_balance(self) -> Dict[str, int]:
        return dict(self.manifest["class_balance"])

    @property
    def images(self) -> List[Path]:
        """Absolute (or data-root-relative as given) paths of the images, in manifest order."""
        return [self.data_root / e["path"] for e in self.manifest["images"]]

    @property
    def labels(self) -> List[str]:
        return [e["label"] for e in self.manifest["images"]]

    @property
    def source(self) -> str:
        """What error messages name: the manifest file, else the data root."""
        return str(self.path if self.path is not None else self.data_root)

    def __len__(self) -> int:
        return len(self.manifest["images"])

    def __repr__(self) -> str:
        return (f"CalibrationSet({len(self)} images, split={self.split!r}, "
                f"sha256={self.sha256[:12]}, source={self.source!r})")

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self.manifest))

    def summary(self) -> Dict[str, Any]:
        """The facts a report shows (no image list)."""
        m = self.manifest
        return {"manifest": None if self.path is None else str(self.path), "sha256": self.sha256,
                "count": len(self), "class_balance": self.class_balance, "split": self.split,
                "seed": self.seed, "input_size": list(self.input_size),
                "preprocessing": self.preprocessing, "dataset": m.get("dataset"),
                "data_root": m.get("data_root"), "created": m.get("created")}

    # -- feeding -------------------------------------------------------------------------------
    def batches(self, batch_size: int = 8) -> Iterator[Dict[str, np.ndarray]]:
        """Yield ``{"image": (N, 1, H, W) float32}`` batches in manifest order (the last one may
        be smaller). An unreadable image raises BadInputError naming the file."""
        from covidedge.data.preprocess import preprocess

        if int(batch_size) < 1:
            raise BadInputError(f"batch size {batch_size} must be at least 1")
        paths = self.images
        if not paths:
            raise BadInputError("calibration set has no images", path=self.source,
                                hint="make one with 'covidedge calibrate --data DIR --count N'")
        size = self.input_size
        for start in range(0, len(paths), int(batch_size)):
            chunk = paths[start:start + int(batch_size)]
            arrays = []
            for p in chunk:
                try:
                    arrays.append(preprocess(p, size=size))
                except CovidEdgeError as exc:
                    if exc.path is not None and str(p) in str(exc):
                        raise
                    raise BadInputError(f"calibration image cannot be read: {exc}", path=p,
                                        hint="replace the file or make a new calibration set"
                                        ) from exc
                except Exception as exc:
                    raise BadInputError(f"calibration image cannot be read "
                                        f"({type(exc).__name__}: {exc})", path=p,
                                        hint="replace the file or make a new calibration set"
                                        ) from exc
            yield {"image": np.concatenate(arrays, axis=0)}

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write the manifest as indented JSON (atomically) and remember the path; an existing
        file is refused unless ``overwrite`` (int8 models record a manifest's sha256)."""
        path = write_atomic(os.fspath(path),
                            (json.dumps(self.manifest, indent=2, sort_keys=False) + "\n").encode("utf-8"),
                            overwrite=overwrite)
        self.path = path
        return path

    @classmethod
    def load(cls, path: PathLike, data_root: Optional[PathLike] = None,
             verify: bool = True) -> "CalibrationSet":
        """Read a manifest and (``verify=True``) check its own sha256 and every image's sha256.

        ``data_root`` overrides the manifest's root (e.g. the dataset moved). A missing or
        changed image raises BadInputError naming the file and what to do.
        """
        path = Path(os.fspath(path))
        if not path.is_file():
            raise BadInputError("calibration manifest not found", path=path,
                                hint="make one with 'covidedge calibrate --data DIR --count N'")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"calibration manifest is not readable JSON ({exc})", path=path,
                                hint="make a new one with 'covidedge calibrate'") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = (manifest.get("format") if isinstance(manifest, dict)
                     else type(manifest).__name__)
            raise BadInputError(f"is not a covidedge calibration manifest (format {found!r}, "
                                f"expected {FORMAT!r})", path=path,
                                hint="make one with 'covidedge calibrate'")
        missing = [k for k in ("images", "input_size", "preprocessing", "sha256", "split",
                               "seed", "class_balance", "data_root") if k not in manifest]
        if missing:
            raise BadInputError(f"calibration manifest lacks {', '.join(missing)}", path=path,
                                hint="make a new one with 'covidedge calibrate'")
        want = manifest_sha256(manifest)
        if manifest["sha256"] != want:
            raise BadInputError(
                f"calibration manifest content does not match its sha256 "
                f"({str(manifest['sha256'])[:12]} recorded, {want[:12]} computed): it was edited",
                path=path, hint="make a new one with 'covidedge calibrate' instead of editing it")
        root = cls._resolve_root(manifest, path, data_root)
        cset = cls(manifest, root, path)
        if verify:
            cset.verify()
        return cset

    @staticmethod
    def _resolve_root(manifest, path: Path, data_root) -> Path:
        if data_root is not None:
            root = Path(os.fspath(data_root)).expanduser()
            if not root.is_dir():
                raise BadInputError("calibration data root does not exist", path=root,
                                    hint="pass the folder the calibration set was made from")
            return root
        given = Path(str(manifest["data_root"])).expanduser()
        for candidate in (given, path.parent / given):
            if candidate.is_dir():
                return candidate
        raise BadInputError(f"calibration data root {str(given)!r} does not exist", path=path,
                            hint="pass the dataset folder with data_root= / --calib-root")

    def verify(self) -> None:
        """Check every image exists and has the sha256 the manifest records."""
        for entry in self.manifest["images"]:
            p = self.data_root / entry["path"]
            if not p.is_file():
                raise BadInputError(
                    "calibration image is missing", path=p,
                    hint="pass the data root the set was made from, or make a new set with "
                         "'covidedge calibrate'")
            got = sha256_file(p)
            if got != entry["sha256"]:
                raise BadInputError(
                    f"calibration image changed since the manifest was made (sha256 {got[:12]}, "
                    f"expected {entry['sha256'][:12]})", path=p,
                    hint="restore the original file or make a new set with 'covidedge calibrate'")


def make_calibration_set(data_root: PathLike, count: int, *, split: str = "Train",
                         seed: int = 0, input_size=(256, 256), out: Optional[PathLike] = None,
                         dataset: Optional[str] = None, overwrite: bool = False) -> CalibrationSet:
    """Pick ``count`` images of ``split``, stratified by class (equal per class where the
    classes have enough), deterministically for ``seed``; write the manifest to ``out``
    (default ``calibration/<dataset>-<split>-<count>-seed<seed>.json``) and return the set.
    An existing manifest that lists the same set (same sha256) is kept and reused; another one
    is refused unless ``overwrite`` (``covidedge calibrate --overwrite``): int8 models record a
    manifest's sha256, and replacing it orphans them."""
    from covidedge.data.covidqu import CLASSES, CovidQuDataset
    from covidedge.data.preprocess import PREPROCESSING_ID

    try:
        count = int(count)
        seed = int(seed)
    except (TypeError, ValueError):
        raise BadInputError(f"count={count!r} / seed={seed!r} must be integers") from None
    if count < 1:
        raise BadInputError(f"count={count}, expected at least 1 calibration image",
                            hint="a few hundred images is typical; 500 is a good start")
    if seed < 0:
        raise BadInputError(f"seed={seed}, expected a non-negative integer")
    size = _size(input_size)
    if out is not None and not _same_set_at(out, {"count": count, "seed": seed, "input_size": list(size)}):
        refuse_existing(out, what="calibration manifest", overwrite=overwrite)  # before any image is read
    given = Path(os.fspath(data_root)).expanduser()
    ds = CovidQuDataset(given)
    samples = ds.samples(split)
    split = samples[0].split if samples else split
    by_class: Dict[str, list] = {label: [] for label in CLASSES}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    available = {label: len(v) for label, v in by_class.items() if v}
    total = sum(available.values())
    if total == 0:
        raise DatasetError(f"split {split!r} has no images", path=ds.root,
                           hint="choose a split with images (--split)")
    if count > total:
        raise BadInputError(f"count={count}, but split {split!r} has only {total} images",
                            path=ds.root, hint=f"pass --count {total} or less")
    take = _allocate(available, count)

    entries = []
    for class_index, label in enumerate(CLASSES):
        pool = by_class.get(label, [])
        n = take.get(label, 0)
        if not n:
            continue
        rng = np.random.default_rng([seed, class_index])
        picked = sorted(rng.permutation(len(pool))[:n].tolist())
        for i in picked:
            s = pool[i]
            try:
                rel = s.image.relative_to(given)
            except ValueError:
                rel = Path(os.path.relpath(s.image, given))
            _check_images_readable([s.image])
            entries.append({"path": rel.as_posix(), "label": label,
                            "sha256": sha256_file(s.image)})

    name = dataset or dataset_slug(given)
    manifest: Dict[str, Any] = {
        "format": FORMAT,
        "dataset": name,
        "data_root": str(data_root),
        "split": split,
        "count": len(entries),
        "seed": seed,
        "input_size": list(size),
        "preprocessing": PREPROCESSING_ID,
        "class_balance": {label: take[label] for label in CLASSES if label in take},
        "images": entries,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest["sha256"] = manifest_sha256(manifest)
    cset = CalibrationSet(manifest, given)
    out_path = Path(os.fspath(out)) if out is not None else default_manifest_path(
        name, split, len(entries), seed)
    if _same_set_at(out_path, {"sha256": manifest["sha256"]}):
        cset.path = out_path  # the same images drawn again: the file that lists them stays
        return cset
    refuse_existing(out_path, what="calibration manifest", overwrite=overwrite)
    cset.save(out_path, overwrite=overwrite)
    return cset


def _same_set_at(path: PathLike, facts: Dict[str, Any]) -> bool:
    """Whether ``path`` is a calibration manifest with an intact sha256 that has these ``facts``
    (before the images are drawn: count, seed and input size; after: the set's sha256)."""
    try:
        found = json.loads(Path(os.fspath(path)).read_text(encoding="utf-8"))
        intact = found.get("sha256") == manifest_sha256(found)
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return intact and all(found.get(k) == v for k, v in facts.items())


def _check_images_readable(paths) -> None:
    """BadInputError naming the first chosen image whose header cannot be read (a 0-byte or
    truncated file): refused when the set is made, not when an export reads it later."""
    from covidedge.data.imageio import image_shape

    for p in paths:
        try:
            image_shape(p)
        except CovidEdgeError as exc:
            raise BadInputError(f"calibration image cannot be read ({exc})", path=p,
                                hint="replace or remove the file, then make the calibration set again") from exc


def as_calibration_set(calibration) -> CalibrationSet:
    """A CalibrationSet from a CalibrationSet or the path of its manifest (verified on load)."""
    if isinstance(calibration, CalibrationSet):
        return calibration
    if isinstance(calibration, (str, os.PathLike)):
        return CalibrationSet.load(calibration)
    raise BadInputError(f"calibration is a {type(calibration).__name__}, expected a "
                        f"CalibrationSet or the path of a calibration manifest",
                        hint="make one with 'covidedge calibrate --data DIR --count N'")


class CalibrationReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` fed from a CalibrationSet.

    Yields ``{input_name: (N, 1, H, W)}`` batches; an empty set, or a stream that ends before its
    first batch, raises BadInputError; an unreadable image raises BadInputError naming the file
    (from ``CalibrationSet.batches``). It never ends calibration early in silence.
    """

    def __init__(self, calibration, input_name: str, batch_size: int = 8):
        if len(calibration) == 0:
            raise BadInputError("calibration set has no images", path=calibration.source,
                                hint="make one with 'covidedge calibrate --data DIR --count N'")
        self.calibration = calibration
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self.batches_read = 0
        self.images_read = 0
        self._it: Optional[Iterator] = None

    def get_next(self):
        if self._it is None:
            self._it = iter(self.calibration.batches(self.batch_size))
        try:
            batch = next(self._it)
        except StopIteration:
            if self.batches_read == 0:
                raise BadInputError("calibration stream produced no images",
                                    path=self.calibration.source,
                                    hint="check the manifest lists images and they are readable")
            return None
        x = batch["image"]
        self.batches_read += 1
        self.images_read += len(x)
        return {self.input_name: x}

    def __iter__(self):
        while True:
            item = self.get_next()
            if item is None:
                return
            yield item

    def rewind(self) -> None:
        self._it = None
        self.batches_read = 0
        self.images_read = 0


__all__ = ["FORMAT", "CalibrationSet", "make_calibration_set", "manifest_sha256",
           "default_manifest_path", "dataset_slug", "as_calibration_set", "CalibrationReader"]
