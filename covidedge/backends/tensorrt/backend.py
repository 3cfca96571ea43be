"""TensorRT's row of the backend table: plans built with TensorRT's builder from the
precision-bearing graph (:mod:`.plan`, :mod:`.build`), run by :class:`.runner.TrtRunner`, tied
to the TensorRT release and GPU they were built with (:mod:`.compat`). Importing this module
imports neither tensorrt nor pycuda."""

from __future__ import annotations

from pathlib import Path

from covidedge.backends.base import Backend, BuiltEngine, take_options
from covidedge.backends.tensorrt.logger import TENSORRT_INSTALL_HINT
from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError, UsageError
from covidedge.fileio import write_atomic
from covidedge.formats.manifest import parse_version
from covidedge.formats.onnxfile import KEY_TRT_COMPATIBLE

#: Options a TensorRT runner takes (beyond the engine path).
TRT_OPTIONS = ("device",)


class TensorRtBackend(Backend):
    """TensorRT: preferred wherever it and pycuda are installed."""

    name = "tensorrt"
    title = "TensorRT"
    requires = ("tensorrt", "pycuda")
    build_requires = ("tensorrt",)
    install_hint = TENSORRT_INSTALL_HINT
    targets = ("gpu",)
    suffix = ".engine"
    artifact = "engine"
    build_options = (("workspace_mib", "--workspace"), ("timing_cache", "--timing-cache"),
                     ("dla_core", "--dla-core"), ("version_compatible", "--version-compatible"),
                     ("allow_tf32", "--allow-tf32"))
    qdq_placement = "tensorrt"
    int8_activations = ("int8",)
    autotune_forms = ("int8-s8", "fp16")
    probe_backends = True
    device_keys = ("gpu", "gpu_compute_capability", "gpu_memory_mib", "gpu_driver", "board")
    runner_options = TRT_OPTIONS
    threads_note = "--threads does not apply to TensorRT (the GPU does the work); not used"
    triton_targets = ("gpu",)
    triton_file = "model.plan"
    triton_gpu_config = {"platform": "tensorrt_plan"}
    triton_refusal = ("is a TensorRT engine; the cpu target runs ONNX Runtime or OpenVINO",
                      "use --target gpu for TensorRT engines, or pass the ONNX model")

    def engine_name(self, stem, precision, version=None, compute_capability=None) -> str:
        """``cls.fp16.trt10.3.sm87.engine``: the TensorRT release and GPU architecture it is tied
        to, so engines of several machines can share a folder."""
        target = "trt"
        ver = parse_version(version)
        if len(ver) >= 2:
            target += f"{ver[0]}.{ver[1]}"
        if compute_capability:
            target += ".sm" + str(compute_capability).replace(".", "")
        return f"{stem}.{precision}.{target}{self.suffix}"

    def build(self, graph, out, options, machine, say) -> BuiltEngine:
        """Plan and build a TensorRT engine into ``out`` (self-checked after its manifest exists)."""
        from covidedge.backends.tensorrt import build as trt_build
        from covidedge.backends.tensorrt.plan import check_tensorrt_opset, plan_tensorrt_build
        from covidedge.machine import describe_device

        version = str(machine.get(self.name) or "unknown")
        if graph.precision == "int8" and graph.meta.get(KEY_TRT_COMPATIBLE) == "false":
            raise IncompatibleModelError(
                "this int8 graph has asymmetric uint8 activations, which TensorRT's explicit "
                "quantization does not take", path=graph.path,
                hint="re-quantize with signed int8 symmetric activations (the export default)")
        check_tensorrt_opset(version, graph.opset, source=graph.path)
        plan = plan_tensorrt_build(version, graph.precision, graph.spec.input_name, graph.shapes,
                                   **{k: options.get(k) for k, _ in self.build_options})
        lo, opt, hi = (s[0] for s in graph.shapes)
        say(f"building a TensorRT {version} {graph.precision} engine for {describe_device(machine)}, "
            f"batch {lo}..{hi} (opt {opt}); this can take minutes")
        blob, inputs, outputs, build_notes = trt_build.build_serialized(graph.path, plan)
        write_atomic(out, blob)
        return BuiltEngine(Path(out), inputs, outputs, notes=plan.notes + build_notes,
                           device={k: machine.get(k) for k in self.device_keys},
                           options={"allow_tf32": bool(options.get("allow_tf32"))})

    def self_check(self, built, manifest, onnx_path, batch, out):
        from covidedge.backends.tensorrt import build as trt_build

        return trt_build.self_check_plan(built.candidate, manifest, onnx_path, batch)

    def describe_build(self, version, precision, batch, seconds, device) -> str:
        lo, hi = batch
        return (f"TensorRT {version} {precision} engine for {device}, batch {lo}..{hi}, "
                f"built in {seconds:.1f} s")

    def announce_notes(self) -> bool:
        return True

    def machine_differences(self, manifest, machine):
        from covidedge.backends.tensorrt.compat import machine_differences

        return machine_differences(manifest, machine)

    def open_engine(self, path, manifest, requested, options):
        from covidedge.backends.tensorrt.runner import TrtRunner

        kw = take_options(dict(options), TRT_OPTIONS, "the TensorRT backend", path)
        return TrtRunner(path, manifest=manifest, **kw)

    def refuse_engine(self, path, manifest, requested):
        onnx = (manifest.build_options or {}).get("onnx")
        raise IncompatibleModelError(
            f"is a TensorRT engine; it runs on TensorRT only, not {requested}", path=path,
            hint=f"load its ONNX graph with --backend {requested}" + (f": {onnx}" if onnx else ""))

    def open_onnx(self, path, options):
        """ONNX on TensorRT without an engine: ONNX Runtime's TensorRT execution provider."""
        import onnxruntime

        from covidedge.backends.onnxruntime import open_ort

        if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
            raise MissingDependencyError(
                "ONNX Runtime here has no TensorRT execution provider to run this ONNX graph on TensorRT",
                path=path, hint="build an engine with 'covidedge build-engine', or use --backend onnxruntime")
        opts = dict(options)
        if opts.get("providers"):
            raise BadInputError("providers cannot be combined with backend 'tensorrt'", path=path)
        if opts.get("device") not in (None, "auto") and not str(opts.get("device")).startswith("cuda"):
            raise UsageError(f"device {opts['device']!r} does not apply to TensorRT", path=path)
        opts.pop("device", None)
        opts["providers"] = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
        return open_ort(path, opts, path)


BACKEND = TensorRtBackend()
