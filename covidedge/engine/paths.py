"""Where engines go: the build folder, default engine names, and the rule that a build never
overwrites another engine's files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from covidedge.backends import get
from covidedge.errors import BadInputError
from covidedge.formats.checkpoint import CHECKPOINT_SUFFIXES
from covidedge.formats.manifest import MANIFEST_SUFFIX, engine_path_for

#: Default folder for engines when no --out is given, and for the default engines.
DEFAULT_BUILD_DIR = Path("build")
#: File stems that say nothing about the model (a training run's best.pt); default engine names
#: prefix them with the model's folder name.
GENERIC_STEMS = ("best", "last", "model", "checkpoint")


def _strip_precision(stem: str) -> str:
    return re.sub(r"([._-](fp32|fp16|int8))+$", "", stem)


def default_engine_path(model, precision: str, backend: str, *, tensorrt_version: Optional[str] = None,
                        compute_capability: Optional[str] = None, build_dir=DEFAULT_BUILD_DIR) -> Path:
    """Where an engine goes when no --out is given: build/<model>.<precision>.<target>.<ext>.

    The backend names the file (its ``engine_name``): TensorRT engines name the TensorRT release
    and GPU architecture they are tied to (``cls.fp16.trt10.3.sm87.engine``) so engines of several
    machines can share a folder; ONNX Runtime and OpenVINO engines are ONNX files
    (``cls.fp16.ort.onnx``, ``cls.fp16.ov.onnx``). ``tensorrt_version`` is the version of the
    backend that builds it (only TensorRT's names carry it)."""
    name = Path(os.fspath(model)).name
    for suffix in (".onnx", *CHECKPOINT_SUFFIXES):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = _strip_precision(name) or "model"
    parent = Path(os.fspath(model)).resolve().parent.name
    if stem in GENERIC_STEMS and parent:
        stem = f"{parent}-{stem}"  # runs/cls/best.pt and runs/seg/best.pt must not share engines
    name = get(backend).engine_name(stem, precision, version=tensorrt_version,
                                    compute_capability=compute_capability)
    return Path(build_dir) / name


def refuse_foreign_file(path, own_engine) -> None:
    """BadInputError when ``path`` is a file that the manifest of another engine in its folder
    refers to (its engine or its source graph): a build never overwrites another model's files."""
    path = Path(path)
    if not path.exists():
        return
    for mpath in path.parent.glob(f"*{MANIFEST_SUFFIX}"):
        engine = engine_path_for(mpath)
        if engine.resolve() == Path(own_engine).resolve():
            continue
        try:
            opts = (json.loads(mpath.read_text()).get("build_options") or {})
        except (OSError, ValueError, AttributeError):
            continue
        refs = {engine.resolve()} | {Path(str(v)).resolve() for k, v in opts.items()
                                     if k in ("onnx", "model") and v}
        if path.resolve() in refs:
            raise BadInputError(f"would overwrite {path.name}, which the engine {engine.name} was built from "
                                "or is", path=path, hint="choose another --out")


__all__ = ["DEFAULT_BUILD_DIR", "GENERIC_STEMS", "default_engine_path", "refuse_foreign_file"]
