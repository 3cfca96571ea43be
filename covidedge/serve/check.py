"""Labels are checked wherever they travel: a written Triton repository against the spec embedded
in the networks it serves.

A repository carries the class labels (and segmenter channels) in several places: each
network's config parameters, the postprocess step's config (which names the class it answers),
the ensemble's ``covidedge`` parameter (which the client reads to name the probabilities) and
``covidedge-repository.json``. Any of them can be edited by hand, and a reordered list makes the
server call a COVID-19 X-ray "Normal" without a word. :func:`check_repository_labels` compares
them all with the spec the network file itself holds (the ONNX graph's metadata, or a TensorRT
plan's tamper-evident manifest), as loading an engine compares its manifest with its graph;
``covidedge serve`` runs it before starting a server or printing the container command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from covidedge.errors import IncompatibleModelError
from covidedge.serve import config as cfg
from covidedge.serve.repository import ENSEMBLE, REPOSITORY_FILE, read_repository

#: What each task's list is called in the configs and the facts.
_KEYS = {"classifier": "labels", "segmenter": "channels"}


def _params(folder: Path) -> Dict[str, str]:
    path = folder / "config.pbtxt"
    try:
        config = cfg.message_to_dict(cfg.parse_pbtxt(path.read_text(encoding="utf-8"), source=path))
    except OSError as exc:
        raise IncompatibleModelError(f"cannot read the model config ({exc.strerror or exc})", path=path,
                                     hint="rewrite the repository with 'covidedge triton-repo'") from exc
    params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    params["__default_model_filename"] = config.get("default_model_filename", "")
    return params


def _list(text: str, where: str, path: Path) -> Optional[List[str]]:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise IncompatibleModelError(f"{where} is not a JSON list", path=path,
                                     hint="rewrite the repository with 'covidedge triton-repo'")
    return [str(v) for v in value]


def embedded_labels(network_file: Path) -> List[str]:
    """The labels (classifier) or channels (segmenter) of the spec a served network file holds:
    its engine manifest's spec when it has a manifest, else its ONNX metadata."""
    from covidedge.formats.manifest import EngineManifest, manifest_path_for
    from covidedge.formats.onnxfile import read_onnx_metadata
    from covidedge.spec import ModelSpec

    manifest = manifest_path_for(network_file)
    if manifest.is_file():
        return [str(v) for v in (EngineManifest.read(manifest).spec or {}).get("labels", [])]
    return list(ModelSpec.from_metadata(read_onnx_metadata(network_file), source=network_file).labels)


def check_repository_labels(repository) -> Dict[str, List[str]]:
    """``{task: labels}`` of the networks a repository serves, after checking that every place
    the repository names them says the same, in the same order; IncompatibleModelError listing
    each place that differs otherwise."""
    repo = Path(os.fspath(repository))
    facts = read_repository(repo)
    # a model folder that is missing fails to load in Triton on its own; what exists is checked
    ensemble = _params(repo / ENSEMBLE) if (repo / ENSEMBLE / "config.pbtxt").is_file() else {}
    try:
        served = json.loads(ensemble.get("covidedge") or "{}")
    except ValueError:
        served = {}
    post = _params(repo / "postprocess") if (repo / "postprocess" / "config.pbtxt").is_file() else {}
    found: Dict[str, List[str]] = {}
    wrong: List[str] = []
    for task in sorted(facts.get("models") or {}):
        key = _KEYS.get(task)
        if key is None or not (repo / task / "config.pbtxt").is_file():
            continue
        params = _params(repo / task)
        file_name = params.get("model_file") or params.get("__default_model_filename")
        network = repo / task / "1" / file_name
        truth = embedded_labels(network)
        found[task] = truth
        places = {
            f"{task}/config.pbtxt parameter 'labels'": _list(params.get("labels", ""), "labels", repo / task),
            f"postprocess/config.pbtxt parameter '{key}'": _list(post.get(key, ""), key, repo / "postprocess"),
            f"{ENSEMBLE}/config.pbtxt parameter 'covidedge' ({key})": served.get(key),
            f"{REPOSITORY_FILE} ({key})": facts.get(key),
        }
        for where, value in places.items():
            if value is not None and [str(v) for v in value] != truth:
                wrong.append(f"{where} says {list(value)}")
    if wrong:
        truths = "; ".join(f"{t} {v}" for t, v in found.items())
        raise IncompatibleModelError(
            f"labels in the repository differ from the spec embedded in the models it serves "
            f"({truths}): {'; '.join(wrong)}", path=repo,
            hint="a hand-edited repository would name the wrong class; rewrite it with 'covidedge triton-repo'")
    return found


__all__ = ["check_repository_labels", "embedded_labels"]
