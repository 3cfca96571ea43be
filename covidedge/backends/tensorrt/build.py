"""Build a TensorRT plan from a precision-bearing ONNX graph, and self-check it.

:func:`build_serialized` applies a finished :class:`~covidedge.backends.tensorrt.plan.TrtBuildPlan`
(flags, profile, limits, timing cache, DLA) with TensorRT's builder and ONNX parser;
:func:`self_check_plan` runs the plan against ONNX Runtime on the same graph before its manifest
is written. tensorrt is imported inside the functions only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np

from covidedge.backends.onnxruntime import self_check
from covidedge.backends.tensorrt.logger import enum_name, format_trt_errors, make_recording_logger
from covidedge.backends.tensorrt.plan import TrtBuildPlan, fp32_island_layers
from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.fileio import write_atomic

#: Largest |probability| difference accepted, per precision, between a TensorRT engine and ONNX
#: Runtime (CPU) on the same graph in the build's self-check. TF32 is cleared, so fp32 differs by
#: kernel rounding only; fp16 by a few fp16 ulps; int8 by up to a quantization step, as TensorRT
#: fuses Q/DQ into other integer kernels than ONNX Runtime (the OpenVINO self-check's limit).
SELF_CHECK_ATOL = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}


def build_serialized(onnx_path, plan: TrtBuildPlan):
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
        typed = [(layer.name, [enum_name(layer.get_output(j).dtype) for j in range(layer.num_outputs)])
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
            dtype = enum_name(t.dtype)
        return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": dtype}

    inputs = [info(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [info(network.get_output(i)) for i in range(network.num_outputs)]
    return bytes(serialized), inputs, outputs, notes


def self_check_plan(engine, manifest, onnx_path, opt_batch: int):
    """Run the plan just written to ``engine`` (with its ``manifest``, not yet on disk) and its
    source graph on one seeded batch of ``opt_batch`` images; the plan is deleted and
    RuntimeFailure raised when the probabilities differ by more than :data:`SELF_CHECK_ATOL`.
    Returns the numbers for the manifest's build options."""
    from covidedge.backends.tensorrt.runner import TrtRunner

    return self_check(TrtRunner(engine, manifest=manifest), onnx_path, manifest.precision, SELF_CHECK_ATOL,
                      batch=opt_batch, out=engine, engine_name="TensorRT")


__all__ = ["SELF_CHECK_ATOL", "build_serialized", "self_check_plan"]
