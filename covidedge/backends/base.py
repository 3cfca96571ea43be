"""The one Runner interface every backend implements (TensorRT, ONNX Runtime, OpenVINO, torch).

A runner is created cheaply, does its heavy work in ``activate()`` and frees it in
``deactivate()``; it is also a context manager. ``infer`` takes an NCHW float32 batch (or a
``{input_name: array}`` feed) and returns ``{output_name: array}``. Input checks name the
tensor, what arrived and what was expected.

:func:`infer_fitted` fits a batch of any size to a runner's batch range for every backend, and
:class:`Backend` is what one row of the backend table (:mod:`covidedge.backends`) offers: its
name, what it needs and builds, its build, self-check, runners and file suffix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure
from covidedge.spec import PRECISIONS, ModelSpec

Feed = Union[np.ndarray, Mapping[str, np.ndarray]]


class Runner:
    """Base class. Subclasses set ``backend`` and implement ``_activate``, ``_infer``,
    ``_deactivate``; they may narrow the batch range with ``min_batch`` / ``max_batch``."""

    backend: str = "base"

    def __init__(self, spec: ModelSpec, source: object, precision: str = "fp32",
                 min_batch: int = 1, max_batch: Optional[int] = None):
        self.spec = spec
        self.source = str(source)
        self.precision = precision
        self.min_batch = int(min_batch)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.is_active = False
        #: Milliseconds of the last ``infer`` call, per stage the backend can see
        #: (always "total"; GPU backends add "h2d", "compute", "d2h").
        self.last_timings_ms: Dict[str, float] = {}

    # -- life cycle -----------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference ------------------------------------------------------------------------
    def check_input(self, feed: Feed) -> np.ndarray:
        """Return the input batch as a C-contiguous float32 NCHW array, or raise BadInputError
        naming the tensor, what arrived and what was expected."""
        name = self.spec.input_name
        if isinstance(feed, Mapping):
            extra = sorted(set(feed) - {name})
            if name not in feed or extra:
                raise BadInputError(
                    f"feed has tensors {sorted(feed)}, expected exactly ['{name}']",
                    path=self.source)
            x = feed[name]
        else:
            x = feed
        if not isinstance(x, np.ndarray):
            raise BadInputError(f"input '{name}' is a {type(x).__name__}, expected a numpy array",
                                path=self.source)
        expected = self.spec.input_shape()
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(expected[1:]):
            want = "(N, " + ", ".join(str(v) for v in expected[1:]) + ")"
            raise BadInputError(f"input '{name}' has shape {tuple(x.shape)}, expected {want}",
                                path=self.source, hint="preprocess images with covidedge.data.preprocess")
        if x.dtype != np.float32:
            if not np.issubdtype(x.dtype, np.floating):
                raise BadInputError(f"input '{name}' has dtype {x.dtype}, expected float32",
                                    path=self.source)
            x = x.astype(np.float32)
        n = x.shape[0]
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            hi = "" if self.max_batch is None else str(self.max_batch)
            raise BadInputError(
                f"input '{name}' has batch {n}, this model accepts batch {self.min_batch}..{hi}",
                path=self.source, hint="split the batch or rebuild with a larger --max-batch")
        if not np.isfinite(x).all():
            raise BadInputError(f"input '{name}' contains NaN or infinite values", path=self.source)
        return np.ascontiguousarray(x)

    def infer(self, feed: Feed) -> Dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeFailure("runner is not active; call activate() or use it in a 'with' block",
                                 path=self.source)
        x = self.check_input(feed)
        t0 = time.perf_counter()
        out = self._infer(x)
        total = (time.perf_counter() - t0) * 1e3
        timings = dict(getattr(self, "_stage_ms", {}) or {})
        timings["total"] = total
        self.last_timings_ms = timings
        return out

    @property
    def compute_precision(self) -> str:
        """The precision it computes in, as reports name it: its graph's (``precision``), unless
        the runtime computes an fp32 graph in another (an OpenVINO engine built for bf16)."""
        return self.precision

    def describe(self) -> Dict[str, Any]:
        """What this runner is, for reports: backend, precision (the graph's; ``compute_precision``
        the arithmetic's), device and settings."""
        return {"backend": self.backend, "precision": self.precision, "compute_precision": self.compute_precision,
                "source": self.source, "task": self.spec.task, "batch_range": [self.min_batch, self.max_batch]}

    # -- to implement ---------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


# -- shared by every backend -----------------------------------------------------------------
def infer_fitted(runner: Runner, batch: np.ndarray) -> Dict[str, np.ndarray]:
    """``runner.infer`` for a batch of any size: it runs in pieces of at most
    ``runner.max_batch`` images, and a piece below ``runner.min_batch`` (a fixed-batch engine)
    is padded up to it with copies of its last image (an image like the others, never a blank
    one a model may treat oddly). The padding is dropped from the outputs, which come back
    joined in order along the batch axis, one row per image of ``batch``."""
    n = int(batch.shape[0])
    lo = max(1, int(getattr(runner, "min_batch", 1) or 1))
    hi = getattr(runner, "max_batch", None)
    step = n if hi is None else max(1, int(hi))
    if n == 0 or lo <= n <= step:  # as it is (an empty batch: the runner says what it accepts)
        return runner.infer(batch)
    pieces = []
    for i in range(0, n, step):
        x = batch[i:i + step]
        m = int(x.shape[0])
        if m < lo:
            x = np.concatenate([x, np.repeat(x[-1:], lo - m, axis=0)], axis=0)
        pieces.append({k: np.asarray(v)[:m] for k, v in runner.infer(x).items()})
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces], axis=0) for k in pieces[0]}


@dataclass
class SourceGraph:
    """The precision-bearing ONNX graph a build reads once: its spec, metadata, precision, opset,
    I/O and the optimization profile's (min, opt, max) NCHW shapes."""

    path: Path
    spec: ModelSpec
    meta: Dict[str, str]
    precision: str
    opset: Optional[int]
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    shapes: Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


@dataclass
class BuiltEngine:
    """What a backend's ``build`` wrote: the candidate engine file (accepted or deleted by the
    backend's ``self_check``), its I/O, notes, the manifest's device facts and build options."""

    candidate: Path
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)
    device: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)


def take_options(options: Mapping[str, Any], allowed, what: str, source) -> Dict[str, Any]:
    """The options of ``options`` that ``allowed`` names (None values dropped); any other given
    option is refused by name, never dropped."""
    extra = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if extra:
        raise BadInputError(f"option{'s' if len(extra) > 1 else ''} {', '.join(extra)} do"
                            f"{'' if len(extra) > 1 else 'es'} not apply to {what}", path=source,
                            hint=f"{what} takes: {', '.join(allowed) or 'no options'}")
    return {k: v for k, v in options.items() if k in allowed and v is not None}


def refuse_differences(manifest, engine_path, diffs: List[str]) -> None:
    """Raise IncompatibleModelError when ``diffs`` (what differs between the machine an engine
    was built for and this one) is not empty, with the command that rebuilds it here."""
    if diffs:
        from covidedge.formats.manifest import rebuild_command

        raise IncompatibleModelError(
            f"engine was built for another machine: {'; '.join(diffs)}", path=engine_path,
            hint=f"rebuild it here with: {rebuild_command(manifest, engine_path)}")


class Backend:
    """One row of the backend table (:mod:`covidedge.backends`): everything the layers above
    know about a backend, so none of them branches on its name. Each ``backends/<name>`` module
    defines one instance, ``BACKEND``. Heavy imports happen inside the methods only."""

    #: Name in manifests, ``--backend`` and reports; how messages name it.
    name: str = ""
    title: str = ""
    #: Python modules it needs to run (found without importing them) and to build its engines.
    requires: Tuple[str, ...] = ()
    build_requires: Tuple[str, ...] = ()
    install_hint: str = ""
    #: Whether it builds engines, the precisions and the devices ("cpu", "gpu") they run on.
    builds: bool = True
    precisions: Tuple[str, ...] = PRECISIONS
    targets: Tuple[str, ...] = ("cpu",)
    #: Engine file suffix (after ``<model>.<precision>``) and what an engine is called.
    suffix: str = ".onnx"
    artifact: str = "model"
    #: Build options only this backend takes (others refuse them), Q/DQ placement and int8
    #: activations of the graphs it builds from a checkpoint (the first is "auto").
    build_options: Tuple[Tuple[str, str], ...] = ()
    qdq_placement: str = "onnxruntime"
    int8_activations: Tuple[str, ...] = ("int8", "uint8")
    #: Its version is read by importing it (probe_machine(use_backends=True)).
    probe_backends: bool = False
    #: Manifest ``device`` keys taken from the machine probe.
    device_keys: Tuple[str, ...] = ("cpu", "cpu_cores", "arch")
    #: Runner options beyond the path (anything else is refused by name).
    runner_options: Tuple[str, ...] = ()
    #: The runner option that caps CPU threads, or a note saying threads do not apply.
    thread_option: Optional[str] = None
    threads_note: Optional[str] = None
    #: Triton: the targets that serve its models, the model file name, the gpu-target config keys
    #: and the refusal (message, hint) on a target that cannot serve it.
    triton_targets: Tuple[str, ...] = ("cpu", "gpu")
    triton_file: str = "model.onnx"
    triton_gpu_config: Dict[str, str] = {"backend": "onnxruntime"}
    triton_refusal: Tuple[str, str] = ("", "")
    #: Its engines are ONNX files carrying their spec, which must equal the manifest's.
    embeds_spec: bool = False
    #: Precision forms this backend offers the autotuner (covidedge.engine.autotune), fastest
    #: guess first: a flavour of a model's Val table ("fp32", "fp16", "int8-u8", "int8-s8") or a
    #: compute mode of a graph (OpenVINO's "bf16" runs the fp32 graph with bf16 arithmetic).
    autotune_forms: Tuple[str, ...] = ()

    def form_graph(self, form: str) -> str:
        """The graph flavour (a key of a model's Val table) that ``form`` is built from."""
        return form

    def form_options(self, form: str) -> Dict[str, Any]:
        """Build options (BuildOptions fields) that ``form`` needs beyond its graph."""
        return {}

    def available(self) -> bool:
        """Whether this machine can run it, found without importing anything."""
        from covidedge.machine import module_present

        return all(module_present(m) for m in self.requires)

    def can_build(self) -> bool:
        from covidedge.machine import module_present

        return all(module_present(m) for m in self.build_requires)

    # -- engines ----------------------------------------------------------------------------
    def engine_name(self, stem: str, precision: str, version: Optional[str] = None,
                    compute_capability: Optional[str] = None) -> str:
        return f"{stem}.{precision}{self.suffix}"

    def build(self, graph: SourceGraph, out: Path, options: Mapping[str, Any], machine: Mapping[str, Any],
              say: Callable[[str], None]) -> BuiltEngine:
        raise NotImplementedError

    def self_check(self, built: BuiltEngine, manifest, onnx_path, batch: int, out) -> Dict[str, Any]:
        raise NotImplementedError

    def describe_build(self, version: str, precision: str, batch: Tuple[int, int], seconds: float,
                       device: str) -> str:
        lo, hi = batch
        return (f"{self.title} {version} {precision} {self.artifact} (CPU), batch {lo}..{hi}, "
                f"built in {seconds:.1f} s")

    def announce_notes(self) -> bool:
        """Whether a build prints its notes (stated, never silent)."""
        return False

    # -- the machine ------------------------------------------------------------------------
    def machine_differences(self, manifest, machine: Mapping[str, Any]) -> List[str]:
        """What differs between the machine ``manifest``'s engine was built for and ``machine``:
        by default its runtime must be installed and no older (major.minor) than the build's."""
        from covidedge.formats.manifest import parse_version

        built, here = manifest.backend_version, machine.get(self.name)
        if not here:
            return [f"{self.title}: {self.built_with} {built}, {self.title} is not installed here"]
        if parse_version(here)[:2] < parse_version(built)[:2]:
            return [f"{self.title} version: {self.built_with} {built}, here {here} (older than the build)"]
        return []

    #: How compatibility messages say what was built: "engine built with" (its version follows).
    built_with: str = "engine built with"

    def require_compatible(self, manifest, engine_path, machine: Optional[Mapping[str, Any]] = None) -> None:
        """Raise IncompatibleModelError listing what differs from this machine (probed when not
        given) and the command that rebuilds the engine here."""
        if machine is None:
            from covidedge.machine import probe_machine

            machine = probe_machine(use_backends=self.probe_backends)
        refuse_differences(manifest, engine_path, self.machine_differences(manifest, machine))

    # -- running ----------------------------------------------------------------------------
    def open_engine(self, path: Path, manifest, requested: str, options: Mapping[str, Any]) -> Runner:
        """A runner on an engine this backend built (after ``manifest`` was checked against the
        machine); ``requested`` is the backend asked for ("auto" or this one)."""
        raise NotImplementedError

    def open_onnx(self, path: Path, options: Mapping[str, Any]) -> Runner:
        raise IncompatibleModelError(f"is an ONNX graph; {self.name} does not run it", path=path)

    def open_checkpoint(self, path: Path, options: Mapping[str, Any]) -> Runner:
        raise IncompatibleModelError(f"is a training checkpoint; it runs on torch, not {self.name}", path=path,
                                     hint=f"build an engine first: covidedge build-engine {path}")

    def refuse_engine(self, path: Path, manifest, requested: str) -> None:
        """Raise IncompatibleModelError: this backend's engine cannot run on ``requested``."""
        raise IncompatibleModelError(f"is a {self.title} engine, not for {requested}", path=path)

    def threads(self, threads: Optional[int]):
        """A context in which the backend uses ``threads`` process-wide (torch); a no-op else."""
        import contextlib

        return contextlib.nullcontext()


__all__ = ["Feed", "Runner", "infer_fitted", "Backend", "SourceGraph", "BuiltEngine", "take_options",
           "refuse_differences"]
