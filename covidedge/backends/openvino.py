"""OpenVINO backend: runs the exported ONNX graphs on Intel CPUs (and other OpenVINO devices).

On x86 CPUs OpenVINO's kernels can beat ONNX Runtime (see benchmarks/results/), so covidedge
offers it behind the same Runner interface: ``covidedge.runtime.load(model.onnx,
backend="openvino")``, ``--backend openvino`` on infer / bench / evaluate, or an engine from
``covidedge build-engine --backend openvino``. It reads the precision-bearing ONNX export
directly (fp32, fp16, int8 Q/DQ); ONNX Runtime engine artifacts hold ONNX Runtime's own fused
operators and are refused by the selector. openvino is imported on
activation only. ``BACKEND`` is this backend's row of the table in :mod:`covidedge.backends`:
its engine is the precision graph itself, self-checked against ONNX Runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError, RuntimeFailure, first_line
from covidedge.backends.base import Backend, BuiltEngine, Runner, take_options
from covidedge.backends.onnxruntime import self_check
from covidedge.fileio import write_atomic
from covidedge.formats.onnxfile import metadata_precision, open_onnx
from covidedge.machine import package_version
from covidedge.spec import ModelSpec

#: How a runner spends the CPU's threads (OpenVINO's performance hints, and AUTO): see
#: :class:`OpenVinoRunner`.
PERFORMANCE_HINTS = ("AUTO", "LATENCY", "THROUGHPUT")
#: OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 units (AMX, AVX512-BF16),
#: which moves fp32 logits by ~1e-3. covidedge asks for f32 unless told otherwise, so a graph
#: runs at the precision it carries; "bf16" is the opt-in speed-up. Each inference precision maps
#: to the precision an fp32 graph then computes in, as reports name it.
COMPUTED_AS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
INFERENCE_PRECISIONS = tuple(COMPUTED_AS)
#: Largest |probability| difference accepted, per precision, between OpenVINO (f32 compute) and
#: ONNX Runtime on the same graph in the build's self-check: other kernels, so int8 may differ
#: by a quantization step.
SELF_CHECK_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
#: The same for an engine built to compute in bf16 (``inference_precision="bf16"``, 8 mantissa
#: bits): the fp32 graph's probabilities move by up to a few bf16 steps through a deep network.
SELF_CHECK_ATOL_BF16 = 5e-2
#: Autotune forms that are a compute mode of the fp32 graph: form -> inference precision.
COMPUTE_FORMS = {"bf16": "bf16"}


#: Batch shapes an OpenVINO runner keeps compiled at once (the oldest is dropped past this).
STATIC_SHAPES = 4


def compile_cache_dir() -> Optional[Path]:
    """``openvino`` in covidedge's cache folder (beside ``models``: $COVIDEDGE_CACHE, else
    $XDG_CACHE_HOME/covidedge, else ~/.cache/covidedge), where OpenVINO keeps each compiled model
    so that the next process loads it instead of compiling again (about half the time of a
    compile for the shipped models); None where that folder cannot be made or written, and
    nothing is cached."""
    from covidedge.pretrained import cache_dir

    folder = cache_dir().parent / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError("OpenVINO is not installed", hint="pip install openvino") from exc
    return openvino


class OpenVinoRunner(Runner):
    """Runs an ONNX model with OpenVINO on ``device`` (default CPU). ``threads`` caps the
    inference threads; ``inference_precision`` is f32 (default: faithful to the graph), bf16 or f16.

    ``performance_hint`` says how the threads are spent. LATENCY: each batch is one request on
    every thread, the model compiled for each batch shape it meets with that shape static (the
    first at activation, others on first use; at most :data:`STATIC_SHAPES` kept): OpenVINO's CPU
    kernels for a static shape beat its dynamic-batch ones, by ~1.1x on the classifier and ~1.3x
    on the int8 segmenter at batch 1 here. THROUGHPUT: the images of a batch run one by one on
    OpenVINO's throughput streams (a stream per core or two), several at once. AUTO, the default:
    a single image as LATENCY, a batch of several as THROUGHPUT where the CPU has at least two
    streams (1.05-1.2x the images per second of LATENCY in ``infer FOLDER`` with the shipped
    models on 2 cores; docs/engines.md); one ``infer`` at a time per runner."""

    backend = "openvino"

    def __init__(self, path, spec: Optional[ModelSpec] = None, device: str = "CPU",
                 threads: Optional[int] = None, performance_hint: str = "AUTO",
                 inference_precision: str = "f32", precision: Optional[str] = None,
                 min_batch: int = 1, max_batch: Optional[int] = None):
        path, meta, spec = open_onnx(path, spec)
        hint = str(performance_hint).upper()
        if hint not in PERFORMANCE_HINTS:
            raise BadInputError(f"performance hint {performance_hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}")
        if inference_precision not in INFERENCE_PRECISIONS:
            raise BadInputError(f"inference precision {inference_precision!r} is not one of "
                                f"{', '.join(INFERENCE_PRECISIONS)}")
        if threads is not None and int(threads) < 1:
            raise BadInputError(f"threads={threads} is not a positive number")
        super().__init__(spec, path, precision or metadata_precision(meta), min_batch, max_batch)
        self.device = "CPU" if str(device).lower() in ("cpu", "auto") else str(device).upper()
        self.threads = None if threads is None else int(threads)
        self.performance_hint = hint
        self.inference_precision = inference_precision
        self.compiled = None
        self._model = None
        self._requests: Dict[tuple, object] = {}
        self._streaming: list = []  # one infer request per throughput stream, once compiled
        self._streams: Optional[int] = None  # how many streams the CPU gave (None: not asked yet)
        #: Where OpenVINO keeps compiled blobs for the next load (None: not cached).
        self.compile_cache: Optional[Path] = None

    def _activate(self) -> None:
        ov = _openvino()
        try:
            core = ov.Core()
            self._model = core.read_model(self.source)
        except Exception as exc:
            raise RuntimeFailure(f"OpenVINO could not read the model: {first_line(exc)}", path=self.source) from exc
        self._core, self._requests = core, {}
        self.compile_cache = compile_cache_dir()
        if self.compile_cache is not None:
            core.set_property({"CACHE_DIR": str(self.compile_cache)})
        h, w = self.spec.input_size
        self._request_for((max(1, self.min_batch), 1, int(h), int(w)))  # compile errors surface here

    def _compile(self, shape: tuple, hint: str):
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            model = self._model.clone()
            model.reshape({self.spec.input_name: list(shape)})
            return self._core.compile_model(model, self.device, config)
        except Exception as exc:
            raise RuntimeFailure(f"OpenVINO could not compile the model for {self.device} at input shape "
                                 f"{'x'.join(map(str, shape))}: {first_line(exc)}", path=self.source) from exc

    def _request_for(self, shape: tuple):
        """The infer request of the model compiled with ``shape`` static (compiled on first use)."""
        request = self._requests.get(shape)
        if request is not None:
            return request
        self.compiled = self._compile(shape, "LATENCY" if self.performance_hint == "AUTO" else self.performance_hint)
        if len(self._requests) >= STATIC_SHAPES:
            self._requests.pop(next(iter(self._requests)))
        request = self._requests[shape] = self.compiled.create_infer_request()
        return request

    def _stream_requests(self) -> list:
        """One request per throughput stream on the model compiled for single images (compiled on
        first use); empty where AUTO found fewer than two streams."""
        if self._streams is None:
            if self.performance_hint == "AUTO" and self.threads == 1:
                self._streams = 1
                return []
            h, w = self.spec.input_size
            compiled = self._compile((1, 1, int(h), int(w)), "THROUGHPUT")
            self._streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            if self._streams >= 2 or self.performance_hint == "THROUGHPUT":
                self._streaming = [compiled.create_infer_request() for _ in range(self._streams)]
        return self._streaming

    def _infer_streams(self, requests: list, x: np.ndarray) -> Dict[str, np.ndarray]:
        """Image i of ``x`` on request i mod len(requests), each request's previous image
        collected (into the batch's output arrays) before it takes the next: every stream busy."""
        n, names = int(x.shape[0]), self.spec.output_names
        out: Dict[str, np.ndarray] = {}
        owner: list = [None] * len(requests)

        def collect(j: int) -> None:
            requests[j].wait()
            got = _by_name(requests[j].results.items())
            for name in (name for name in names if name in got):
                if name not in out:
                    out[name] = np.empty((n,) + tuple(got[name].shape[1:]), dtype=np.float32)
                out[name][owner[j]] = got[name][0]

        for i in range(n):
            j = i % len(requests)
            if owner[j] is not None:
                collect(j)
            # x outlives the request's use of it: shared, not copied
            requests[j].start_async({self.spec.input_name: x[i:i + 1]}, share_inputs=True)
            owner[j] = i
        for j in range(len(requests)):
            if owner[j] is not None:
                collect(j)
        missing = [name for name in names if name not in out]
        if missing:
            raise RuntimeFailure(f"OpenVINO gave no output {', '.join(missing)}", path=self.source)
        return out

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        n = int(x.shape[0])
        streaming = self._stream_requests() if self.performance_hint == "THROUGHPUT" or (
            n > 1 and self.performance_hint == "AUTO") else []
        try:
            if not streaming:
                request = self._request_for(tuple(int(d) for d in x.shape))
                result = request.infer({self.spec.input_name: x}, share_inputs=True)
                return _named(result.items(), self.spec.output_names)
            return self._infer_streams(streaming, x)
        except RuntimeFailure:
            raise
        except Exception as exc:
            raise RuntimeFailure(f"OpenVINO inference failed: {first_line(exc)}", path=self.source) from exc

    def _deactivate(self) -> None:
        self._requests, self._streaming, self._streams = {}, [], None
        self.compiled = self._model = self._core = None

    @property
    def compute_precision(self) -> str:
        """bf16 for an fp32 graph run with bf16 compute (the manifest's ``inference_precision``);
        a float16 or int8 graph computes at the precision it carries."""
        return COMPUTED_AS[self.inference_precision] if self.precision == "fp32" else self.precision

    def describe(self):
        d = super().describe()
        d.update({"device": self.device.lower(), "performance_hint": self.performance_hint,
                  "streams": self._streams or 0,
                  "compile_cache": str(self.compile_cache or ""),
                  "inference_precision": self.inference_precision,
                  "threads": {"inference": self.threads or 0}})
        version = package_version("openvino")
        if version:
            d["version"] = version
        return d


def _by_name(results) -> Dict[str, np.ndarray]:
    """``{output name: array}`` from OpenVINO's ``{port: array}`` (arrays it reuses)."""
    return {name: value for port, value in results for name in port.get_names()}


def _named(results, names) -> Dict[str, np.ndarray]:
    """The outputs ``names`` as arrays of their own."""
    by_name = _by_name(results)
    return {n: np.array(by_name[n], dtype=np.float32, copy=True) for n in names}


#: Options an OpenVINO runner takes (beyond the path); anything else is refused by name.
OPENVINO_OPTIONS = ("device", "threads", "performance_hint", "inference_precision")


class OpenVinoBackend(Backend):
    """OpenVINO, on request: its engine is the precision graph, compiled for the CPU at load."""

    name = "openvino"
    title = "OpenVINO"
    requires = ("openvino",)
    build_requires = ("openvino",)
    install_hint = "pip install 'covidedge[openvino]'"
    suffix = ".ov.onnx"
    # OpenVINO fuses the signed symmetric Q/DQ graph well (benchmarks/results/): keep it.
    int8_activations = ("int8", "uint8")
    # int8 first: OpenVINO fuses the s8 Q/DQ graph into VNNI / AMX int8 kernels
    autotune_forms = ("int8-s8", "bf16", "fp32")
    build_options = (("inference_precision", "--inference-precision"),)
    runner_options = OPENVINO_OPTIONS
    thread_option = "threads"
    embeds_spec = True
    triton_targets = ("cpu",)
    triton_refusal = ("is an OpenVINO engine; the gpu target serves TensorRT engines and ONNX graphs",
                      "use --target cpu, or pass the ONNX model")

    def form_graph(self, form):
        return "fp32" if form in COMPUTE_FORMS else form

    def form_options(self, form):
        return {"inference_precision": COMPUTE_FORMS[form]} if form in COMPUTE_FORMS else {}

    def build(self, graph, out, options, machine, say) -> BuiltEngine:
        """A copy of the graph at ``<out>.tmp.onnx`` (OpenVINO compiles it for the CPU it runs
        on when loaded), for :meth:`self_check`. ``inference_precision`` (f32 unless given; bf16
        only from an fp32 graph) is recorded and used whenever the engine is loaded."""
        out = Path(os.fspath(out))
        compute = options.get("inference_precision") or "f32"
        if compute not in INFERENCE_PRECISIONS:
            raise BadInputError(f"inference precision {compute!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
        if compute != "f32" and graph.precision != "fp32":
            raise BadInputError(f"inference precision {compute} applies to an fp32 graph; this graph is "
                                f"{graph.precision}", path=graph.path, hint="drop --inference-precision")
        tmp = out.with_name(out.name + ".tmp.onnx")
        write_atomic(tmp, Path(os.fspath(graph.path)).read_bytes())
        note = ("OpenVINO reads the precision graph itself; it runs with f32 compute (no implicit bf16)"
                if compute == "f32" else f"OpenVINO runs the fp32 graph with {compute} compute")
        return BuiltEngine(tmp, graph.inputs, graph.outputs, notes=[note],
                           options={"inference_precision": compute})

    def self_check(self, built, manifest, onnx_path, batch, out):
        """Compiled by OpenVINO with the engine's inference precision, on a batch of ``batch``
        images, within :data:`SELF_CHECK_ATOL` (:data:`SELF_CHECK_ATOL_BF16` for bf16 compute)."""
        compute = built.options.get("inference_precision", "f32")
        limits = SELF_CHECK_ATOL if compute == "f32" else {manifest.precision: SELF_CHECK_ATOL_BF16}
        return self_check(OpenVinoRunner(built.candidate, spec=manifest.model_spec, precision=manifest.precision,
                                         inference_precision=compute),
                          onnx_path, manifest.precision, limits, batch=batch, out=out,
                          engine_name="OpenVINO")

    def open_engine(self, path, manifest, requested, options):
        kw = take_options(dict(options), OPENVINO_OPTIONS, "the OpenVINO backend", path)
        kw.setdefault("inference_precision", (manifest.build_options or {}).get("inference_precision") or "f32")
        return OpenVinoRunner(path, spec=manifest.model_spec, precision=manifest.precision,
                              min_batch=manifest.min_batch, max_batch=manifest.max_batch, **kw)

    def refuse_engine(self, path, manifest, requested):
        raise IncompatibleModelError(
            f"is an OpenVINO engine (the precision graph), not for {requested}", path=path,
            hint=f"load it with --backend openvino, or build for {requested} with covidedge build-engine")

    def open_onnx(self, path, options):
        kw = take_options(dict(options), OPENVINO_OPTIONS, "the OpenVINO backend", path)
        return OpenVinoRunner(path, **kw)


BACKEND = OpenVinoBackend()
