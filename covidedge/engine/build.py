"""Build a deployable engine from a checkpoint or a precision-bearing ONNX graph.

Where TensorRT is installed the result is a TensorRT plan; elsewhere an ONNX Runtime artifact
(the same graph optimised offline), so every machine can build and run something. Either way
the engine is written with its manifest (see covidedge.formats.manifest).

Precision lives in the ONNX graph (fp16 weights, or int8 Q/DQ nodes). TensorRT >= 10 parses it
into a strongly typed network, so the graph alone decides the precision; TensorRT 8.5 (JetPack 5)
and 8.6 have no strong typing: they get the builder flags that allow the graph's precisions and,
for fp16, precision constraints that keep the graph's fp32 islands in fp32.
Every decision that is not a TensorRT call (options, profile shapes, flags per version, file
names, error messages) is a plain function here so that it is tested on machines without a GPU;
``_build_tensorrt`` only applies a finished :class:`TrtBuildPlan`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from covidedge.errors import (BadInputError, IncompatibleModelError, MissingDependencyError,
                              RuntimeFailure)
from covidedge.fileio import write_atomic
from covidedge.formats.onnxfile import graph_opset, graph_precision, graph_tensors, load_onnx
from covidedge.spec import CALIBRATION_METHODS, ENGINE_BACKEND_CHOICES, PRECISIONS
from covidedge.backends.available import module_present
from covidedge.backends.tensorrt import (TENSORRT_INSTALL_HINT, _severity_name, format_trt_errors,  # noqa: F401
                                   make_recording_logger)
from covidedge.formats.manifest import MANIFEST_SUFFIX, EngineManifest, VERSION_COMPATIBLE_SINCE, engine_path_for, manifest_path_for, parse_version
from covidedge.fileio import sha256_file

CHECKPOINT_SUFFIXES = (".pt", ".pth")
#: Oldest TensorRT this builder drives: 8.5 (JetPack 5.1) has set_memory_pool_limit,
#: build_serialized_network and the name-based I/O API.
MIN_TENSORRT = (8, 5)
#: Largest |probability| difference accepted, per precision, between a TensorRT engine and ONNX
#: Runtime (CPU) on the same graph in the build's self-check. TF32 is cleared, so fp32 differs by
#: kernel rounding only; fp16 by a few fp16 ulps; int8 by up to a quantization step, as TensorRT
#: fuses Q/DQ into other integer kernels than ONNX Runtime (the OpenVINO self-check's limit).
TENSORRT_SELF_CHECK_ATOL = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}
#: Default folder for engines when no --out is given.
DEFAULT_BUILD_DIR = Path("build")

#: The ONNX Runtime artifact is optimised offline at the "extended" level, not "all":
#: "all" adds layout optimisations (NCHWc blocking for the CPU's vector width, AVX2 vs AVX-512),
#: and ONNX Runtime's graph-optimisation docs warn that such an offline model only runs on
#: compatible hardware. "extended" fusions are ONNX Runtime contrib operators (com.microsoft)
#: that the same or a later ONNX Runtime reloads on any CPU; the layout pass is then applied
#: online when the artifact is loaded (OrtRunner uses "all").
#: https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html
ORT_OFFLINE_LEVEL = "extended"

#: Largest |probability| difference accepted, per precision, between an ONNX Runtime artifact and
#: its source graph in the build's self-check. Both run the same precision, but offline fusion
#: reorders arithmetic: fp32 moves by rounding only; fp16 by a few fp16 ulps (eps 9.8e-4), seen
#: up to 1.2e-3 on the full U-Net; int8 by up to a quantization step where Q/DQ pairs fuse into
#: integer kernels. A difference past these is a broken optimisation, not rounding.
ORT_SELF_CHECK_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 2e-2}



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


def resolve_backend(backend: str, tensorrt_present: bool, pycuda_present: bool = True) -> str:
    """'auto' -> 'tensorrt' where TensorRT and pycuda are importable, else 'onnxruntime'.
    An explicit 'tensorrt' without TensorRT is an error (never a quiet fallback)."""
    if backend not in ENGINE_BACKEND_CHOICES:
        raise BadInputError(f"backend {backend!r} is unknown; expected one of {', '.join(ENGINE_BACKEND_CHOICES)}")
    if backend == "auto":
        return "tensorrt" if tensorrt_present and pycuda_present else "onnxruntime"
    if backend == "tensorrt" and not tensorrt_present:
        raise MissingDependencyError("TensorRT is not installed, so no TensorRT engine can be built here",
                                     hint=TENSORRT_INSTALL_HINT)
    if backend == "openvino" and not module_present("openvino"):
        raise MissingDependencyError("OpenVINO is not installed, so no OpenVINO engine can be built here",
                                     hint="pip install 'covidedge[openvino]'")
    return backend


def fallback_note(tensorrt_present: bool, pycuda_present: bool, ort_version: str, engine_path) -> str:
    """The one line printed when backend 'auto' builds for ONNX Runtime instead of TensorRT."""
    why = ("TensorRT is not installed here" if not tensorrt_present
           else "pycuda is not installed here (TensorRT engines need it to run)")
    return f"note: {why}; built an ONNX Runtime {ort_version} CPU model instead: {engine_path}"


def resolve_precision(requested: Optional[str], graph: str, source: object = None) -> str:
    """The precision to build: the graph's. A requested precision that contradicts it is refused."""
    if graph not in PRECISIONS:
        raise IncompatibleModelError(f"graph precision {graph!r} is unknown", path=source)
    if requested is None or requested == graph:
        return graph
    if requested not in PRECISIONS:
        raise BadInputError(f"precision {requested!r} is unknown; expected one of {', '.join(PRECISIONS)}")
    raise BadInputError(
        f"this ONNX graph is {graph} but --precision {requested} was asked for; the precision is in "
        "the graph", path=source,
        hint=f"drop --precision to build it as {graph}, or build from the checkpoint with "
             f"--precision {requested}")


def check_options_for_backend(backend: str, *, workspace_mib=None, timing_cache=None,
                              dla_core=None, version_compatible=False, allow_tf32=False,
                              fell_back=False) -> None:
    """Refuse TensorRT-only options when the build is for ONNX Runtime or OpenVINO (never ignore them)."""
    if backend == "tensorrt":
        return
    given = [flag for flag, on in (("--workspace", workspace_mib is not None),
                                   ("--timing-cache", timing_cache is not None),
                                   ("--dla-core", dla_core is not None),
                                   ("--version-compatible", bool(version_compatible)),
                                   ("--allow-tf32", bool(allow_tf32))) if on]
    if given:
        why = " (TensorRT is not installed here)" if fell_back else ""
        raise BadInputError(
            f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to TensorRT engines only, "
            f"but this build is for {'OpenVINO' if backend == 'openvino' else 'ONNX Runtime'}{why}",
            hint=f"drop {', '.join(given)}" + (", or install TensorRT" if fell_back else ""))


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


@dataclass
class TrtBuildPlan:
    """Everything ``_build_tensorrt`` does, decided from the TensorRT version and the options."""

    tensorrt_version: str
    precision: str
    input_name: str
    profile: Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]
    network_flags: List[str] = field(default_factory=list)  # NetworkDefinitionCreationFlag names
    builder_flags: List[str] = field(default_factory=list)  # BuilderFlag names
    workspace_bytes: Optional[int] = None
    timing_cache: Optional[str] = None
    dla_core: Optional[int] = None
    version_compatible: bool = False
    cleared_flags: List[str] = field(default_factory=list)  # BuilderFlag names cleared (on by default)
    #: TensorRT 8.x fp16: layers whose outputs the parsed network types fp32 are constrained to
    #: fp32 (layer.precision / set_output_type) and OBEY_PRECISION_CONSTRAINTS is set.
    fp32_islands: bool = False
    notes: List[str] = field(default_factory=list)

    @property
    def strongly_typed(self) -> bool:
        return parse_version(self.tensorrt_version)[:1] >= (10,)


def plan_tensorrt_build(tensorrt_version: str, precision: str, input_name: str, profile, *,
                        workspace_mib: Optional[int] = None, timing_cache=None,
                        dla_core: Optional[int] = None, version_compatible: bool = False,
                        allow_tf32: bool = False) -> TrtBuildPlan:
    """Decide network flags, builder flags and limits for this TensorRT version.

    - TensorRT 11: every network is strongly typed; the STRONGLY_TYPED flag is deprecated and
      ignored, EXPLICIT_BATCH is gone, and the FP16 / INT8 builder flags and INT8 calibrators
      are removed (https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html,
      NetworkDefinitionCreationFlag in https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html).
      So: no network flag, no precision flag.
    - TensorRT 10: networks are always explicit batch (EXPLICIT_BATCH is deprecated and ignored);
      STRONGLY_TYPED makes the graph's types binding, and precision flags must not be set with it
      (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html).
    - TensorRT 8.5 (JetPack 5) / 8.6: EXPLICIT_BATCH is required for ONNX, and FP16 / INT8 must be
      enabled for the builder to run the graph's fp16 casts / Q/DQ in those precisions (explicit
      quantization: INT8 without a calibrator). FP16 lets the builder pick fp16 for any layer, so
      the fp16 graph's fp32 islands (Softmax, Sigmoid, pooling, Resize) are pinned to fp32 with
      precision constraints and OBEY_PRECISION_CONSTRAINTS.
    - TF32 is on by default in every release; it is cleared (an "fp32" engine computes in fp32)
      unless ``allow_tf32``.
    - DLA: default_device_type DLA on core N with GPU_FALLBACK; DLA runs fp16 / int8 only and takes
      no dynamic shapes, so min = opt = max batch is required (otherwise every layer would fall
      back to the GPU while the engine claims DLA).
    - VERSION_COMPATIBLE exists from TensorRT 8.6.
    """
    ver = parse_version(tensorrt_version)
    if not ver or ver[:2] < MIN_TENSORRT:
        raise MissingDependencyError(
            f"TensorRT {tensorrt_version} is too old; covidedge builds with TensorRT "
            f"{'.'.join(map(str, MIN_TENSORRT))} or later", hint=TENSORRT_INSTALL_HINT)
    if precision not in PRECISIONS:
        raise BadInputError(f"precision {precision!r} is unknown; expected one of {', '.join(PRECISIONS)}")
    plan = TrtBuildPlan(tensorrt_version=str(tensorrt_version), precision=precision,
                        input_name=input_name, profile=tuple(tuple(s) for s in profile))
    major = ver[0]
    if major >= 11:
        pass  # strongly typed always; no flag to set
    elif major >= 10:
        plan.network_flags.append("STRONGLY_TYPED")
    else:
        plan.network_flags.append("EXPLICIT_BATCH")
        if precision == "fp16":
            plan.builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            plan.fp32_islands = True
        elif precision == "int8":
            plan.builder_flags.append("INT8")
    if not allow_tf32:
        plan.cleared_flags.append("TF32")
    if workspace_mib is not None:
        try:
            mib = int(workspace_mib)
        except (TypeError, ValueError):
            raise BadInputError(f"--workspace {workspace_mib!r} is not a whole number of MiB") from None
        if mib < 1 or mib != workspace_mib:
            raise BadInputError(f"--workspace {workspace_mib!r} must be a whole number of MiB >= 1")
        plan.workspace_bytes = mib * 1024 * 1024
    if timing_cache is not None:
        plan.timing_cache = os.fspath(timing_cache)
    if dla_core is not None:
        try:
            core = int(dla_core)
        except (TypeError, ValueError):
            raise BadInputError(f"--dla-core {dla_core!r} is not a core number") from None
        if core < 0 or core != dla_core:
            raise BadInputError(f"--dla-core {dla_core!r} must be a core number >= 0")
        if precision == "fp32":
            raise BadInputError(
                "DLA runs fp16 and int8 only; an fp32 engine would run every layer on the GPU",
                hint="build an fp16 or int8 engine for DLA, or drop --dla-core")
        lo, opt, hi = (s[0] for s in plan.profile)
        if not lo == opt == hi:
            raise BadInputError(
                f"DLA takes no dynamic shapes, but batch {lo}..{hi} (opt {opt}) was asked for; with it "
                "every layer would run on the GPU", hint=f"pass --min-batch {hi} --opt-batch {hi} "
                f"--max-batch {hi} (a fixed batch) with --dla-core, or drop --dla-core")
        plan.dla_core = core
        plan.builder_flags.append("GPU_FALLBACK")
        plan.notes.append(f"DLA core {core} with GPU fallback: layers DLA cannot run go to the GPU; "
                          "TensorRT's build log names them")
    if version_compatible:
        if ver[:2] < VERSION_COMPATIBLE_SINCE:
            raise BadInputError(
                f"--version-compatible needs TensorRT 8.6 or later; this is {tensorrt_version}",
                hint="drop --version-compatible")
        plan.version_compatible = True
        plan.builder_flags.append("VERSION_COMPATIBLE")
    return plan


def check_tensorrt_opset(tensorrt_version: str, opset: Optional[int], source: object = None) -> None:
    """Refuse a graph whose ONNX opset the TensorRT 8.x ONNX parser does not document
    (covidedge.export.onnx.TENSORRT8_MAX_OPSET); TensorRT 10 and 11 parse every opset covidedge
    exports."""
    from covidedge.export.onnx import TENSORRT8_MAX_OPSET

    ver = parse_version(tensorrt_version)
    if opset is None or not ver or ver[0] >= 10 or int(opset) <= TENSORRT8_MAX_OPSET:
        return
    raise IncompatibleModelError(
        f"this graph is ONNX opset {opset}; the TensorRT {tensorrt_version} ONNX parser documents "
        f"opsets up to {TENSORRT8_MAX_OPSET}", path=source,
        hint=f"re-export it with --opset {TENSORRT8_MAX_OPSET} (the default), or build with TensorRT 10 or later")


#: Parsed-network tensor types that make a layer part of an fp32 island (TensorRT DataType names).
FP32_ISLAND_DTYPES = ("FLOAT",)


def fp32_island_layers(layers: Sequence[Tuple[str, Sequence[str]]]) -> List[int]:
    """Indices of the layers to pin to fp32 in a TensorRT 8.x fp16 build.

    ``layers`` lists (layer name, output DataType names) in network order, as the ONNX parser
    typed them from the fp16 graph: fp16 where the graph computes in fp16, FLOAT in its fp32
    islands (the output activation, reductions, Resize, and the casts into them). Layers with
    every output FLOAT are constrained; layers with an fp16, int32 or bool output are left to
    the builder."""
    chosen = []
    for i, (_, dtypes) in enumerate(layers):
        names = [str(d).rsplit(".", 1)[-1].upper() for d in dtypes]
        if names and all(n in FP32_ISLAND_DTYPES for n in names):
            chosen.append(i)
    return chosen


def _strip_precision(stem: str) -> str:
    return re.sub(r"([._-](fp32|fp16|int8))+$", "", stem)


#: File stems that say nothing about the model (a training run's best.pt); default engine names
#: prefix them with the model's folder name.
GENERIC_STEMS = ("best", "last", "model", "checkpoint")


def default_engine_path(model, precision: str, backend: str, *, tensorrt_version: Optional[str] = None,
                        compute_capability: Optional[str] = None, build_dir=DEFAULT_BUILD_DIR) -> Path:
    """Where an engine goes when no --out is given: build/<model>.<precision>.<target>.<ext>.

    TensorRT engines name the TensorRT release and GPU architecture they are tied to
    (``cls.fp16.trt10.3.sm87.engine``) so engines of several machines can share a folder;
    ONNX Runtime artifacts are ONNX files (``cls.fp16.ort.onnx``)."""
    name = Path(os.fspath(model)).name
    for suffix in (".onnx", *CHECKPOINT_SUFFIXES):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = _strip_precision(name) or "model"
    parent = Path(os.fspath(model)).resolve().parent.name
    if stem in GENERIC_STEMS and parent:
        stem = f"{parent}-{stem}"  # runs/cls/best.pt and runs/seg/best.pt must not share engines
    if backend == "tensorrt":
        target = "trt"
        ver = parse_version(tensorrt_version)
        if len(ver) >= 2:
            target += f"{ver[0]}.{ver[1]}"
        if compute_capability:
            target += ".sm" + str(compute_capability).replace(".", "")
        return Path(build_dir) / f"{stem}.{precision}.{target}.engine"
    if backend == "openvino":
        return Path(build_dir) / f"{stem}.{precision}.ov.onnx"
    return Path(build_dir) / f"{stem}.{precision}.ort.onnx"


def _calibration_sha(meta: Dict[str, str], calibration=None) -> Optional[str]:
    sha = meta.get("covidedge.calibration_sha256")
    if sha:
        return sha
    return getattr(calibration, "sha256", None) if calibration is not None else None


# -- thin backend calls ----------------------------------------------------------------------
def _progress(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _build_tensorrt(onnx_path: Path, plan: TrtBuildPlan):
    """Parse ``onnx_path`` and build a serialized plan as ``plan`` says.

    Returns (plan bytes, inputs, outputs, notes). API per version: create_network(flags),
    OnnxParser.parse_from_file + num_errors / get_error, set_memory_pool_limit(WORKSPACE),
    set_flag / clear_flag, layer.precision / set_output_type (8.x fp32 islands),
    create_optimization_profile / set_shape, create_timing_cache / set_timing_cache and
    get_timing_cache().serialize(), default_device_type / DLA_core, build_serialized_network
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/TimingCache.html
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/parsers/Onnx/pyOnnx.html"""
    import numpy as np
    import tensorrt as trt

    logger = make_recording_logger(trt)
    notes: List[str] = []
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    if network is None:
        raise RuntimeFailure(format_trt_errors("create a network", [], logger.records))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(os.fspath(onnx_path))
    if not ok or parser.num_errors:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeFailure(format_trt_errors("parse", errors, logger.records, source=onnx_path))

    config = builder.create_builder_config()
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if plan.fp32_islands:
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        typed = [(layer.name, [_severity_name(layer.get_output(j).dtype) for j in range(layer.num_outputs)])
                 for layer in layers]
        pinned = fp32_island_layers(typed)
        for i in pinned:
            layers[i].precision = trt.float32
            for j in range(layers[i].num_outputs):
                layers[i].set_output_type(j, trt.float32)
        notes.append(f"{len(pinned)} of {len(layers)} layers pinned to fp32 (the fp16 graph's fp32 "
                     "islands; OBEY_PRECISION_CONSTRAINTS)")
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, *plan.profile)
    config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise BadInputError(f"--dla-core {plan.dla_core} was asked for, this device has "
                                f"{builder.num_DLA_cores} DLA core(s)",
                                hint="drop --dla-core, or pick a core below that number")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    cache = None
    if plan.timing_cache:
        data = b""
        if os.path.isfile(plan.timing_cache):
            with open(plan.timing_cache, "rb") as f:
                data = f.read()
        cache = config.create_timing_cache(data)
        if cache is None and data:
            notes.append(f"timing cache {plan.timing_cache} is unreadable; starting a new one")
            cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            notes.append(f"timing cache {plan.timing_cache} was made by another GPU or TensorRT; "
                         "starting a new one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeFailure(format_trt_errors("build an engine from", [], logger.records, source=onnx_path),
                             hint="run with a larger --workspace, or check the graph with polygraphy")
    if plan.timing_cache:
        updated = config.get_timing_cache()
        if updated is not None:
            blob = updated.serialize()
            write_atomic(Path(plan.timing_cache), bytes(blob))

    def info(t):
        try:
            dtype = str(np.dtype(trt.nptype(t.dtype)))
        except TypeError:  # types numpy lacks (bf16, fp8)
            dtype = _severity_name(t.dtype)
        return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": dtype}

    inputs = [info(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [info(network.get_output(i)) for i in range(network.num_outputs)]
    return bytes(serialized), inputs, outputs, notes


def _ort_level(ort, name: str):
    return {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[name]


def _build_onnxruntime(onnx_path: Path, out: Path, spec, opt_batch: int, precision: str = "fp32") -> Dict[str, Any]:
    """Optimise ``onnx_path`` offline with ONNX Runtime into ``out`` (an ONNX file), then run the
    artifact and its source on one seeded batch and compare. Returns the self-check numbers."""
    import numpy as np
    import onnxruntime as ort

    tmp = out.with_name(out.name + ".tmp.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = _ort_level(ort, ORT_OFFLINE_LEVEL)
    so.optimized_model_filepath = os.fspath(tmp)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeFailure(f"ONNX Runtime could not optimise the model: {first}", path=onnx_path) from exc

    rng = np.random.default_rng(0)
    x = rng.random((opt_batch, spec.in_chans, *spec.input_size), dtype=np.float32)

    def run(path):
        s = ort.SessionOptions()
        s.log_severity_level = 3
        sess = ort.InferenceSession(os.fspath(path), sess_options=s, providers=["CPUExecutionProvider"])
        return dict(zip(spec.output_names, sess.run(list(spec.output_names), {spec.input_name: x})))

    try:
        ref, got = run(onnx_path), run(tmp)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeFailure(f"the optimised ONNX Runtime model does not run: {str(exc).splitlines()[0]}",
                             path=out) from exc
    return _accept_if_close(ref, got, spec, ORT_SELF_CHECK_ATOL[precision], precision, tmp, out, opt_batch,
                            "the optimised model's {prob} differ from the source graph's")


def _accept_if_close(ref, got, spec, limit: float, precision: str, tmp: Path, out: Path, opt_batch: int,
                     what: str) -> Dict[str, Any]:
    """Move the built ``tmp`` to ``out`` when its probabilities are within ``limit`` of the
    reference outputs, else delete it and raise RuntimeFailure (``what`` names the comparison)."""
    import numpy as np

    diffs = {k: float(np.max(np.abs(ref[k].astype(np.float64) - got[k].astype(np.float64))))
             for k in spec.output_names}
    prob = spec.output_names[1]
    if not np.isfinite(diffs[prob]) or diffs[prob] > limit:
        tmp.unlink(missing_ok=True)
        raise RuntimeFailure(f"{what.format(prob=prob)} by {diffs[prob]:.3g} (limit {limit:g} for {precision})",
                             path=out)
    os.replace(tmp, out)
    return {"batch": int(opt_batch), "max_abs_diff": diffs, "reference": "source ONNX graph, ONNX Runtime CPU"}


def _self_check_tensorrt(engine: Path, manifest: EngineManifest, onnx_path: Path, spec, opt_batch: int,
                         precision: str) -> Dict[str, Any]:
    """Run the built plan (TrtRunner, with ``manifest``) and its source graph (ONNX Runtime, CPU)
    on one seeded batch of ``opt_batch`` images; delete the plan and raise RuntimeFailure when
    the probabilities differ by more than :data:`TENSORRT_SELF_CHECK_ATOL`."""
    import numpy as np

    from covidedge.backends.onnxruntime import OrtRunner
    from covidedge.backends.tensorrt import TrtRunner

    x = np.random.default_rng(0).random((opt_batch, spec.in_chans, *spec.input_size), dtype=np.float32)
    try:
        with TrtRunner(engine, manifest=manifest) as trt_run, OrtRunner(onnx_path, spec=spec) as ref_run:
            got, ref = trt_run.infer(x), ref_run.infer(x)
    except BaseException:
        engine.unlink(missing_ok=True)
        raise
    return _accept_if_close(ref, got, spec, TENSORRT_SELF_CHECK_ATOL[precision], precision, engine, engine,
                            opt_batch, "TensorRT's {prob} differ from ONNX Runtime's on the same graph")


#: Largest |probability| difference accepted, per precision, between OpenVINO (f32 compute) and
#: ONNX Runtime on the same graph: other kernels, so int8 may differ by a quantization step.
OPENVINO_SELF_CHECK_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


def _build_openvino(onnx_path: Path, out: Path, spec, opt_batch: int, precision: str) -> Dict[str, Any]:
    """An OpenVINO engine is the precision graph itself (OpenVINO compiles it when loaded, for
    the CPU it runs on). Copy it to ``out``, then compile it with OpenVINO and compare its
    outputs with ONNX Runtime's on one seeded batch. Returns the self-check numbers."""
    import numpy as np

    from covidedge.backends.openvino import OpenVinoRunner
    from covidedge.backends.onnxruntime import OrtRunner

    tmp = out.with_name(out.name + ".tmp.onnx")
    write_atomic(tmp, Path(onnx_path).read_bytes())
    x = np.random.default_rng(0).random((opt_batch, spec.in_chans, *spec.input_size), dtype=np.float32)
    try:
        with OpenVinoRunner(tmp, spec=spec) as ov_run, OrtRunner(onnx_path, spec=spec) as ref_run:
            got, ref = ov_run.infer(x), ref_run.infer(x)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _accept_if_close(ref, got, spec, OPENVINO_SELF_CHECK_ATOL[precision], precision, tmp, out,
                            opt_batch, "OpenVINO's {prob} differ from ONNX Runtime's on the same graph")


def refuse_foreign_file(path: Path, own_engine: Path) -> None:
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


# -- the public entry point ------------------------------------------------------------------
#: Activation type for int8 ONNX Runtime CPU engines. benchmarks/compare_backends.py
#: --int8-activations measured unsigned asymmetric activations (u8s8) 1.2-3.8x faster than signed
#: symmetric ones (s8s8) for both models on an x86 CPU with ONNX Runtime 1.32 (see
#: benchmarks/results/); ONNX Runtime's CPU kernels are built around u8 activations.
CPU_INT8_ACTIVATIONS = "uint8"
INT8_ACTIVATIONS = ("auto", "int8", "uint8")


def resolve_int8_activations(requested: str, backend: str) -> str:
    """"auto" -> signed int8 for TensorRT (it takes symmetric s8 Q/DQ only), the measured faster
    :data:`CPU_INT8_ACTIVATIONS` for ONNX Runtime; an explicit "uint8" for TensorRT is refused."""
    if requested not in INT8_ACTIVATIONS:
        raise BadInputError(f"int8 activations {requested!r} unknown; expected one of {', '.join(INT8_ACTIVATIONS)}")
    if requested == "auto":
        # OpenVINO fuses the signed symmetric Q/DQ graph well (benchmarks/results/): keep it.
        return CPU_INT8_ACTIVATIONS if backend == "onnxruntime" else "int8"
    if requested == "uint8" and backend == "tensorrt":
        raise BadInputError("TensorRT takes signed symmetric int8 activations only",
                            hint="use --int8-activations int8 (or auto) for TensorRT engines")
    return requested


def _export_checkpoint(checkpoint: Path, onnx_out: Path, precision: str, calibration, calib_method,
                       calib_count, progress: bool, activations: str = "int8",
                       qdq_placement: str = "onnxruntime", calib_out: Optional[Path] = None) -> None:
    """Export a checkpoint to a precision-bearing ONNX graph with covidedge.export (needs torch),
    at the default opset (covidedge.export.onnx.DEFAULT_OPSET, which every TensorRT parses).
    int8 calibration (a CalibrationSet, a calibration manifest or a dataset folder) is resolved
    there, so the export and this builder pick the same images; ``qdq_placement`` places the
    Q/DQ nodes for the engine's backend (covidedge.export.precision.QDQ_PLACEMENTS)."""
    try:
        from covidedge.export import export_model
    except ImportError as exc:
        raise MissingDependencyError(f"exporting a checkpoint needs covidedge.export and torch ({exc})",
                                     path=checkpoint,
                                     hint="pip install 'covidedge[train]', or pass an exported .onnx") from exc
    kwargs: Dict[str, Any] = {"precision": precision}
    if precision == "int8":
        if calibration is None:
            raise BadInputError("an int8 engine from a checkpoint needs calibration images", path=checkpoint,
                                hint="pass --calib-data DIR (a COVID-QU-Ex folder or a calibration manifest)")
        kwargs.update(calibration=calibration, method=calib_method or "entropy",
                      activation_type=activations, symmetric_activations=activations == "int8",
                      qdq_placement=qdq_placement)
        if calib_count is not None:
            kwargs["calib_count"] = int(calib_count)
        if calib_out is not None:
            kwargs["calib_out"] = calib_out
    _progress(progress, f"exporting {checkpoint} to {precision} ONNX: {onnx_out}")
    export_model(checkpoint, onnx_out, **kwargs)


def build_engine(model, out=None, *, precision: Optional[str] = None, backend: str = "auto",
                 calibration=None, calib_method: Optional[str] = None, calib_count: Optional[int] = None,
                 min_batch: int = 1, opt_batch: int = 1, max_batch: int = 8,
                 workspace_mib: Optional[int] = None, timing_cache=None, dla_core: Optional[int] = None,
                 version_compatible: bool = False, int8_activations: str = "auto",
                 allow_tf32: bool = False, progress: bool = True) -> BuildResult:
    """Build an engine (TensorRT plan, or an ONNX Runtime model where TensorRT is absent) and its
    manifest from a checkpoint (.pt/.pth, exported first) or a precision-bearing ONNX graph.

    ``precision`` picks the export precision for a checkpoint (default fp32); for an ONNX graph
    it is read from the graph and a contradicting value is refused. ``calibration`` (int8 from a
    checkpoint only) is a CalibrationSet, a calibration manifest or a dataset folder
    (``calib_count`` images, ``calib_method`` minmax | entropy | percentile). Batch sizes are
    images; ``workspace_mib`` is MiB. ``out`` defaults to :func:`default_engine_path`.
    ``int8_activations`` (int8 from a checkpoint): "int8" (signed, symmetric: what TensorRT
    takes), "uint8" (unsigned, asymmetric: ONNX Runtime CPU engines only) or "auto" (see
    :func:`resolve_int8_activations`). A TensorRT build clears TF32 (fp32 layers compute in fp32)
    unless ``allow_tf32``; a TensorRT engine is self-checked against ONNX Runtime on the same
    graph (:data:`TENSORRT_SELF_CHECK_ATOL`) before its manifest is written."""
    import covidedge
    from covidedge.machine import describe_device, probe_machine

    t0 = time.perf_counter()
    model = Path(os.fspath(model))
    if not model.is_file():
        raise BadInputError("model file not found", path=model,
                            hint="pass a checkpoint (.pt) or an exported ONNX graph (.onnx)")
    lo, opt, hi = validate_batch_range(min_batch, opt_batch, max_batch)
    if precision is not None and precision not in PRECISIONS:
        raise BadInputError(f"precision {precision!r} is unknown; expected one of {', '.join(PRECISIONS)}")
    if calib_method is not None and calib_method not in CALIBRATION_METHODS:
        raise BadInputError(f"calibration method {calib_method!r} is unknown; expected one of "
                            f"{', '.join(CALIBRATION_METHODS)}")
    from_checkpoint = model.suffix.lower() in CHECKPOINT_SUFFIXES
    if not from_checkpoint and model.suffix.lower() != ".onnx":
        raise BadInputError(f"cannot build from a {model.suffix or 'suffix-less'} file", path=model,
                            hint="pass a checkpoint (.pt/.pth) or an ONNX graph (.onnx)")
    calib_given = calibration is not None or calib_method is not None or calib_count is not None
    if calib_given and not from_checkpoint:
        raise BadInputError("calibration options apply when building int8 from a checkpoint; this ONNX "
                            "graph already holds its precision", path=model,
                            hint="drop --calib-data / --calib-count / --calib-method")
    if calib_given and (precision or "fp32") != "int8":
        raise BadInputError(f"calibration options apply to int8 only, this build is {precision or 'fp32'}",
                            hint="add --precision int8, or drop the calibration options")

    trt_present, cuda_present = module_present("tensorrt"), module_present("pycuda")
    chosen = resolve_backend(backend, trt_present, cuda_present)
    activations = resolve_int8_activations(int8_activations, chosen)
    if int8_activations != "auto" and (precision or "fp32") != "int8":
        raise BadInputError(f"--int8-activations applies to int8 builds, this build is {precision or 'fp32'}",
                            hint="add --precision int8, or drop --int8-activations")
    if int8_activations != "auto" and not from_checkpoint:
        raise BadInputError("--int8-activations applies when quantizing a checkpoint; this ONNX graph "
                            "already holds its precision", path=model, hint="drop --int8-activations")
    fell_back = backend == "auto" and chosen == "onnxruntime"
    check_options_for_backend(chosen, workspace_mib=workspace_mib, timing_cache=timing_cache,
                              dla_core=dla_core, version_compatible=version_compatible,
                              allow_tf32=allow_tf32, fell_back=fell_back)

    machine = probe_machine(use_backends=chosen == "tensorrt")
    trt_version = None
    if chosen == "tensorrt":
        import tensorrt as trt

        trt_version = trt.__version__
        machine["tensorrt"] = trt_version
    if out is None:
        out = default_engine_path(model, precision or ("fp32" if from_checkpoint else
                                                       graph_precision(model)), chosen,
                                  tensorrt_version=trt_version,
                                  compute_capability=machine.get("gpu_compute_capability"))
    out = Path(os.fspath(out))
    if out.suffix.lower() == ".ort":
        raise BadInputError("ORT-format output is not supported; name the output .onnx or .engine", path=out)
    if out.resolve() == model.resolve():
        raise BadInputError("--out is the model file itself", path=out, hint="pass another --out")
    out.parent.mkdir(parents=True, exist_ok=True)

    # 1. the precision-bearing ONNX graph
    if from_checkpoint:
        precision = precision or "fp32"
        # intermediates are named after the engine, so two checkpoints never share one
        onnx_path = out.with_name(out.name + ".src.onnx")
        refuse_foreign_file(onnx_path, out)
        _export_checkpoint(model, onnx_path, precision, calibration, calib_method, calib_count, progress,
                           activations, qdq_placement="tensorrt" if chosen == "tensorrt" else "onnxruntime",
                           calib_out=out.with_name(out.name + ".calibration.json"))
    else:
        onnx_path = model
    header = load_onnx(onnx_path, weights=False)
    meta = {p.key: p.value for p in header.metadata_props}
    from covidedge.spec import ModelSpec

    spec = ModelSpec.from_metadata(meta, source=onnx_path)
    graph_prec = graph_precision(header)
    precision = resolve_precision(precision, graph_prec, source=onnx_path)
    labelled = meta.get("covidedge.precision")
    if labelled and labelled != graph_prec:
        raise IncompatibleModelError(f"metadata says {labelled} but the graph is {graph_prec}",
                                     path=onnx_path, hint="re-export the model with 'covidedge export'")
    inputs, outputs = graph_tensors(header)
    if [i["name"] for i in inputs] != [spec.input_name]:
        raise IncompatibleModelError(f"graph inputs are {[i['name'] for i in inputs]}, its spec says "
                                     f"['{spec.input_name}']", path=onnx_path)
    shapes = profile_shapes(inputs[0]["shape"], lo, opt, hi,
                            expected_chw=(spec.in_chans, *spec.input_size), source=onnx_path)

    # 2. the engine
    verification: Dict[str, Any] = {}
    notes: List[str] = []
    if chosen == "tensorrt":
        if precision == "int8" and meta.get("covidedge.tensorrt_compatible") == "false":
            raise IncompatibleModelError(
                "this int8 graph has asymmetric uint8 activations, which TensorRT's explicit "
                "quantization does not take", path=onnx_path,
                hint="re-quantize with signed int8 symmetric activations (the export default)")
        check_tensorrt_opset(trt_version, graph_opset(header), source=onnx_path)
        plan = plan_tensorrt_build(trt_version, precision, spec.input_name, shapes,
                                   workspace_mib=workspace_mib, timing_cache=timing_cache,
                                   dla_core=dla_core, version_compatible=version_compatible,
                                   allow_tf32=allow_tf32)
        notes += plan.notes
        _progress(progress, f"building a TensorRT {trt_version} {precision} engine for "
                            f"{describe_device(machine)}, batch {lo}..{hi} (opt {opt}); this can take minutes")
        blob, inputs, outputs, build_notes = _build_tensorrt(onnx_path, plan)
        notes += build_notes
        write_atomic(out, blob)
        backend_version = trt_version
        device = {k: machine.get(k) for k in ("gpu", "gpu_compute_capability", "gpu_memory_mib",
                                              "gpu_driver", "board")}
    elif chosen == "openvino":
        import importlib.metadata

        backend_version = importlib.metadata.version("openvino")
        verification = _build_openvino(onnx_path, out, spec, opt, precision)
        device = {"cpu": machine.get("cpu"), "cpu_cores": machine.get("cpu_cores"),
                  "arch": machine.get("arch")}
        notes.append("OpenVINO reads the precision graph itself; it runs with f32 compute "
                     "(no implicit bf16)")
    else:
        import onnxruntime as ort

        backend_version = ort.__version__
        verification = _build_onnxruntime(onnx_path, out, spec, opt, precision)
        device = {"cpu": machine.get("cpu"), "cpu_cores": machine.get("cpu_cores"),
                  "arch": machine.get("arch")}
        notes.append(f"graph optimised offline at the '{ORT_OFFLINE_LEVEL}' level")

    seconds = time.perf_counter() - t0
    options = {
        "model": str(model.resolve()), "onnx": str(Path(onnx_path).resolve()),
        "from_checkpoint": from_checkpoint, "precision": precision, "backend_requested": backend,
        "min_batch": lo, "opt_batch": opt, "max_batch": hi, "workspace_mib": workspace_mib,
        "timing_cache": None if timing_cache is None else str(Path(os.fspath(timing_cache)).resolve()),
        "dla_core": dla_core, "version_compatible": bool(version_compatible),
        "allow_tf32": bool(allow_tf32) if chosen == "tensorrt" else None,
        "qdq_placement": (("tensorrt" if chosen == "tensorrt" else "onnxruntime")
                          if precision == "int8" and from_checkpoint else None),
        "calib_data": None if not isinstance(calibration, (str, os.PathLike)) else str(Path(calibration).resolve()),
        "calib_count": calib_count, "calib_method": calib_method,
        "int8_activations": activations if precision == "int8" and from_checkpoint else None,
        "ort_offline_level": ORT_OFFLINE_LEVEL if chosen == "onnxruntime" else None,
        "verification": verification, "notes": notes,
    }
    manifest = EngineManifest(
        backend=chosen, backend_version=str(backend_version), precision=precision, spec=spec.to_dict(),
        engine_file=out.name, engine_sha256=sha256_file(out), engine_bytes=out.stat().st_size,
        onnx_sha256=sha256_file(onnx_path), calibration_sha256=_calibration_sha(meta, calibration),
        min_batch=lo, opt_batch=opt, max_batch=hi, inputs=inputs, outputs=outputs, device=device,
        l4t_release=machine.get("l4t_release"),
        version_compatible=bool(version_compatible) and chosen == "tensorrt",
        build_options=options, covidedge_version=covidedge.__version__,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3), machine=machine)
    if chosen == "tensorrt":
        # the options dict is the manifest's: the self-check's numbers go into it before writing
        verification.update(_self_check_tensorrt(out, manifest, onnx_path, spec, opt, precision))
    mpath = manifest.write(manifest_path_for(out))

    if chosen == "tensorrt":
        note = (f"TensorRT {backend_version} {precision} engine for {describe_device(machine)}, "
                f"batch {lo}..{hi}, built in {seconds:.1f} s")
    else:
        note = (f"ONNX Runtime {backend_version} {precision} model (CPU), batch {lo}..{hi}, "
                f"built in {seconds:.1f} s")
    if fell_back:
        print(fallback_note(trt_present, cuda_present, backend_version, out), file=sys.stderr, flush=True)
    for extra in notes if chosen == "tensorrt" else []:  # stated, never silent
        print(f"note: {extra}", file=sys.stderr, flush=True)
    return BuildResult(engine_path=out, manifest_path=mpath, manifest=manifest, backend=chosen, note=note)


__all__ = ["BuildResult", "TrtBuildPlan", "build_engine", "validate_batch_range", "resolve_backend",
           "resolve_precision", "profile_shapes", "plan_tensorrt_build", "format_trt_errors",
           "default_engine_path", "check_options_for_backend",
           "check_tensorrt_opset", "fp32_island_layers", "ORT_OFFLINE_LEVEL"]
