"""Weights a training run starts from: ``--init-from`` (a checkpoint of the same network), and
how recorded options are compared (a resumed or reused run's with the stored ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from covidedge.errors import IncompatibleModelError, first_line

__all__ = ["load_start_weights", "same_option"]


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def same_option(a, b) -> bool:
    """Whether two recorded option values are the same (paths as strings, 2.0 as 2, tuples as
    lists): how a resumed or reused run's options are compared with the stored ones."""
    return _norm(a) == _norm(b)


def load_start_weights(model, spec, path) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """Start ``model`` from the weights of the checkpoint at ``path`` (``--init-from``), which must
    hold the same network (architecture, sizes, labels, input size); the training-only parts a
    run keeps in its ``last.pt`` (the classifier's mask head) come along when present. Returns
    (what the new checkpoints record about it: path, sha256, epoch; the training-only state to
    load once the task has attached its parts), or (None, {}) without ``path``."""
    if not path:
        return None, {}
    from covidedge.formats.checkpoint import checkpoint_sha256, read_checkpoint

    payload = read_checkpoint(path)
    theirs = payload.get("spec") or {}
    ours = spec.to_dict()
    keys = ("task", "model_name", "labels", "input_size", "in_chans", "model_kwargs")
    diff = [k for k in keys if not same_option(theirs.get(k), ours.get(k))]
    if diff:
        said = ", ".join(f"{k} {theirs.get(k)!r} (this run: {ours.get(k)!r})" for k in diff)
        raise IncompatibleModelError(f"--init-from checkpoint holds another network: {said}",
                                     path=path, hint="pass the variant and sizes it was trained "
                                     "with, or start from random weights")
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise IncompatibleModelError(f"--init-from weights do not fit the network: {first_line(e)}",
                                     path=path, hint="use a checkpoint written by covidedge train "
                                     "for the same variant") from None
    extra = payload.get("extra") or {}
    record = {"path": str(path), "sha256": checkpoint_sha256(path), "epoch": extra.get("epoch")}
    return record, extra.get("resume") or {}
