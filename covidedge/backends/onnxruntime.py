"""ONNX Runtime backend: the embedded default where there is no TensorRT.

Runs the precision-bearing ONNX graphs (fp32, fp16, int8 Q/DQ) on the CPU by default, or with the
CUDA / TensorRT execution providers when ONNX Runtime has them. Thread counts and the graph
optimisation level are settable because they decide CPU latency. :func:`build_engine_file` makes
the ONNX Runtime engine: the graph optimised offline, self-checked against its source.
:func:`self_check` is every backend's build check: an engine just built against ONNX Runtime on
its source graph. ``BACKEND`` is this backend's row of the table in :mod:`covidedge.backends`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure, UsageError, first_line
from covidedge.formats.onnxfile import metadata_precision, open_onnx
from covidedge.backends.base import Backend, BuiltEngine, Runner, take_options
from covidedge.spec import ModelSpec

OPT_LEVELS = ("disable", "basic", "extended", "all")
#: The ONNX Runtime engine is optimised offline at the "extended" level, not "all":
#: "all" adds layout optimisations (NCHWc blocking for the CPU's vector width, AVX2 vs AVX-512),
#: and ONNX Runtime's graph-optimisation docs warn that such an offline model only runs on
#: compatible hardware. "extended" fusions are ONNX Runtime contrib operators (com.microsoft)
#: that the same or a later ONNX Runtime reloads on any CPU; the layout pass is then applied
#: online when the engine is loaded (OrtRunner uses "all").
#: https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html
ORT_OFFLINE_LEVEL = "extended"
#: Largest |probability| difference accepted, per precision, between an ONNX Runtime engine and
#: its source graph in the build's self-check. Both run the same precision, but offline fusion
#: reorders arithmetic: fp32 moves by rounding only; fp16 by a few fp16 ulps (eps 9.8e-4), seen
#: up to 1.2e-3 on the full U-Net; int8 by up to a quantization step where Q/DQ pairs fuse into
#: integer kernels. A difference past these is a broken optimisation, not rounding.
SELF_CHECK_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 2e-2}


def _ort():
    import onnxruntime

    return onnxruntime


def resolve_providers(providers: Optional[Sequence[str]]) -> List[str]:
    """Execution providers to use: those asked for (each must be available), else the CPU."""
    available = _ort().get_available_providers()
    if not providers:
        return ["CPUExecutionProvider"]
    names = []
    for p in providers:
        full = p if p.endswith("ExecutionProvider") else {
            "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider",
        }.get(p.lower(), p)
        if full not in available:
            raise RuntimeFailure(f"ONNX Runtime provider {full} is not available here; "
                                 f"available: {', '.join(available)}")
        names.append(full)
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


class OrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime. ``spec`` is read from the model's metadata when not given."""

    backend = "onnxruntime"

    def __init__(self, path, spec: Optional[ModelSpec] = None, precision: Optional[str] = None,
                 providers: Optional[Sequence[str]] = None, intra_op_threads: Optional[int] = None,
                 inter_op_threads: Optional[int] = None, graph_optimization_level: str = "all",
                 min_batch: int = 1, max_batch: Optional[int] = None):
        path, meta, spec = open_onnx(path, spec)
        if graph_optimization_level not in OPT_LEVELS:
            raise BadInputError(f"graph optimisation level {graph_optimization_level!r} is not one of "
                                f"{', '.join(OPT_LEVELS)}")
        super().__init__(spec, path, precision or metadata_precision(meta), min_batch, max_batch)
        self.metadata = meta
        self.providers = resolve_providers(providers)
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.graph_optimization_level = graph_optimization_level
        self.session = None

    def session_options(self):
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        if self.intra_op_threads:
            so.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads:
            so.inter_op_num_threads = int(self.inter_op_threads)
        so.log_severity_level = 3
        return so

    def _activate(self) -> None:
        ort = _ort()
        try:
            self.session = ort.InferenceSession(self.source, sess_options=self.session_options(),
                                                providers=self.providers)
        except Exception as exc:
            first = first_line(exc)
            raise RuntimeFailure(f"ONNX Runtime could not load the model: {first}",
                                 path=self.source) from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [self.spec.input_name]:
            raise IncompatibleModelError(
                f"graph inputs are {inputs}, its spec says ['{self.spec.input_name}']", path=self.source)
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in self.spec.output_names if n not in outputs]
        if missing:
            raise IncompatibleModelError(f"graph lacks outputs {missing} (has {outputs})", path=self.source)
        batch_dim = self.session.get_inputs()[0].shape[0]
        if isinstance(batch_dim, int):  # static batch graph
            self.min_batch = self.max_batch = batch_dim

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        try:
            values = self.session.run(list(self.spec.output_names), {self.spec.input_name: x})
        except Exception as exc:
            raise RuntimeFailure(f"ONNX Runtime inference failed: {str(exc).splitlines()[0]}",
                                 path=self.source) from exc
        return dict(zip(self.spec.output_names, values))

    def _deactivate(self) -> None:
        self.session = None

    def describe(self):
        d = super().describe()
        so_threads = None
        if self.session is not None:
            opts = self.session.get_session_options()
            so_threads = {"intra_op": opts.intra_op_num_threads, "inter_op": opts.inter_op_num_threads}
        d.update({"version": _ort().__version__, "providers": list(self.providers),
                  "device": "cuda" if any("CUDA" in p or "Tensorrt" in p for p in self.providers) else "cpu",
                  "graph_optimization_level": self.graph_optimization_level,
                  "threads": so_threads or {"intra_op": self.intra_op_threads or 0,
                                            "inter_op": self.inter_op_threads or 0}})
        return d


#: Seed of the batch a build's self-check runs: uniform noise in [0, 1), the input range.
SELF_CHECK_SEED = 0
#: A probability *map* (a segmenter's, one value per pixel) passes the self-check when at most
#: this share of its values is past the limit: int8 kernels of two runtimes requantise a few
#: pixels one step apart, and a deep network turns that into a large change on those pixels
#: only (OpenVINO against ONNX Runtime on the shipped int8 U-Net at batch 1: s8 graph max 0.10
#: on 0.03 % of the pixels, u8 graph max 0.19 on 0.12 %, mean 7e-4 and 1e-3). A broken engine
#: moves most pixels. A classifier's probabilities (a few values per image) get no share.
SELF_CHECK_PIXEL_SHARE = 0.005
#: Values per image from which an output is a map checked by share.
MAP_MIN_VALUES = 1024


def self_check(built: Runner, source_onnx, precision: str, limits: Mapping[str, float], *,
               batch: int, out, engine_name: str) -> Dict[str, Any]:
    """Accept or delete an engine just built: run ``built`` (a runner on the engine file) and
    ONNX Runtime (CPU) on its source graph ``source_onnx`` with one seeded batch of ``batch``
    images, and compare the probabilities.

    Within ``limits[precision]`` (largest |probability| difference) the engine file moves to
    ``out`` (it may be there already) and the numbers for the manifest are returned. Otherwise,
    or when either side fails to run, the engine file is deleted and RuntimeFailure (or the
    runner's own error) is raised; ``engine_name`` ('TensorRT') names the engine in the message."""
    spec = built.spec
    engine = Path(built.source)
    x = np.random.default_rng(SELF_CHECK_SEED).random((int(batch), spec.in_chans, *spec.input_size),
                                                       dtype=np.float32)
    try:
        with built as run, OrtRunner(source_onnx, spec=spec) as reference:
            got, ref = run.infer(x), reference.infer(x)
    except BaseException:
        engine.unlink(missing_ok=True)
        raise
    diffs = {k: float(np.max(np.abs(ref[k].astype(np.float64) - got[k].astype(np.float64))))
             for k in spec.output_names}
    prob, limit = spec.output_names[1], float(limits[precision])
    error = np.abs(ref[prob].astype(np.float64) - got[prob].astype(np.float64))
    is_map = error.size // max(1, int(batch)) >= MAP_MIN_VALUES
    share = float(np.mean(~(error <= limit)))  # NaN counts as past the limit
    result = {"batch": int(batch), "max_abs_diff": diffs, "reference": "source ONNX graph, ONNX Runtime CPU"}
    if is_map:
        result.update(share_past_limit=share, limit=limit, mean_abs_diff=float(np.mean(error)))
    if is_map and (share > SELF_CHECK_PIXEL_SHARE or not np.isfinite(error).all()):
        engine.unlink(missing_ok=True)
        raise RuntimeFailure(f"the {engine_name} engine's {prob} differ from ONNX Runtime's on its source "
                             f"graph by more than {limit:g} on {share:.2%} of the pixels (max {diffs[prob]:.3g}; "
                             f"at most {SELF_CHECK_PIXEL_SHARE:.1%} of the pixels may, for {precision})", path=out,
                             hint="a difference on most pixels is a broken engine, not rounding: report it with "
                                  "the graph, or build it for another backend (--backend onnxruntime)")
    if not is_map and (not np.isfinite(diffs[prob]) or diffs[prob] > limit):
        engine.unlink(missing_ok=True)
        raise RuntimeFailure(f"the {engine_name} engine's {prob} differ from ONNX Runtime's on its source "
                             f"graph by {diffs[prob]:.3g} (limit {limit:g} for {precision})", path=out,
                             hint=None if precision != "int8" else
                             "int8 engines of two runtimes may round differently; build it for another "
                             "backend (--backend onnxruntime) or precision")
    if engine.resolve() != Path(os.fspath(out)).resolve():
        os.replace(engine, out)
    return result


def _can_write(folder: Path, size: int = 1 << 20) -> bool:
    """True when ``size`` bytes can be written into ``folder`` (tried, then removed)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        return False


def optimise_failure(exc: BaseException, source, target) -> RuntimeFailure:
    """The error of a failed offline optimisation, blaming the right file: ONNX Runtime reports a
    write it could not finish (a full disk, a folder it may not write, a file size limit) as
    "Protobuf serialization failed" or a bare SystemError, which reads as if the source model
    were broken. When the optimised model could not be written, the error names its folder."""
    import shutil

    first = first_line(exc)
    target = Path(os.fspath(target))
    folder = target.parent
    wrote = "serializ" in first.lower() or isinstance(exc, SystemError) or "SystemError" in first
    if wrote or not _can_write(folder):
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
        except OSError:
            free = "free space unknown"
        return RuntimeFailure(f"ONNX Runtime could not write the optimised model into this folder ({first}; "
                              f"{free}): the disk is full, the folder is not writable, or a file size "
                              "limit applies", path=folder, hint="free some space, or build into another "
                                                                 "folder (--out)")
    return RuntimeFailure(f"ONNX Runtime could not optimise the model: {first}", path=source)


def build_engine_file(onnx_path, out, spec: ModelSpec, opt_batch: int, precision: str) -> Dict[str, Any]:
    """The ONNX Runtime engine: optimise ``onnx_path`` offline at :data:`ORT_OFFLINE_LEVEL` into
    ``out`` (an ONNX file), accepted by :func:`self_check` on a batch of
    ``opt_batch`` images within :data:`SELF_CHECK_ATOL`. Returns the self-check's numbers."""
    ort = _ort()
    out = Path(os.fspath(out))
    tmp = out.with_name(out.name + ".tmp.onnx")
    so = OrtRunner(onnx_path, spec=spec, graph_optimization_level=ORT_OFFLINE_LEVEL).session_options()
    so.optimized_model_filepath = os.fspath(tmp)
    try:
        ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise optimise_failure(exc, onnx_path, tmp) from exc
    return self_check(OrtRunner(tmp, spec=spec, precision=precision), onnx_path, precision, SELF_CHECK_ATOL,
                      batch=opt_batch, out=out, engine_name="optimised ONNX Runtime")


#: Options an ONNX Runtime runner takes (beyond the path); anything else is refused by name.
ORT_OPTIONS = ("providers", "intra_op_threads", "inter_op_threads", "graph_optimization_level",
               "min_batch", "max_batch", "spec", "precision")


def _device_providers(opts: Dict[str, Any], source) -> Dict[str, Any]:
    """ONNX Runtime takes ``device`` as 'cpu' / 'auto' (the CPU) or 'cuda' (CUDA provider)."""
    device = opts.pop("device", None)
    if device in (None, "auto", "cpu"):
        return opts
    if str(device).startswith("cuda"):
        if not opts.get("providers"):
            opts["providers"] = ["CUDAExecutionProvider"]
        return opts
    raise UsageError(f"device {device!r} does not apply to ONNX Runtime", path=source,
                     hint="use device 'cpu' or 'cuda'")


def open_ort(path, options: Mapping[str, Any], source, **fixed) -> OrtRunner:
    """An OrtRunner on ``path`` with the runner options in ``options`` (device 'cpu' / 'cuda'
    included) and ``fixed`` ones; any other option is refused by name."""
    opts = _device_providers(dict(options), source)
    kw = take_options(opts, ORT_OPTIONS, "the ONNX Runtime backend", source)
    kw.update(fixed)
    return OrtRunner(path, **kw)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: the embedded default, an offline-optimised ONNX file as its engine."""

    name = "onnxruntime"
    title = "ONNX Runtime"
    requires = ("onnxruntime",)
    suffix = ".ort.onnx"
    # unsigned activations first: measured faster on ONNX Runtime's CPU kernels (engine/build)
    int8_activations = ("uint8", "int8")
    runner_options = ORT_OPTIONS
    thread_option = "intra_op_threads"
    built_with = "artifact optimised with"
    embeds_spec = True
    autotune_forms = ("int8-u8", "int8-s8", "fp32")

    def build(self, graph, out, options, machine, say) -> BuiltEngine:
        ort = _ort()
        out = Path(os.fspath(out))
        tmp = out.with_name(out.name + ".tmp.onnx")
        so = OrtRunner(graph.path, spec=graph.spec, graph_optimization_level=ORT_OFFLINE_LEVEL).session_options()
        so.optimized_model_filepath = os.fspath(tmp)
        try:
            ort.InferenceSession(os.fspath(graph.path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise optimise_failure(exc, graph.path, tmp) from exc
        return BuiltEngine(tmp, graph.inputs, graph.outputs,
                           notes=[f"graph optimised offline at the '{ORT_OFFLINE_LEVEL}' level"],
                           options={"ort_offline_level": ORT_OFFLINE_LEVEL})

    def self_check(self, built, manifest, onnx_path, batch, out):
        return self_check(OrtRunner(built.candidate, spec=manifest.model_spec, precision=manifest.precision),
                          onnx_path, manifest.precision, SELF_CHECK_ATOL, batch=batch, out=out,
                          engine_name="optimised ONNX Runtime")

    def open_engine(self, path, manifest, requested, options):
        for k in ("min_batch", "max_batch", "spec", "precision"):
            if options.get(k) is not None:
                raise BadInputError(f"option {k} is fixed by the engine's manifest", path=path,
                                    hint="rebuild the engine to change it")
        opts = {k: v for k, v in options.items() if k not in ("min_batch", "max_batch", "spec", "precision")}
        return open_ort(path, opts, path, spec=manifest.model_spec, precision=manifest.precision,
                        min_batch=manifest.min_batch, max_batch=manifest.max_batch)

    def refuse_engine(self, path, manifest, requested):
        from covidedge.formats.manifest import rebuild_command

        cmd = rebuild_command(manifest, path.with_suffix(".engine")).replace(
            "--backend onnxruntime", "--backend tensorrt")
        raise IncompatibleModelError(
            f"was built for ONNX Runtime (TensorRT was absent at build time), not {requested}", path=path,
            hint=f"build a TensorRT engine with: {cmd}" if requested == "tensorrt" else
            f"load its source ONNX graph with --backend openvino: {(manifest.build_options or {}).get('onnx')}"
            if requested == "openvino" else "load its checkpoint to run on torch")

    def open_onnx(self, path, options):
        return open_ort(path, options, path)

    def open_checkpoint(self, path, options):
        raise IncompatibleModelError(
            f"is a training checkpoint; it runs on torch, not {self.name}", path=path,
            hint=f"build an engine first: covidedge build-engine {path} --backend onnxruntime")


BACKEND = OnnxRuntimeBackend()
