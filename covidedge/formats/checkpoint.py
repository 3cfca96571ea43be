"""Checkpoints: a model's weights together with the ModelSpec that rebuilds it.

A checkpoint is a ``torch.save``'d plain dict that ``torch.load(weights_only=True)`` accepts:
``format`` ("covidedge-checkpoint-v1"), ``spec`` (``ModelSpec.to_dict()``: architecture, labels,
preprocessing id, input size), ``state_dict``, ``covidedge_version`` and ``extra`` (training
options, epoch, metrics, history and, in ``last.pt``, the optimizer / scheduler / RNG state that
``--resume`` needs). Nothing in it is a pickled class, so loading never runs foreign code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from covidedge.errors import BadInputError, IncompatibleModelError, first_line
from covidedge.fileio import atomic_target, sha256_file
from covidedge.spec import ModelSpec

CHECKPOINT_FORMAT = "covidedge-checkpoint-v1"
#: File suffixes of a covidedge checkpoint.
CHECKPOINT_SUFFIXES = (".pt", ".pth")

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_SUFFIXES", "save_checkpoint", "read_checkpoint",
           "checkpoint_sha256", "to_plain", "with_temperature"]


def to_plain(value: Any) -> Any:
    """Turn ``value`` into what ``torch.load(weights_only=True)`` accepts: dicts with str/int keys,
    lists, tuples, str, int, float, bool, None and tensors (numpy arrays become lists, Paths strings)."""
    import numpy as np

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is needed to save anyway
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        # int keys stay ints: optimizer state dicts are keyed by parameter index
        return {(k if isinstance(k, (str, int)) and not isinstance(k, bool) else str(k)): to_plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [to_plain(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise BadInputError(f"checkpoint extra value of type {type(value).__name__} cannot be stored",
                        hint="store plain numbers, strings, lists, dicts or tensors")


def _bare_model(model):
    """The network whose weights are saved: unwraps an InferenceWrapper-style ``.model`` holder."""
    inner = getattr(model, "model", None)
    if type(model).__name__ == "InferenceWrapper" and inner is not None:
        return inner
    return model


def save_checkpoint(path, model, spec: ModelSpec, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model``'s weights and ``spec`` to ``path`` atomically (a temporary file, then a
    rename, so an interrupted run never leaves half a checkpoint). Returns the path."""
    import torch

    from covidedge import __version__

    if not isinstance(spec, ModelSpec):
        raise BadInputError(f"spec is a {type(spec).__name__}, expected a covidedge.spec.ModelSpec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = _bare_model(model)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.to_dict(),
        "state_dict": state,
        "covidedge_version": __version__,
        "extra": to_plain(dict(extra or {})),
    }
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path, device: str = "cpu") -> Dict[str, Any]:
    """Load and validate the raw checkpoint dict (no model is built). Raises BadInputError for a
    missing file and IncompatibleModelError for anything that is not a covidedge checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError("checkpoint file not found", path=path,
                            hint="pass the best.pt written by 'covidedge train'")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types: UnpicklingError, RuntimeError, EOFError
        first = first_line(exc)
        raise IncompatibleModelError(
            f"is not a readable covidedge checkpoint ({type(exc).__name__}: {first[:160]})",
            path=path, hint="pass a .pt file written by 'covidedge train'") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise IncompatibleModelError(
            f"is not a covidedge checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})",
            path=path, hint="pass a .pt file written by 'covidedge train'")
    for key in ("spec", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise IncompatibleModelError(f"checkpoint has no '{key}' entry", path=path,
                                         hint="the file is damaged; train or copy it again")
    return payload


def with_temperature(src, dst, temperature: float) -> Path:
    """Write a copy of the classifier checkpoint ``src`` to ``dst`` whose spec carries
    ``temperature`` (probabilities = softmax(logits / temperature), fitted on Val); the weights
    are unchanged. ``dst`` must not exist."""
    import torch

    from covidedge.fileio import refuse_existing

    payload = read_checkpoint(src)
    spec = ModelSpec.from_dict({**payload["spec"], "temperature": float(temperature)})
    if spec.task != "classifier":
        raise BadInputError("a temperature applies to a classifier's probabilities only", path=src)
    dst = Path(dst)
    refuse_existing(dst, what="checkpoint")
    payload["spec"] = spec.to_dict()
    with atomic_target(dst) as tmp:
        torch.save(payload, tmp)
    return dst


def checkpoint_sha256(path) -> str:
    """Hex sha256 of the checkpoint file's bytes (what exports and manifests record)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError("checkpoint file not found", path=path)
    return sha256_file(path)
