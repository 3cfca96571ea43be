"""ModelSpec: what a model is and how to feed it, carried by checkpoints, ONNX files and engines.

A spec travels as JSON: inside a checkpoint, in an ONNX model's ``metadata_props`` and in an
engine manifest, so every stage can check that it got the model it expects.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from covidedge.errors import BadInputError, IncompatibleModelError

TASKS = ("classifier", "segmenter")

#: Class labels of COVID-QU-Ex, in the order of the classifier's outputs.
CLASS_LABELS: Tuple[str, ...] = ("COVID-19", "Non-COVID", "Normal")
#: Channels of the segmenter's output, in order.
MASK_CHANNELS: Tuple[str, ...] = ("lungs", "infection")

# -- the vocabulary every layer shares: each list is defined here and only here ----------------
#: Precisions a graph or engine can carry.
PRECISIONS: Tuple[str, ...] = ("fp32", "fp16", "int8")
#: Backends that build engines (``build-engine``, manifests).
ENGINE_BACKENDS: Tuple[str, ...] = ("tensorrt", "onnxruntime", "openvino")
#: Backends that run models: the engine backends plus torch for checkpoints.
RUNNER_BACKENDS: Tuple[str, ...] = ENGINE_BACKENDS + ("torch",)
#: The choice that lets the file and the machine decide the backend.
AUTO = "auto"
#: ``--backend`` choices of build-engine, and of infer / bench / evaluate.
ENGINE_BACKEND_CHOICES: Tuple[str, ...] = (AUTO,) + ENGINE_BACKENDS
RUNNER_BACKEND_CHOICES: Tuple[str, ...] = (AUTO,) + RUNNER_BACKENDS
#: int8 calibration methods (``covidedge.export.calibrators``).
CALIBRATION_METHODS: Tuple[str, ...] = ("minmax", "entropy", "percentile")
#: Train images an int8 calibration reads unless told otherwise.
DEFAULT_CALIBRATION_COUNT = 500
#: Probability above which a segmenter pixel is in the mask, unless told otherwise.
MASK_THRESHOLD = 0.5
#: Mixed-precision choices for training.
AMP_MODES: Tuple[str, ...] = ("auto", "off", "bf16", "fp16")


#: Largest batch any covidedge call takes (a 256-px float32 batch of 1024 is 256 MiB).
MAX_BATCH = 1024


def as_size(size, what: str = "size") -> Tuple[int, int]:
    """``(height, width)`` from an int or a pair of positive whole numbers; anything else is a
    one-line BadInputError naming ``what``."""
    if isinstance(size, int) or type(size).__name__.startswith(("int", "uint")):
        size = (size, size)
    try:
        h, w = (int(v) for v in size)
        ok = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        ok, h, w = False, 0, 0
    if not ok or h <= 0 or w <= 0:
        raise BadInputError(f"{what}={size!r}, expected (height, width) in positive pixels")
    return h, w


def check_threshold(threshold) -> float:
    """A mask threshold as a float strictly between 0 and 1; anything else is a one-line
    BadInputError."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 < t < 1.0:
        raise BadInputError(f"threshold={threshold!r}, expected a probability between 0 and 1 "
                            "(exclusive)", hint=f"{MASK_THRESHOLD} is the usual choice")
    return t


def check_choice(kind: str, value, choices) -> None:
    """Refuse ``value`` unless it is one of ``choices``, with the one-line error every layer uses
    (exit code 3)."""
    if value not in choices:
        raise BadInputError(f"{kind} {value!r} is unknown; expected one of {', '.join(choices)}")

class Options:
    """Base of covidedge's option objects: frozen dataclasses whose fields carry the defaults and
    whose :meth:`validate` holds the rules, so a function takes one object instead of twenty
    keywords. ``Cls.of(options, **overrides)`` is what such a function does with its arguments."""

    @classmethod
    def of(cls, options=None, **overrides):
        """``options`` (default: all defaults) with ``overrides`` applied; an unknown keyword is a
        TypeError, as for a function that lacks the parameter."""
        from dataclasses import fields, replace

        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options is a {type(options).__name__}, expected {cls.__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r} (not a field of {cls.__name__})")
        made = replace(options, **overrides) if options is not None else cls(**overrides)
        made.validate()
        return made

    def validate(self) -> None:
        """Refuse values that cannot work together (BadInputError / UsageError); nothing by default."""

    def given(self):
        """The fields that differ from their defaults, by name."""
        from dataclasses import MISSING, fields

        out = {}
        for f in fields(self):
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else MISSING)
            value = getattr(self, f.name)
            if default is MISSING or value != default:
                out[f.name] = value
        return out


INPUT_NAME = "image"
OUTPUT_NAMES: Tuple[str, ...] = ("logits", "probabilities")

#: ONNX metadata key that holds the whole spec as JSON.
METADATA_KEY = "covidedge.spec"


@dataclass(frozen=True)
class ModelSpec:
    """Everything a runtime needs to feed a model and read its outputs.

    ``labels`` are class names for a classifier and mask channel names for a segmenter.
    Outputs are always ``logits`` and ``probabilities`` (softmax over classes for the
    classifier, sigmoid per mask channel for the segmenter).
    """

    task: str
    model_name: str
    labels: Tuple[str, ...]
    input_size: Tuple[int, int] = (256, 256)
    in_chans: int = 1
    preprocessing: str = "gray-unit-bilinear-v1"
    input_name: str = INPUT_NAME
    output_names: Tuple[str, ...] = OUTPUT_NAMES
    model_kwargs: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: classifier only: probabilities = softmax(logits / temperature), fitted on Val so the
    #: probabilities are calibrated; part of the graph, so every backend applies it
    temperature: float = 1.0

    def __post_init__(self):
        if self.task not in TASKS:
            raise IncompatibleModelError(f"unknown task {self.task!r}; expected one of {TASKS}")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "output_names", tuple(self.output_names))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        t = float(self.temperature)
        if not (math.isfinite(t) and t > 0) or (self.task != "classifier" and t != 1.0):
            raise IncompatibleModelError(
                f"temperature {self.temperature!r} is invalid; expected a positive number "
                "(and 1.0 for a segmenter)")
        object.__setattr__(self, "temperature", t)

    # -- shapes ---------------------------------------------------------------------------
    def input_shape(self, batch: Optional[int] = None) -> Tuple[Optional[int], int, int, int]:
        """NCHW input shape; ``batch=None`` stands for a dynamic batch axis."""
        return (batch, self.in_chans, *self.input_size)

    def output_semantics(self) -> Dict[str, str]:
        act = "sigmoid per mask channel"
        if self.task == "classifier":
            act = "softmax over classes" + (f" of logits / {self.temperature:g}"
                                            if self.temperature != 1.0 else "")
        return {self.output_names[0]: "logits", self.output_names[1]: f"probabilities ({act})"}

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if self.temperature == 1.0:  # specs without calibration read and hash as before
            del d["temperature"]
        d["labels"] = list(self.labels)
        d["input_size"] = list(self.input_size)
        d["output_names"] = list(self.output_names)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelSpec":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))

    def to_metadata(self) -> Dict[str, str]:
        """Key/value strings for ONNX ``metadata_props``: the full spec plus readable keys."""
        return {
            METADATA_KEY: self.to_json(),
            "covidedge.task": self.task,
            "covidedge.labels": ",".join(self.labels),
            "covidedge.input_size": "x".join(str(v) for v in self.input_size),
            "covidedge.preprocessing": self.preprocessing,
            "covidedge.outputs": json.dumps(self.output_semantics()),
        }

    @classmethod
    def from_metadata(cls, meta: Dict[str, str], source: object = None) -> "ModelSpec":
        if METADATA_KEY not in meta:
            raise IncompatibleModelError(
                f"no '{METADATA_KEY}' entry in the model metadata",
                path=source,
                hint="export the model with 'covidedge export' so it carries its spec",
            )
        return cls.from_json(meta[METADATA_KEY])

    # -- checks ---------------------------------------------------------------------------
    def require_task(self, task: str, source: object = None) -> None:
        """Raise IncompatibleModelError when this is not a model for ``task``."""
        if self.task != task:
            raise IncompatibleModelError(
                f"is a {self.task} model, but a {task} was expected", path=source,
                hint=f"pass it as --{self.task} instead",
            )


def classifier_spec(model_name: str = "xception", **kw) -> ModelSpec:
    return ModelSpec(task="classifier", model_name=model_name, labels=CLASS_LABELS, **kw)


def segmenter_spec(model_name: str = "resunet", **kw) -> ModelSpec:
    return ModelSpec(task="segmenter", model_name=model_name, labels=MASK_CHANNELS, **kw)
