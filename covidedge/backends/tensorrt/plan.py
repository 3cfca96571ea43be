"""The TensorRT build plan: every decision of a TensorRT build that is not a TensorRT call.

Precision lives in the ONNX graph (fp16 weights, or int8 Q/DQ nodes). TensorRT >= 10 parses it
into a strongly typed network, so the graph alone decides the precision; TensorRT 8.5 (JetPack 5)
and 8.6 have no strong typing: they get the builder flags that allow the graph's precisions and,
for fp16, precision constraints that keep the graph's fp32 islands in fp32. The flags per
version, the limits and the checks are plain functions here, tested on machines without a GPU;
:mod:`covidedge.backends.tensorrt.build` only applies a finished :class:`TrtBuildPlan`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from covidedge.backends.tensorrt.logger import TENSORRT_INSTALL_HINT
from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError
from covidedge.formats.manifest import VERSION_COMPATIBLE_SINCE, parse_version
from covidedge.spec import PRECISIONS, check_choice

#: Oldest TensorRT this builder drives: 8.5 (JetPack 5.1) has set_memory_pool_limit,
#: build_serialized_network and the name-based I/O API.
MIN_TENSORRT = (8, 5)
#: Highest opset the TensorRT 8.x ONNX parser documents (onnx-tensorrt release/8.6-GA docs/operators.md);
#: the default export opset stays at it so one export builds on every TensorRT covidedge supports.
TENSORRT8_MAX_OPSET = 17


@dataclass
class TrtBuildPlan:
    """Everything :func:`~covidedge.backends.tensorrt.build.build_serialized` does, decided from the TensorRT version and the options."""

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
    check_choice("precision", precision, PRECISIONS)
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
    (:data:`TENSORRT8_MAX_OPSET`); TensorRT 10 and 11 parse every opset covidedge exports."""
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


__all__ = ["MIN_TENSORRT", "TENSORRT8_MAX_OPSET", "TrtBuildPlan", "plan_tensorrt_build",
           "check_tensorrt_opset", "FP32_ISLAND_DTYPES", "fp32_island_layers"]
