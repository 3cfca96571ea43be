"""Build a deployable engine from a checkpoint or a precision-bearing ONNX graph.

Where TensorRT is installed the result is a TensorRT plan; elsewhere an ONNX Runtime engine
(the same graph optimised offline), so every machine can build and run something; OpenVINO on
request. Either way the engine is written with its manifest (see covidedge.formats.manifest).

This module holds the options (:class:`BuildOptions`) and the orchestration: it checks what was
asked for, exports a checkpoint first (covidedge.export), reads the graph once, and hands the
graph to its backend's row of the table in covidedge.backends (``build``, then ``self_check``
against ONNX Runtime on the same graph once the manifest exists). Nothing here branches on a
backend's name. Engine names and the build folder are in :mod:`covidedge.engine.paths`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from covidedge import backends
from covidedge.backends.base import SourceGraph
from covidedge.engine.paths import default_engine_path, refuse_foreign_file
from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError, UsageError
from covidedge.fileio import refuse_existing, sha256_file
from covidedge.formats.checkpoint import CHECKPOINT_SUFFIXES
from covidedge.formats.manifest import EngineManifest, manifest_path_for
from covidedge.formats.onnxfile import (KEY_CALIBRATION_SHA, KEY_PRECISION, graph_opset, graph_precision,
                                        graph_tensors, load_onnx)
from covidedge.machine import describe_device, module_present, package_version, probe_machine
from covidedge.progress import note
from covidedge.spec import AUTO, CALIBRATION_METHODS, PRECISIONS, ModelSpec, Options, check_choice


# -- result ----------------------------------------------------------------------------------
@dataclass
class BuildResult:
    """What a build produced: engine and manifest paths, the manifest, the backend and a note."""

    engine_path: Path
    manifest_path: Path
    manifest: EngineManifest
    backend: str
    note: str

    def to_dict(self) -> Dict[str, Any]:
        return {"engine": str(self.engine_path), "manifest": str(self.manifest_path),
                "backend": self.backend, "note": self.note, "details": self.manifest.to_dict()}


# -- plain decisions (tested on any machine) -------------------------------------------------
def validate_batch_range(min_batch, opt_batch, max_batch) -> Tuple[int, int, int]:
    """Check 1 <= min <= opt <= max (whole numbers) and return them as ints."""
    vals = []
    for name, v in (("min", min_batch), ("opt", opt_batch), ("max", max_batch)):
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise BadInputError(f"--{name}-batch {v!r} is not a whole number") from None
        if iv != v or iv < 1:
            raise BadInputError(f"--{name}-batch {v!r} must be a whole number >= 1")
        vals.append(iv)
    lo, opt, hi = vals
    if not lo <= opt <= hi:
        raise BadInputError(
            f"batch range --min-batch {lo} --opt-batch {opt} --max-batch {hi} is not ordered; "
            "expected min <= opt <= max", hint="for example --min-batch 1 --opt-batch 1 --max-batch 8")
    return lo, opt, hi


def resolve_backend(backend: str, tensorrt_present: Optional[bool] = None,
                    pycuda_present: Optional[bool] = None) -> str:
    """'auto' -> the first backend of the table's preference order whose modules are installed
    (TensorRT with pycuda, else ONNX Runtime). An explicit backend that cannot build here is an
    error (never a quiet fallback). ``tensorrt_present`` / ``pycuda_present`` stand for what a
    caller found already; None asks the machine."""
    told = {"tensorrt": tensorrt_present, "pycuda": pycuda_present}

    def present(module: str) -> bool:
        return module_present(module) if told.get(module) is None else bool(told[module])

    return backends.resolve(backend, present).name


def resolve_precision(requested: Optional[str], graph: str, source: object = None) -> str:
    """The precision to build: the graph's. A requested precision that contradicts it is refused."""
    if graph not in PRECISIONS:
        raise IncompatibleModelError(f"graph precision {graph!r} is unknown", path=source)
    if requested is None or requested == graph:
        return graph
    check_choice("precision", requested, PRECISIONS)
    raise BadInputError(
        f"this ONNX graph is {graph} but --precision {requested} was asked for; the precision is in "
        "the graph", path=source,
        hint=f"drop --precision to build it as {graph}, or build from the checkpoint with "
             f"--precision {requested}")


def check_options_for_backend(backend: str, *, fell_back: bool = False, **given_options) -> None:
    """Refuse build options that the chosen backend does not take (TensorRT's, for an ONNX Runtime
    or OpenVINO build): never ignore them. ``given_options`` are BuildOptions fields."""
    chosen = backends.get(backend)
    own = {key for key, _ in chosen.build_options}
    given, owners = [], []
    for other in backends.engine_backends():
        for key, flag in other.build_options:
            value = given_options.get(key)
            if key not in own and value is not None and value is not False and flag not in given:
                given.append(flag)
                owners.append(other.title)
    if given:
        owner = owners[0]
        why = f" ({owner} is not installed here)" if fell_back else ""
        raise UsageError(
            f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to {owner} engines only, "
            f"but this build is for {chosen.title}{why}",
            hint=f"drop {', '.join(given)}" + (f", or install {owner}" if fell_back else ""))


def profile_shapes(input_shape: Sequence, min_batch: int, opt_batch: int, max_batch: int,
                   expected_chw: Optional[Sequence[int]] = None, source: object = None):
    """(min, opt, max) NCHW shapes of the one optimization profile over the batch axis.

    ``input_shape`` is the graph's input shape, its batch dimension -1 / None / a name when
    dynamic. A graph with a fixed batch B allows only min = opt = max = B."""
    if len(input_shape) != 4:
        raise IncompatibleModelError(f"graph input has shape {list(input_shape)}; expected NCHW (4 dims)",
                                     path=source)
    n, *chw = input_shape
    if any(not isinstance(d, int) or d <= 0 for d in chw):
        raise IncompatibleModelError(f"graph input has shape {list(input_shape)}; only the batch axis may "
                                     "be dynamic", path=source)
    if expected_chw is not None and tuple(chw) != tuple(expected_chw):
        raise IncompatibleModelError(f"graph input is {tuple(chw)} (C, H, W) but its spec says "
                                     f"{tuple(expected_chw)}", path=source)
    if isinstance(n, int) and n > 0 and not (min_batch == opt_batch == max_batch == n):
        raise BadInputError(
            f"graph has a fixed batch of {n}, batch range {min_batch}..{max_batch} (opt {opt_batch}) "
            "was asked for", path=source,
            hint=f"pass --min-batch {n} --opt-batch {n} --max-batch {n}, or re-export with a dynamic batch")
    return ((min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))


#: Activation type for int8 ONNX Runtime CPU engines. benchmarks/compare_backends.py
#: --int8-activations measured unsigned asymmetric activations (u8s8) 1.2-3.8x faster than signed
#: symmetric ones (s8s8) for both models on an x86 CPU with ONNX Runtime 1.32 (see
#: benchmarks/results/); ONNX Runtime's CPU kernels are built around u8 activations. Each
#: backend lists the activations it takes, its "auto" choice first.
CPU_INT8_ACTIVATIONS = "uint8"
INT8_ACTIVATIONS = ("auto", "int8", "uint8")


def resolve_int8_activations(requested: str, backend: str) -> str:
    """"auto" -> the backend's first choice (signed int8 for TensorRT, which takes symmetric s8
    Q/DQ only, and OpenVINO; the measured faster :data:`CPU_INT8_ACTIVATIONS` for ONNX Runtime);
    an activation type the backend does not take ("uint8" for TensorRT) is refused."""
    if requested not in INT8_ACTIVATIONS:
        raise BadInputError(f"int8 activations {requested!r} unknown; expected one of {', '.join(INT8_ACTIVATIONS)}")
    row = backends.get(backend)
    if requested == AUTO:
        return row.int8_activations[0]
    if requested not in row.int8_activations:
        raise BadInputError(f"{row.title} takes signed symmetric int8 activations only",
                            hint=f"use --int8-activations int8 (or auto) for {row.title} engines")
    return requested


def _calibration_sha(meta: Dict[str, str], calibration=None) -> Optional[str]:
    sha = meta.get(KEY_CALIBRATION_SHA)
    if sha:
        return sha
    return getattr(calibration, "sha256", None) if calibration is not None else None


def say(progress: bool, text: str) -> None:
    """The one way a build reports progress and notes: a line on stderr when ``progress``,
    nothing otherwise (covidedge.progress.note)."""
    note(progress, text)


def describe_build(backend: str, version: str, precision: str, batch: Tuple[int, int], seconds: float,
                   device: str) -> str:
    """The one-line summary of a build: 'OpenVINO 2026.4.1 fp32 model (CPU), batch 1..8, built
    in 0.4 s', or for TensorRT the GPU it is tied to."""
    return backends.get(backend).describe_build(version, precision, batch, seconds, device)


def _export_checkpoint(checkpoint: Path, onnx_out: Path, precision: str, calibration, calib_method,
                       calib_count, progress: bool, activations: str = "int8",
                       qdq_placement: str = "onnxruntime", calib_out: Optional[Path] = None) -> None:
    """Export a checkpoint to a precision-bearing ONNX graph with covidedge.export (needs torch),
    at the default opset (covidedge.export.onnx.DEFAULT_OPSET, which every TensorRT parses).
    int8 calibration (a CalibrationSet, a calibration manifest or a dataset folder) is resolved
    there, so the export and this builder pick the same images; ``qdq_placement`` places the
    Q/DQ nodes for the engine's backend (covidedge.export.int8.QDQ_PLACEMENTS)."""
    try:
        from covidedge.export import export_model
        from covidedge.export.calibrators import DEFAULT_METHOD
    except ImportError as exc:
        raise MissingDependencyError(f"exporting a checkpoint needs covidedge.export and torch ({exc})",
                                     path=checkpoint,
                                     hint="pip install 'covidedge[train]', or pass an exported .onnx") from exc
    kwargs: Dict[str, Any] = {"precision": precision}
    if precision == "int8":
        if calibration is None:
            raise BadInputError("an int8 engine from a checkpoint needs calibration images", path=checkpoint,
                                hint="pass --calib-data DIR (a COVID-QU-Ex folder or a calibration manifest)")
        kwargs.update(calibration=calibration, method=calib_method or DEFAULT_METHOD,
                      activation_type=activations, symmetric_activations=activations == "int8",
                      qdq_placement=qdq_placement)
        if calib_count is not None:
            kwargs["calib_count"] = int(calib_count)
        if calib_out is not None:
            kwargs["calib_out"] = calib_out
    say(progress, f"exporting {checkpoint} to {precision} ONNX: {onnx_out}")
    # the build's own intermediates, named after its engine (refuse_foreign_file guards others')
    export_model(checkpoint, onnx_out, overwrite=True, **kwargs)


@dataclass(frozen=True)
class BuildOptions(Options):
    """How to build an engine, with its defaults; :meth:`check` holds every rule that needs no
    file and :meth:`check_for` those that depend on the model file (the CLI builds one from
    flags, the API from keywords).

    ``precision`` picks the export precision for a checkpoint (default fp32); for an ONNX graph
    it is read from the graph and a contradicting value is refused. ``calibration`` (int8 from a
    checkpoint only) is a CalibrationSet, a calibration manifest or a dataset folder
    (``calib_count`` images, ``calib_method`` minmax | entropy | percentile). Batch sizes are
    images; ``workspace_mib`` is MiB. ``int8_activations`` (int8 from a checkpoint): "int8"
    (signed, symmetric: what TensorRT takes), "uint8" (unsigned, asymmetric: ONNX Runtime CPU
    engines only) or "auto" (see :func:`resolve_int8_activations`). A TensorRT build clears TF32
    (fp32 layers compute in fp32) unless ``allow_tf32``; ``workspace_mib``, ``timing_cache``,
    ``dla_core``, ``version_compatible`` and ``allow_tf32`` are TensorRT's own;
    ``inference_precision`` (f32, bf16 or f16 compute of an fp32 graph) is OpenVINO's."""

    precision: Optional[str] = None
    backend: str = AUTO
    calibration: Any = None
    calib_method: Optional[str] = None
    calib_count: Optional[int] = None
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: Optional[int] = None
    timing_cache: Any = None
    dla_core: Optional[int] = None
    version_compatible: bool = False
    int8_activations: str = AUTO
    allow_tf32: bool = False
    inference_precision: Optional[str] = None

    def check(self) -> Tuple[int, int, int]:
        """The rules that need no model file; returns the batch range (min, opt, max)."""
        batch = validate_batch_range(self.min_batch, self.opt_batch, self.max_batch)
        if self.precision is not None:
            check_choice("precision", self.precision, PRECISIONS)
        if self.calib_method is not None:
            check_choice("calibration method", self.calib_method, CALIBRATION_METHODS)
        return batch

    def calibration_given(self) -> bool:
        return self.calibration is not None or self.calib_method is not None or self.calib_count is not None

    def check_for(self, from_checkpoint: bool, model) -> None:
        """The rules that depend on what is built from (a checkpoint or an ONNX graph)."""
        if self.calibration_given() and not from_checkpoint:
            raise UsageError("calibration options apply when building int8 from a checkpoint; this ONNX "
                             "graph already holds its precision", path=model,
                             hint="drop --calib-data / --calib-count / --calib-method")
        if self.calibration_given() and (self.precision or "fp32") != "int8":
            raise UsageError(f"calibration options apply to int8 only, this build is {self.precision or 'fp32'}",
                             hint="add --precision int8, or drop the calibration options")

    def backend_options(self) -> Dict[str, Any]:
        """The options only some backends take (TensorRT's), by field name."""
        return {k: getattr(self, k) for k in ("workspace_mib", "timing_cache", "dla_core",
                                               "version_compatible", "allow_tf32", "inference_precision")}


def _read_graph(onnx_path: Path, header, requested: Optional[str], batch: Sequence[int]) -> SourceGraph:
    """Check the graph ``header`` (loaded without weights) against its own spec and the asked
    precision and batch range."""
    meta = {p.key: p.value for p in header.metadata_props}
    spec = ModelSpec.from_metadata(meta, source=onnx_path)
    graph_prec = graph_precision(header)
    precision = resolve_precision(requested, graph_prec, source=onnx_path)
    labelled = meta.get(KEY_PRECISION)
    if labelled and labelled != graph_prec:
        raise IncompatibleModelError(f"metadata says {labelled} but the graph is {graph_prec}",
                                     path=onnx_path, hint="re-export the model with 'covidedge export'")
    inputs, outputs = graph_tensors(header)
    if [i["name"] for i in inputs] != [spec.input_name]:
        raise IncompatibleModelError(f"graph inputs are {[i['name'] for i in inputs]}, its spec says "
                                     f"['{spec.input_name}']", path=onnx_path)
    shapes = profile_shapes(inputs[0]["shape"], *batch, expected_chw=(spec.in_chans, *spec.input_size),
                            source=onnx_path)
    return SourceGraph(onnx_path, spec, meta, precision, graph_opset(header), inputs, outputs, shapes)


def build_engine(model, out=None, options: Optional[BuildOptions] = None, *, progress: bool = False,
                 overwrite: bool = False, **overrides) -> BuildResult:
    """Build an engine (TensorRT plan, or an ONNX Runtime model where TensorRT is absent) and its
    manifest from a checkpoint (.pt/.pth, exported first) or a precision-bearing ONNX graph.

    ``options`` is a :class:`BuildOptions` (its fields may also be given as keywords, which
    override it). ``out`` defaults to :func:`default_engine_path`. Every engine is self-checked
    against ONNX Runtime on the same graph (each backend's ``SELF_CHECK_ATOL``) before its
    manifest is written. ``progress=True`` prints progress and notes on stderr; by default it
    prints nothing. An existing ``out`` or manifest is refused before any work
    (covidedge.fileio.OutputExistsError) unless ``overwrite`` (``covidedge build-engine
    --overwrite``)."""
    import covidedge

    opts = BuildOptions.of(options, **overrides)
    t0 = time.perf_counter()
    model = Path(os.fspath(model))
    if not model.is_file():
        raise BadInputError("model file not found", path=model,
                            hint="pass a checkpoint (.pt) or an exported ONNX graph (.onnx)")
    lo, opt, hi = opts.check()
    precision = opts.precision
    from_checkpoint = model.suffix.lower() in CHECKPOINT_SUFFIXES
    if not from_checkpoint and model.suffix.lower() != ".onnx":
        raise BadInputError(f"cannot build from a {model.suffix or 'suffix-less'} file", path=model,
                            hint="pass a checkpoint (.pt/.pth) or an ONNX graph (.onnx)")
    opts.check_for(from_checkpoint, model)

    chosen = backends.get(resolve_backend(opts.backend))
    activations = resolve_int8_activations(opts.int8_activations, chosen.name)
    if opts.int8_activations != AUTO and (precision or "fp32") != "int8":
        raise UsageError(f"--int8-activations applies to int8 builds, this build is {precision or 'fp32'}",
                         hint="add --precision int8, or drop --int8-activations")
    if opts.int8_activations != AUTO and not from_checkpoint:
        raise UsageError("--int8-activations applies when quantizing a checkpoint; this ONNX graph "
                         "already holds its precision", path=model, hint="drop --int8-activations")
    fell_back = opts.backend == AUTO and chosen.name != backends.AUTO_ORDER[0]
    check_options_for_backend(chosen.name, fell_back=fell_back, **opts.backend_options())

    machine = probe_machine(use_backends=chosen.probe_backends)  # imports TensorRT for its version
    backend_version = str(package_version(chosen.name) or machine.get(chosen.name) or "unknown")
    machine[chosen.name] = backend_version
    header = None if from_checkpoint else load_onnx(model, weights=False)
    if out is None:
        out = default_engine_path(model, precision or ("fp32" if from_checkpoint else graph_precision(header)),
                                  chosen.name, tensorrt_version=backend_version,
                                  compute_capability=machine.get("gpu_compute_capability"))
    out = Path(os.fspath(out))
    if out.suffix.lower() == ".ort":
        raise BadInputError("ORT-format output is not supported; name the output .onnx or .engine", path=out)
    if out.resolve() == model.resolve():
        raise BadInputError("--out is the model file itself", path=out, hint="pass another --out")
    # the never-overwrite rule (covidedge build-engine passes overwrite=False unless --overwrite)
    refuse_existing(out, what="engine output", overwrite=overwrite)
    refuse_existing(manifest_path_for(out), what="engine output's manifest", overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    # 1. the precision-bearing ONNX graph, read once
    onnx_path = model
    if from_checkpoint:
        precision = precision or "fp32"
        # intermediates are named after the engine, so two checkpoints never share one
        onnx_path = out.with_name(out.name + ".src.onnx")
        refuse_foreign_file(onnx_path, out)
        _export_checkpoint(model, onnx_path, precision, opts.calibration, opts.calib_method, opts.calib_count,
                           progress, activations, qdq_placement=chosen.qdq_placement,
                           calib_out=out.with_name(out.name + ".calibration.json"))
        header = load_onnx(onnx_path, weights=False)
    graph = _read_graph(onnx_path, header, precision, (lo, opt, hi))
    precision, spec = graph.precision, graph.spec

    # 2. the engine, built by its backend
    built = chosen.build(graph, out, opts.backend_options(), machine, lambda text: say(progress, text))
    seconds = time.perf_counter() - t0
    timing_cache = opts.timing_cache
    options = {
        "model": str(model.resolve()), "onnx": str(Path(onnx_path).resolve()),
        "from_checkpoint": from_checkpoint, "precision": precision, "backend_requested": opts.backend,
        "min_batch": lo, "opt_batch": opt, "max_batch": hi, "workspace_mib": opts.workspace_mib,
        "timing_cache": None if timing_cache is None else str(Path(os.fspath(timing_cache)).resolve()),
        "dla_core": opts.dla_core, "version_compatible": bool(opts.version_compatible),
        "allow_tf32": None,
        "qdq_placement": chosen.qdq_placement if precision == "int8" and from_checkpoint else None,
        "calib_data": (None if not isinstance(opts.calibration, (str, os.PathLike))
                       else str(Path(opts.calibration).resolve())),
        "calib_count": opts.calib_count, "calib_method": opts.calib_method,
        "int8_activations": activations if precision == "int8" and from_checkpoint else None,
        "ort_offline_level": None,
        "verification": {}, "notes": built.notes,
    }
    options.update(built.options)
    candidate = built.candidate
    manifest = EngineManifest(
        backend=chosen.name, backend_version=backend_version, precision=precision, spec=spec.to_dict(),
        engine_file=out.name, engine_sha256=sha256_file(candidate), engine_bytes=candidate.stat().st_size,
        onnx_sha256=sha256_file(onnx_path), calibration_sha256=_calibration_sha(graph.meta, opts.calibration),
        min_batch=lo, opt_batch=opt, max_batch=hi, inputs=built.inputs, outputs=built.outputs,
        device=built.device or {k: machine.get(k) for k in chosen.device_keys},
        l4t_release=machine.get("l4t_release"), version_compatible=bool(opts.version_compatible),
        build_options=options, covidedge_version=covidedge.__version__,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3), machine=machine)
    # 3. its self-check, against ONNX Runtime on the same graph: the engine moves to ``out`` or is
    # deleted; the numbers go into the manifest's options dict before it is written
    options["verification"].update(chosen.self_check(built, manifest, onnx_path, opt, out))
    mpath = manifest.write(manifest_path_for(out))

    note = describe_build(chosen.name, backend_version, precision, (lo, hi), seconds, describe_device(machine))
    if fell_back:
        say(progress, backends.fallback_note(module_present, chosen, backend_version, out))
    for extra in built.notes if chosen.announce_notes() else []:  # stated, never silent
        say(progress, f"note: {extra}")
    return BuildResult(engine_path=out, manifest_path=mpath, manifest=manifest, backend=chosen.name, note=note)


__all__ = ["BuildResult", "BuildOptions", "build_engine", "validate_batch_range", "resolve_backend",
           "resolve_precision", "profile_shapes", "check_options_for_backend", "resolve_int8_activations",
           "INT8_ACTIVATIONS", "CPU_INT8_ACTIVATIONS", "describe_build", "say"]
