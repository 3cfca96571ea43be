"""Model registry: the networks by name, their named variants, and building a model from a spec.

Training, checkpoints and export refer to models by name ("xception", "resunet") plus keyword
arguments, so a checkpoint's ``ModelSpec`` is enough to rebuild the exact network. A *variant*
is a named size of a network, as data: its square input size in px and the constructor keyword
arguments (width), e.g. ``xception256`` or ``resunet128-small``; ``covidedge train --variant``
and the benchmarks use these instead of repeating flag sets.

This module is plain data until a network is built: torch and the network modules are imported
on first use, so listing models and variants (``--help``) costs nothing.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.spec import TASKS, ModelSpec

__all__ = ["ModelEntry", "ModelVariant", "VARIANTS", "DEFAULT_VARIANTS", "list_models", "get_entry",
           "model_task", "create_model", "build_from_spec", "list_variants", "get_variant"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the module and factory that build it, its task and default number of
    outputs."""

    name: str
    module: str
    task: str
    default_num_classes: int
    description: str

    @property
    def factory(self) -> Callable[..., Any]:
        """The factory function (imports the network module, and torch, on first use)."""
        return getattr(importlib.import_module(self.module), self.name)

    def options(self) -> Tuple[str, ...]:
        """Keyword arguments the factory accepts besides ``num_classes`` and ``in_chans``."""
        params = inspect.signature(self.factory).parameters
        return tuple(p for p in params if p not in ("num_classes", "in_chans"))


_REGISTRY: Dict[str, ModelEntry] = {
    "xception": ModelEntry("xception", "covidedge.models.xception", "classifier", 3,
                           "Xception classifier (COVID-19 / Non-COVID / Normal)"),
    "resunet": ModelEntry("resunet", "covidedge.models.resunet", "segmenter", 2,
                          "residual U-Net segmenter (lungs, infection)"),
}


@dataclass(frozen=True)
class ModelVariant:
    """A named size of a registered model: ``input_size`` is the square input in px, and
    ``model_kwargs`` the constructor arguments that set its width (and depth)."""

    name: str
    model: str
    input_size: int
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def task(self) -> str:
        return get_entry(self.model).task

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "model": self.model, "task": self.task,
                "input_size": self.input_size, "model_kwargs": dict(self.model_kwargs),
                "description": self.description}


def _variant(name, model, input_size, description, **kw) -> ModelVariant:
    return ModelVariant(name, model, input_size, MappingProxyType(kw), description)


#: The named variants, by task and then size. The first of each task is its default.
VARIANTS: Mapping[str, ModelVariant] = MappingProxyType({v.name: v for v in (
    _variant("xception256", "xception", 256,
             "full-size Xception (the paper's widths), the study's network", width_mult=1.0),
    _variant("xception256-small", "xception", 256,
             "the small Xception at the study's 256 px, the shipped classifier", width_mult=0.25),
    _variant("xception128-small", "xception", 128,
             "small fast classifier for CPU runs and benchmarks", width_mult=0.25),
    _variant("xception64-small", "xception", 64,
             "the small classifier at 64 px, for synthetic data", width_mult=0.25),
    _variant("resunet256", "resunet", 256,
             "full-size residual U-Net", base_width=32, depth=4),
    _variant("resunet256-b16", "resunet", 256,
             "residual U-Net at half width, the shipped segmenter", base_width=16, depth=4),
    _variant("resunet128-b16", "resunet", 128,
             "half-width U-Net at 128 px, the loss study's", base_width=16, depth=4),
    _variant("resunet128-small", "resunet", 128,
             "small fast segmenter for CPU runs", base_width=8, depth=3),
    _variant("resunet64-small", "resunet", 64,
             "the small segmenter at 64 px, for synthetic data", base_width=8, depth=3),
)})

#: The variant each task trains when none is named (its values are the training defaults).
DEFAULT_VARIANTS: Mapping[str, str] = MappingProxyType(
    {"classifier": "xception256", "segmenter": "resunet256"})


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


def list_variants(task: Optional[str] = None) -> List[str]:
    """Names of the variants (of ``task``'s models only, when given), in table order."""
    if task is not None and task not in TASKS:
        raise BadInputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return [n for n, v in VARIANTS.items() if task is None or v.task == task]


def get_variant(name: str, task: Optional[str] = None) -> ModelVariant:
    """The variant called ``name``; an unknown name, or one of another task than ``task``, is a
    BadInputError listing the names that fit."""
    known = list_variants(task)
    variant = VARIANTS.get(name) if isinstance(name, str) else None
    if variant is None or name not in known:
        what = f"{task} variant" if task else "model variant"
        other = (f" ({name!r} is a {variant.task} variant)" if variant is not None else "")
        raise BadInputError(f"unknown {what} {name!r}{other}; known: {', '.join(known)}",
                            hint="pick one of those, or set the sizes with explicit options")
    return variant


def create_model(name: str, num_classes: Optional[int] = None, in_chans: int = 1, **kw):
    """Build a registered model (a ``torch.nn.Module``) with fresh weights.

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


def build_from_spec(spec: ModelSpec):
    """Build the network a ModelSpec describes (fresh weights; load a state dict into it)."""
    entry = get_entry(spec.model_name)
    if entry.task != spec.task:
        raise IncompatibleModelError(
            f"spec says task {spec.task!r} but model {spec.model_name!r} is a {entry.task}",
            hint="check the checkpoint's spec")
    return create_model(spec.model_name, num_classes=len(spec.labels), in_chans=spec.in_chans,
                        **spec.model_kwargs)
