"""Check covidedge's TensorRT calls against the TensorRT Python bindings importable here.

Run as a script in a subprocess whose PYTHONPATH holds an unpacked bindings wheel (the package
``tensorrt_bindings``) and the repository, with LD_LIBRARY_PATH on the stand-in libraries of this
folder. It prints one JSON object: the bindings' version, the number of checks and the problems
found (empty when every attribute, enum member, property and method signature that covidedge
uses exists in this version). ``REQUIRED`` is importable without TensorRT: the test compares it
with the ``trt.<name>`` references in covidedge's sources.
"""

from __future__ import annotations

import inspect
import json
import re
import sys

#: What covidedge uses, as (path, what, when, arguments). ``path`` is "trt.Name[.Member]"; what is
#: "attr" (exists), "enum" (an enum member), "prop" (readable property), "setprop" (settable
#: property) or "method" (callable with ``arguments``: (positional count, keyword names)).
#: ``when`` names the TensorRT releases that need it: "all", "bindings" (8.x: the runner's
#: binding-index API), "tensors" (9 and later: the name-based API), "islands" (releases whose
#: fp16 plans pin fp32 islands), "vc" (version-compatible plans, 8.6 and later).
#: Used in covidedge/backends/tensorrt/: build.py (build_serialized), logger.py
#: (make_recording_logger) and runner.py (TrtRunner).
REQUIRED = [
    # module level
    ("trt.__version__", "attr", "all", None),
    ("trt.Builder", "attr", "all", None),
    ("trt.Runtime", "attr", "all", None),
    ("trt.OnnxParser", "attr", "all", None),
    ("trt.ILogger", "attr", "all", None),
    ("trt.nptype", "method", "all", (1, ())),
    ("trt.float32", "attr", "all", None),
    ("trt.DataType.FLOAT", "enum", "all", None),
    ("trt.DataType.HALF", "enum", "all", None),
    ("trt.MemoryPoolType.WORKSPACE", "enum", "all", None),
    ("trt.DeviceType.DLA", "enum", "all", None),
    ("trt.NetworkDefinitionCreationFlag", "attr", "all", None),
    ("trt.BuilderFlag", "attr", "all", None),
    ("trt.TensorIOMode.INPUT", "enum", "tensors", None),
    # the logger
    ("trt.ILogger.Severity.INTERNAL_ERROR", "enum", "all", None),
    ("trt.ILogger.Severity.ERROR", "enum", "all", None),
    ("trt.ILogger.Severity.WARNING", "enum", "all", None),
    ("trt.ILogger.Severity.INFO", "enum", "all", None),
    ("trt.ILogger.Severity.VERBOSE", "enum", "all", None),
    ("trt.ILogger.__init__", "method", "all", (0, ())),
    ("trt.ILogger.log", "method", "all", (2, ())),
    # building
    ("trt.Builder.__init__", "method", "all", (1, ())),
    ("trt.Builder.create_network", "method", "all", (1, ())),
    ("trt.Builder.create_builder_config", "method", "all", (0, ())),
    ("trt.Builder.create_optimization_profile", "method", "all", (0, ())),
    ("trt.Builder.build_serialized_network", "method", "all", (2, ())),
    ("trt.Builder.num_DLA_cores", "prop", "all", None),
    ("trt.OnnxParser.__init__", "method", "all", (2, ())),
    ("trt.OnnxParser.parse_from_file", "method", "all", (1, ())),
    ("trt.OnnxParser.num_errors", "prop", "all", None),
    ("trt.OnnxParser.get_error", "method", "all", (1, ())),
    ("trt.INetworkDefinition.num_inputs", "prop", "all", None),
    ("trt.INetworkDefinition.num_outputs", "prop", "all", None),
    ("trt.INetworkDefinition.get_input", "method", "all", (1, ())),
    ("trt.INetworkDefinition.get_output", "method", "all", (1, ())),
    ("trt.ITensor.name", "prop", "all", None),
    ("trt.ITensor.shape", "prop", "all", None),
    ("trt.ITensor.dtype", "prop", "all", None),
    ("trt.IBuilderConfig.set_memory_pool_limit", "method", "all", (2, ())),
    ("trt.IBuilderConfig.set_flag", "method", "all", (1, ())),
    ("trt.IBuilderConfig.clear_flag", "method", "all", (1, ())),
    ("trt.IBuilderConfig.add_optimization_profile", "method", "all", (1, ())),
    ("trt.IBuilderConfig.default_device_type", "setprop", "all", None),
    ("trt.IBuilderConfig.DLA_core", "setprop", "all", None),
    ("trt.IBuilderConfig.create_timing_cache", "method", "all", (1, ())),
    ("trt.IBuilderConfig.set_timing_cache", "method", "all", (1, ("ignore_mismatch",))),
    ("trt.IBuilderConfig.get_timing_cache", "method", "all", (0, ())),
    ("trt.ITimingCache.serialize", "method", "all", (0, ())),
    ("trt.IOptimizationProfile.set_shape", "method", "all", (4, ())),
    # fp32 islands of an fp16 graph (TensorRT 8.x)
    ("trt.INetworkDefinition.num_layers", "prop", "islands", None),
    ("trt.INetworkDefinition.get_layer", "method", "islands", (1, ())),
    ("trt.ILayer.name", "prop", "islands", None),
    ("trt.ILayer.num_outputs", "prop", "islands", None),
    ("trt.ILayer.get_output", "method", "islands", (1, ())),
    ("trt.ILayer.precision", "setprop", "islands", None),
    ("trt.ILayer.set_output_type", "method", "islands", (2, ())),
    # running
    ("trt.Runtime.__init__", "method", "all", (1, ())),
    ("trt.Runtime.DLA_core", "setprop", "all", None),
    ("trt.Runtime.engine_host_code_allowed", "setprop", "vc", None),
    ("trt.Runtime.deserialize_cuda_engine", "method", "all", (1, ())),
    ("trt.ICudaEngine.create_execution_context", "method", "all", (0, ())),
    ("trt.ICudaEngine.num_io_tensors", "prop", "tensors", None),
    ("trt.ICudaEngine.get_tensor_name", "method", "tensors", (1, ())),
    ("trt.ICudaEngine.get_tensor_mode", "method", "tensors", (1, ())),
    ("trt.ICudaEngine.get_tensor_dtype", "method", "tensors", (1, ())),
    ("trt.IExecutionContext.set_input_shape", "method", "tensors", (2, ())),
    ("trt.IExecutionContext.get_tensor_shape", "method", "tensors", (1, ())),
    ("trt.IExecutionContext.set_tensor_address", "method", "tensors", (2, ())),
    ("trt.IExecutionContext.execute_async_v3", "method", "tensors", (1, ())),
    ("trt.ICudaEngine.num_bindings", "prop", "bindings", None),
    ("trt.ICudaEngine.get_binding_name", "method", "bindings", (1, ())),
    ("trt.ICudaEngine.binding_is_input", "method", "bindings", (1, ())),
    ("trt.ICudaEngine.get_binding_dtype", "method", "bindings", (1, ())),
    ("trt.IExecutionContext.set_binding_shape", "method", "bindings", (2, ())),
    ("trt.IExecutionContext.get_binding_shape", "method", "bindings", (1, ())),
    ("trt.IExecutionContext.execute_async_v2", "method", "bindings", (2, ())),
]

_SIG = re.compile(r"^(?:\d+\.\s+)?(\w+)\((.*)\)\s*->")


def _split_params(text: str):
    """'self: X, a: List[int, str], b: int = 0' -> ['self: X', 'a: ...', 'b: int = 0']."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def signatures(func, name: str):
    """Every overload in a pybind11 docstring as [(param name, has default)], self dropped."""
    found = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        m = _SIG.match(line.strip())
        if not m or m.group(1) != name:
            continue
        params = []
        for p in _split_params(m.group(2)):
            pname = p.split(":", 1)[0].split("=", 1)[0].strip()
            if pname in ("self", "*args", "**kwargs"):
                continue
            params.append((pname, "=" in p))
        found.append(params)
    return found


def accepts(func, name: str, positional: int, keywords) -> str:
    """'' when some overload takes ``positional`` arguments plus ``keywords``, else why not."""
    sigs = signatures(func, name)
    if not sigs and inspect.isfunction(func):  # a Python function of the wheel's __init__.py
        try:
            inspect.signature(func).bind(*range(positional), **{k: None for k in keywords})
            return ""
        except TypeError as exc:
            return f"takes {inspect.signature(func)}, covidedge passes {positional} positional: {exc}"
    if not sigs:
        return "no signature in its docstring"
    for params in sigs:
        names = [p for p, _ in params]
        required = sum(1 for _, d in params if not d)
        given = positional + len(keywords)
        if required <= given <= len(params) and all(k in names[positional:] for k in keywords):
            return ""
    shown = " | ".join("(" + ", ".join(p + ("=" if d else "") for p, d in s) + ")" for s in sigs)
    return f"takes {shown}, covidedge passes {positional} positional + {list(keywords)}"


def _resolve(trt, path: str):
    obj = trt
    for part in path.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def main() -> int:
    import numpy as np
    import tensorrt_bindings as trt

    sys.modules["tensorrt"] = trt  # covidedge imports "tensorrt"; the wheel's package is this one
    from covidedge.backends.tensorrt.logger import enum_name, make_recording_logger
    from covidedge.backends.tensorrt.plan import fp32_island_layers, plan_tensorrt_build
    from covidedge.backends.tensorrt.runner import execution_api
    from covidedge.errors import BadInputError
    from covidedge.formats.manifest import VERSION_COMPATIBLE_SINCE, parse_version
    from covidedge.spec import PRECISIONS

    version = trt.__version__
    ver = parse_version(version)
    problems, checked = [], 0

    # every plan covidedge can make for this release: precision x DLA x version-compatible
    plans = []
    fixed = ((2, 1, 16, 16),) * 3
    for precision in PRECISIONS:
        for dla in (None, 0):
            for vc in (False, True):
                for tf32 in (False, True):
                    try:
                        plans.append(plan_tensorrt_build(version, precision, "image", fixed, dla_core=dla,
                                                           version_compatible=vc, allow_tf32=tf32))
                    except BadInputError as exc:
                        if not (dla is not None and precision == "fp32"):
                            problems.append(f"plan {precision} dla={dla} vc={vc}: refused: {exc}")
    api = execution_api(version)
    when = {"all": True, "bindings": api == "bindings", "tensors": api == "tensors",
            "islands": any(p.fp32_islands for p in plans), "vc": ver[:2] >= VERSION_COMPATIBLE_SINCE}
    for plan in plans:
        for name in plan.network_flags:
            checked += 1
            if not hasattr(trt.NetworkDefinitionCreationFlag, name):
                problems.append(f"plan {plan.precision}: trt.NetworkDefinitionCreationFlag.{name} is missing")
        for name in plan.builder_flags + plan.cleared_flags:
            checked += 1
            if not hasattr(trt.BuilderFlag, name):
                problems.append(f"plan {plan.precision}: trt.BuilderFlag.{name} is missing")

    for path, what, need, args in REQUIRED:
        if not when[need]:
            continue
        checked += 1
        try:
            obj = _resolve(trt, path)
        except AttributeError:
            problems.append(f"{path} is missing")
            continue
        owner = _resolve(trt, path.rsplit(".", 1)[0])
        raw = vars(owner).get(path.rsplit(".", 1)[1]) if isinstance(owner, type) else None
        if what in ("prop", "setprop"):
            if not isinstance(raw, property):
                problems.append(f"{path} is not a property ({type(raw).__name__})")
            elif what == "setprop" and raw.fset is None:
                problems.append(f"{path} is read-only; covidedge sets it")
        elif what == "method":
            if not callable(obj):
                problems.append(f"{path} is not callable")
            else:
                why = accepts(obj, path.rsplit(".", 1)[1], *args)
                if why:
                    problems.append(f"{path} {why}")

    # the logger: a real trt.ILogger subclass that records what TensorRT logs
    logger = make_recording_logger(trt)
    checked += 4
    if not isinstance(logger, trt.ILogger):
        problems.append("make_recording_logger does not return a trt.ILogger")
    logger.log(trt.ILogger.Severity.WARNING, "w1")
    logger.log(trt.ILogger.Severity.ERROR, "e1")
    logger.log(trt.ILogger.Severity.INFO, "dropped")
    if logger.records != [("warning", "w1"), ("error", "e1")]:
        problems.append(f"the recording logger kept {logger.records}")
    # TensorRT accepts it as a logger: the stand-in libnvinfer then returns no object, and
    # pybind11 says so ("returned nullptr") instead of refusing the argument's type
    for cls in (trt.Builder, trt.Runtime):
        try:
            cls(logger)
            problems.append(f"trt.{cls.__name__}(logger) made an object against the stand-in library")
        except TypeError as exc:
            if "nullptr" not in str(exc):
                problems.append(f"trt.{cls.__name__}(logger) refused covidedge's logger: {exc}")
    # type names as covidedge reads them: DataType for fp32 islands, numpy dtypes for I/O
    checked += 3
    islands = fp32_island_layers([("a", [trt.DataType.FLOAT]), ("b", [trt.DataType.HALF]),
                                    ("c", [enum_name(trt.DataType.FLOAT)])])
    if islands != [0, 2]:
        problems.append(f"fp32_island_layers reads DataType as {islands}, expected [0, 2]")
    if trt.float32 != trt.DataType.FLOAT:
        problems.append("trt.float32 is not DataType.FLOAT")
    if np.dtype(trt.nptype(trt.DataType.FLOAT)) != np.float32 or np.dtype(trt.nptype(trt.DataType.HALF)) != np.float16:
        problems.append("trt.nptype does not map FLOAT / HALF to float32 / float16")

    print(json.dumps({"version": version, "execution_api": api, "checked": checked,
                      "plans": len(plans), "problems": problems}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
