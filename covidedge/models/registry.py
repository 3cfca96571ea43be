"""Model registry: build models by name or from a ModelSpec, and wrap them for export.

Training, checkpoints and export refer to models by name ("xception", "resunet") plus keyword
arguments, so a checkpoint's ``ModelSpec`` is enough to rebuild the exact network.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from covidedge.errors import IncompatibleModelError
from covidedge.models.resunet import resunet
from covidedge.models.xception import xception
from covidedge.spec import TASKS, ModelSpec


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory, task and default number of outputs."""

    name: str
    factory: Callable[..., nn.Module]
    task: str
    default_num_classes: int
    description: str

    def options(self) -> Tuple[str, ...]:
        """Keyword arguments the factory accepts besides ``num_classes`` and ``in_chans``."""
        params = inspect.signature(self.factory).parameters
        return tuple(p for p in params if p not in ("num_classes", "in_chans"))


_REGISTRY: Dict[str, ModelEntry] = {
    "xception": ModelEntry("xception", xception, "classifier", 3,
                           "Xception classifier (COVID-19 / Non-COVID / Normal)"),
    "resunet": ModelEntry("resunet", resunet, "segmenter", 2,
                          "residual U-Net segmenter (lungs, infection)"),
}


def list_models() -> List[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``, or IncompatibleModelError listing the known names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise IncompatibleModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def model_task(name: str) -> str:
    """The task ("classifier" or "segmenter") of the registered model ``name``."""
    return get_entry(name).task


def create_model(name: str, num_classes: Optional[int] = None, in_chans: int = 1,
                 **kw) -> nn.Module:
    """Build a registered model with fresh weights.

    ``num_classes`` defaults to the model's task (3 classes for xception, 2 mask channels for
    resunet). Other keyword arguments go to the model (xception: width_mult, drop_rate;
    resunet: base_width, depth); an unknown one is an error, never silently ignored.
    """
    entry = get_entry(name)
    unknown = sorted(set(kw) - set(entry.options()))
    if unknown:
        raise IncompatibleModelError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(entry.options())}")
    if num_classes is None:
        num_classes = entry.default_num_classes
    return entry.factory(num_classes=num_classes, in_chans=in_chans, **kw)


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Build the network a ModelSpec describes (fresh weights; load a state dict into it)."""
    entry = get_entry(spec.model_name)
    if entry.task != spec.task:
        raise IncompatibleModelError(
            f"spec says task {spec.task!r} but model {spec.model_name!r} is a {entry.task}",
            hint="check the checkpoint's spec")
    return create_model(spec.model_name, num_classes=len(spec.labels), in_chans=spec.in_chans,
                        **spec.model_kwargs)


class InferenceWrapper(nn.Module):
    """Wrap a model so forward(x) returns ``(logits, probabilities)``: softmax over classes
    (dim 1) for a classifier, a sigmoid per mask channel for a segmenter. This is the module
    that gets exported to ONNX, with outputs named "logits" and "probabilities"."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        if task not in TASKS:
            raise IncompatibleModelError(f"unknown task {task!r}; expected one of {TASKS}")
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        if self.task == "classifier":
            probabilities = torch.softmax(logits, dim=1)
        else:
            probabilities = torch.sigmoid(logits)
        return logits, probabilities
