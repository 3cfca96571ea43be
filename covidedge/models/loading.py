"""A model rebuilt from a checkpoint (covidedge.formats.checkpoint): its spec names the
architecture, its state dict fills the weights."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from covidedge.errors import IncompatibleModelError
from covidedge.formats.checkpoint import read_checkpoint
from covidedge.models.registry import build_from_spec
from covidedge.spec import ModelSpec


def load_checkpoint(path, device: str = "cpu") -> Tuple[Any, ModelSpec, Dict[str, Any]]:
    """Rebuild the model from the checkpoint's spec, load its weights and return
    ``(model in eval mode on device, spec, meta)``. ``meta`` is the ``extra`` dict (train options,
    epoch, metrics, history, ...) plus ``format``, ``covidedge_version`` and ``path``."""
    payload = read_checkpoint(path, device=device)
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except IncompatibleModelError:
        raise
    except Exception as exc:
        raise IncompatibleModelError(f"checkpoint spec is invalid ({exc})", path=path,
                                     hint="the file is damaged; train or copy it again") from exc
    try:
        model = build_from_spec(spec)
    except Exception as exc:
        raise IncompatibleModelError(
            f"cannot rebuild model {spec.model_name!r} from the checkpoint spec ({exc})", path=path,
            hint="this covidedge version may not know the architecture; upgrade covidedge") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise IncompatibleModelError(
            f"weights do not fit the {spec.model_name} architecture in its spec: {detail[:200]}",
            path=path, hint="the spec and weights disagree; re-save the checkpoint") from exc
    model.to(device).eval()
    extra = payload.get("extra") or {}
    meta = dict(extra) if isinstance(extra, dict) else {}
    meta.update(format=payload["format"], covidedge_version=payload.get("covidedge_version"),
                path=str(path))
    return model, spec, meta


__all__ = ["load_checkpoint"]
