"""The trained models covidedge ships, and how they become ONNX graphs on this machine.

Each shipped model is a row of ``models.json`` in this folder (variants are data), with:

* a **compact graph** (``<name>.compact.onnx``): the exported fp32 ONNX graph with its large
  weight tensors stored as fp16 (half the bytes). It is not meant to be run as it is:
  :meth:`ShippedModel.fp32_onnx` restores those tensors to fp32 and writes the fp32 graph into
  the cache folder (:func:`cache_dir`), checked against the sha256 the row records. The fp16
  rounding of the weights is what ships, so every figure in the card is measured on the
  restored graph; the card also gives its difference from the unrounded checkpoint;
* a **model card** (``<name>.md``): data, split, command, Val metrics per precision, intended use;
* a **calibration cache** (``<name>.calib.json``): int8 activation ranges of the restored fp32
  graph, computed on the calibration set recorded in the repository's ``calibration/`` folder, so
  int8 graphs are made without the dataset.

Only numpy and onnx are needed here (no torch).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from covidedge.errors import BadInputError, IncompatibleModelError

PathLike = Union[str, "os.PathLike[str]"]

PACKAGE_DIR = Path(__file__).resolve().parent
INDEX_FILE = "models.json"
#: Metadata key marking a compact graph (its value: the storage format).
KEY_COMPACT = "covidedge.compact_weights"
COMPACT_FORMAT = "fp16-weights/1"
#: Weight tensors smaller than this stay fp32 in a compact graph (biases, norms: few bytes, and
#: small values such as variances lose most in fp16).
MIN_FP16_ELEMENTS = 1024
FP16_MAX = 65504.0


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model (a row of models.json)."""

    name: str
    task: str
    compact: str
    card: str
    calibration_cache: Optional[str]
    fp32_sha256: str
    summary: Dict[str, Any] = field(default_factory=dict)
    folder: Path = PACKAGE_DIR

    @property
    def compact_path(self) -> Path:
        return self.folder / self.compact

    @property
    def card_path(self) -> Path:
        return self.folder / self.card

    @property
    def calibration_cache_path(self) -> Optional[Path]:
        return None if not self.calibration_cache else self.folder / self.calibration_cache

    def fp32_onnx(self, cache: Optional[PathLike] = None) -> Path:
        """The runnable fp32 ONNX graph of this model, restored once into ``cache`` (default
        :func:`cache_dir`) and reused while its sha256 is the recorded one."""
        from covidedge.fileio import sha256_file

        folder = Path(cache) if cache is not None else cache_dir()
        dst = folder / f"{self.name}-{self.fp32_sha256[:12]}.onnx"
        if dst.is_file() and _restored_intact(dst, self.fp32_sha256, sha256_file):
            return dst
        if not self.compact_path.is_file():
            raise IncompatibleModelError("shipped model file is missing", path=self.compact_path,
                                         hint="reinstall covidedge")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".restore-") as tmp:
            tmp_out = Path(tmp) / dst.name
            restore_compact(self.compact_path, tmp_out)
            got = sha256_file(tmp_out)
            if got != self.fp32_sha256:
                raise IncompatibleModelError(
                    f"shipped model restores to sha256 {got[:12]}, expected {self.fp32_sha256[:12]}",
                    path=self.compact_path, hint="the file is damaged; reinstall covidedge")
            os.replace(tmp_out, dst)
        return dst

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "task": self.task, "compact": str(self.compact_path),
                "card": str(self.card_path),
                "calibration_cache": None if self.calibration_cache_path is None
                else str(self.calibration_cache_path),
                "fp32_sha256": self.fp32_sha256, **self.summary}


#: Restored graphs whose sha256 matched in this process, by (path, size, mtime): hashed once.
_INTACT: set = set()


def _restored_intact(path: Path, sha256: str, hasher) -> bool:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, sha256)
    if key not in _INTACT:
        if hasher(path) != sha256:
            return False
        _INTACT.add(key)
    return True


def cache_dir() -> Path:
    """Where restored graphs go: $COVIDEDGE_CACHE, else $XDG_CACHE_HOME/covidedge, else
    ~/.cache/covidedge (a ``models`` folder inside it)."""
    root = os.environ.get("COVIDEDGE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "covidedge") if xdg else os.path.join(Path.home(), ".cache", "covidedge")
    return Path(root) / "models"


def _read_index(folder: Path = PACKAGE_DIR) -> List[ShippedModel]:
    path = folder / INDEX_FILE
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IncompatibleModelError(f"shipped model index is unreadable ({exc})", path=path,
                                     hint="reinstall covidedge") from None
    out = []
    for r in rows:
        out.append(ShippedModel(name=r["name"], task=r["task"], compact=r["compact"], card=r["card"],
                                calibration_cache=r.get("calibration_cache"),
                                fp32_sha256=r["fp32_sha256"], summary=dict(r.get("summary") or {}),
                                folder=folder))
    return out


def models_dir() -> Path:
    """The folder whose models.json lists the default models: $COVIDEDGE_MODELS_DIR (a folder
    laid out like this one, e.g. a site's own models made with ``covidedge.pretrained.release``),
    else the models shipped inside the package."""
    env = os.environ.get("COVIDEDGE_MODELS_DIR")
    return Path(env) if env else PACKAGE_DIR


def shipped_models() -> List[ShippedModel]:
    """Every shipped model, defaults first (the order of models.json)."""
    folder = models_dir()
    if folder != PACKAGE_DIR and not (folder / INDEX_FILE).is_file():
        raise BadInputError(f"COVIDEDGE_MODELS_DIR has no {INDEX_FILE}", path=folder,
                            hint="point it at a folder written by covidedge.pretrained.release, or unset it")
    return _read_index(folder)


def get_shipped(name: str) -> ShippedModel:
    for m in shipped_models():
        if m.name == name:
            return m
    names = ", ".join(m.name for m in shipped_models()) or "none"
    raise BadInputError(f"no shipped model is called {name!r} (shipped: {names})",
                        hint="list them with 'covidedge models'")


def default_model(task: str) -> Optional[ShippedModel]:
    """The first shipped model of ``task`` ("classifier" or "segmenter"), or None."""
    return next((m for m in shipped_models() if m.task == task), None)


# -- compact storage -------------------------------------------------------------------------
def pack_compact(src: PathLike, dst: PathLike) -> Dict[str, Any]:
    """Write ``src`` (an fp32 ONNX graph) as a compact graph: float weight tensors of at least
    :data:`MIN_FP16_ELEMENTS` values, all finite and within fp16's range, stored as fp16.
    Returns counts and the largest relative rounding error of a stored tensor (L2 norm of the
    error over the L2 norm of the tensor)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from covidedge.formats.onnxfile import load_onnx, save_onnx, set_metadata
    from covidedge.formats.onnxfile import graph_precision

    model = load_onnx(src)
    if any(p.key == KEY_COMPACT for p in model.metadata_props):
        raise BadInputError("graph is already compact", path=src)
    if graph_precision(model) != "fp32":  # fp16 weights included: restoring could not tell them apart
        raise BadInputError("a compact graph is made from an fp32 graph", path=src)
    stored = kept = 0
    worst = 0.0
    for i, t in enumerate(model.graph.initializer):
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(t)
        if arr.size < MIN_FP16_ELEMENTS or not np.all(np.isfinite(arr)) or np.abs(arr).max() > FP16_MAX:
            kept += 1
            continue
        half = arr.astype(np.float16)
        norm = float(np.linalg.norm(arr))
        if norm > 0:
            worst = max(worst, float(np.linalg.norm(half.astype(np.float32) - arr)) / norm)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(half, t.name))
        stored += 1
    set_metadata(model, {KEY_COMPACT: COMPACT_FORMAT})
    save_onnx(model, dst)
    return {"fp16_tensors": stored, "fp32_tensors": kept, "max_relative_rounding": worst,
            "bytes": Path(dst).stat().st_size}


def restore_compact(src: PathLike, dst: PathLike) -> Path:
    """Write the runnable fp32 graph of the compact graph ``src`` to ``dst``."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from covidedge.formats.onnxfile import load_onnx, save_onnx

    model = load_onnx(src)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(KEY_COMPACT) != COMPACT_FORMAT:
        raise IncompatibleModelError(f"not a compact graph (metadata {KEY_COMPACT} is "
                                     f"{props.get(KEY_COMPACT)!r}, expected {COMPACT_FORMAT!r})", path=src)
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT16:
            arr = numpy_helper.to_array(t).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
    for p in list(model.metadata_props):
        if p.key == KEY_COMPACT:
            model.metadata_props.remove(p)
    save_onnx(model, dst)
    return Path(dst)


__all__ = ["ShippedModel", "shipped_models", "models_dir", "get_shipped", "default_model", "cache_dir",
           "pack_compact", "restore_compact", "PACKAGE_DIR", "KEY_COMPACT", "COMPACT_FORMAT"]
