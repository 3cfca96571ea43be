"""The TensorRT runner: runs a covidedge engine on an NVIDIA GPU (or Jetson) with pycuda.

The engine's manifest is checked before TensorRT sees the file (size, sha256, TensorRT version,
GPU, compute capability, L4T release). ``activate()`` deserializes the plan once (on the DLA
core the engine was built for, if any), makes one execution context and one CUDA stream, and
allocates page-locked host buffers and device buffers once, for the engine's largest batch;
smaller batches use the front of them. CUDA events time the copy in (h2d), the network (compute)
and the copy out (d2h) of every call, reported in ``last_timings_ms``.

CUDA context: TensorRT uses the CUDA runtime's primary context. It is retained once per device
for the life of the process (:func:`primary_context`) and only pushed and popped around each
use, so any number of runners on one device share it and activate / deactivate cycles leave the
thread's context stack as they found it.

API per TensorRT version: 9 / 10 / 11 use the name-based I/O API (num_io_tensors,
get_tensor_name, get_tensor_mode, set_input_shape, set_tensor_address, execute_async_v3;
https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html);
the binding-index API is gone in 10
(https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-8x-to-10x-python-api-reference.html).
Runtime.deserialize_cuda_engine returns None on failure; the recorded log says why.
TensorRT 8.5 (JetPack 5) and 8.6 engines run through bindings and execute_async_v2, the API
those releases document for explicit-batch engines
(https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-861/api/python_api/infer/Core/ExecutionContext.html).
tensorrt and pycuda are imported in ``activate()`` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError, RuntimeFailure
from covidedge.backends.base import Runner
from covidedge.backends.tensorrt.logger import TENSORRT_INSTALL_HINT, format_trt_errors, make_recording_logger


def execution_api(tensorrt_version: str) -> str:
    """'tensors' (name-based, execute_async_v3) for TensorRT >= 9, 'bindings' (execute_async_v2)
    for 8.x."""
    from covidedge.formats.manifest import parse_version

    ver = parse_version(tensorrt_version)
    return "bindings" if ver and ver[0] < 9 else "tensors"


def parse_device(device) -> int:
    """0, '0', 'cuda', 'cuda:1', 'auto' -> a CUDA device index."""
    if device is None or device in ("auto", "cuda", "gpu"):
        return 0
    if isinstance(device, int) and device >= 0:
        return device
    text = str(device)
    if text.startswith(("cuda:", "gpu:")):
        text = text.split(":", 1)[1]
    if text.isdigit():
        return int(text)
    raise BadInputError(f"device {device!r} is not a CUDA device; expected an index such as 0 or 'cuda:0'")


def _import_backends():
    try:
        import tensorrt as trt
    except ImportError as exc:

        raise MissingDependencyError(f"TensorRT is not installed ({exc})", hint=TENSORRT_INSTALL_HINT) from exc
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise MissingDependencyError(f"pycuda is not installed ({exc}); TensorRT engines need it to run",
                                     hint="pip install pycuda (on Jetson: pip3 install pycuda "
                                          "with the CUDA toolkit on PATH)") from exc
    return trt, cuda


#: Primary contexts retained by this process, by device index (see :func:`primary_context`).
_PRIMARY_CONTEXTS: Dict[int, Any] = {}


def primary_context(cuda, device_index: int):
    """The primary CUDA context of ``device_index``, retained once per process.

    pycuda's ``retain_primary_context`` adds a reference each call, and ``detach`` on a primary
    context releases that reference without popping the context from the thread's stack, so
    retaining and detaching per activation leaks stack entries. Retaining once and pushing /
    popping per use does not; the context lives until the process exits."""
    ctx = _PRIMARY_CONTEXTS.get(device_index)
    if ctx is None:
        ctx = cuda.Device(device_index).retain_primary_context()
        _PRIMARY_CONTEXTS[device_index] = ctx
    return ctx


def dla_core_of(manifest) -> Optional[int]:
    """The DLA core a TensorRT engine was built for (its manifest's build options), or None."""
    core = (manifest.build_options or {}).get("dla_core")
    return None if core is None else int(core)


@dataclass
class _Buffers:
    """Host (page-locked) and device memory for every I/O tensor, at the largest batch."""

    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    host: Dict[str, np.ndarray] = field(default_factory=dict)
    device: Dict[str, Any] = field(default_factory=dict)

    def free(self) -> None:
        for mem in self.device.values():
            try:
                mem.free()
            except Exception:
                pass
        self.device.clear()
        self.host.clear()


class TrtRunner(Runner):
    """Runs a TensorRT engine built by covidedge, after checking its manifest against this machine."""

    backend = "tensorrt"

    def __init__(self, engine_path, manifest=None, device=0):
        from covidedge.formats.manifest import read_manifest

        path = os.fspath(engine_path)
        if not os.path.isfile(path):
            raise BadInputError("engine file not found", path=path)
        check = manifest is None
        if check:
            manifest = read_manifest(path)
        if manifest.backend != "tensorrt":
            raise IncompatibleModelError(f"manifest says this is a {manifest.backend} model, not a TensorRT "
                                         "engine", path=path, hint="open it with covidedge.runtime.load")
        if check:
            from covidedge.backends.tensorrt.compat import require_compatible

            require_compatible(manifest, path)
        self.manifest = manifest
        self.device_index = parse_device(device)
        super().__init__(manifest.model_spec, path, manifest.precision, manifest.min_batch, manifest.max_batch)
        self._trt = self._cuda = None
        self._cuda_ctx = None
        self._runtime = self._engine = self._context = None
        self._stream = None
        self._events = None
        self._buffers: Optional[_Buffers] = None
        self._current: Optional[Tuple[int, ...]] = None
        self._io: List[Dict[str, Any]] = []
        self._api = "tensors"
        self._logger = None
        self._stage_ms: Dict[str, float] = {}

    # -- context handling -----------------------------------------------------------------
    def _push(self):
        if self._cuda_ctx is not None:
            self._cuda_ctx.push()

    def _pop(self):
        if self._cuda_ctx is not None:
            try:
                self._cuda_ctx.pop()
            except Exception:
                pass

    # -- life cycle -----------------------------------------------------------------------
    def _activate(self) -> None:

        trt, cuda = _import_backends()
        self._trt, self._cuda = trt, cuda
        try:
            cuda.init()
            if cuda.Device.count() <= self.device_index:
                raise RuntimeFailure(f"CUDA device {self.device_index} does not exist "
                                     f"({cuda.Device.count()} found)", path=self.source)
            # The primary context is the one the CUDA runtime (and so TensorRT) uses.
            self._cuda_ctx = primary_context(cuda, self.device_index)
        except RuntimeFailure:
            raise
        except Exception as exc:
            raise RuntimeFailure(f"CUDA could not start on device {self.device_index}: {exc}",
                                 path=self.source) from exc
        self._push()
        try:
            self._logger = make_recording_logger(trt)
            self._runtime = trt.Runtime(self._logger)
            core = dla_core_of(self.manifest)
            if core is not None:
                # a DLA engine deserializes onto the runtime's DLA core (default 0)
                self._runtime.DLA_core = core
            if self.manifest.version_compatible:
                # A version-compatible plan embeds the lean runtime (host code); TensorRT runs it
                # only when allowed. The file's sha256 matched its manifest, so it is the plan
                # this covidedge built (see "Version Compatibility", TensorRT developer guide).
                self._runtime.engine_host_code_allowed = True
            with open(self.source, "rb") as f:
                blob = f.read()
            try:
                self._engine = self._runtime.deserialize_cuda_engine(blob)
            except Exception as exc:  # some releases raise instead of returning None
                self._logger.records.append(("error", f"{type(exc).__name__}: {exc}"))
                self._engine = None
            if self._engine is None:
                raise RuntimeFailure(format_trt_errors("deserialize", [], self._logger.records, source=self.source),
                                     hint="rebuild the engine on this machine with covidedge build-engine")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RuntimeFailure(format_trt_errors("create an execution context for", [],
                                                       self._logger.records, source=self.source))
            self._api = "tensors" if hasattr(self._engine, "num_io_tensors") and \
                execution_api(trt.__version__) == "tensors" else "bindings"
            self._io = self._describe_io()
            self._check_io()
            self._stream = cuda.Stream()
            self._events = [cuda.Event() for _ in range(4)]
            self._allocate()
        except BaseException:
            self._release()
            self._pop()
            raise
        self._pop()
        self._logger.records.clear()  # activation is done; a later error quotes its own call

    def _describe_io(self) -> List[Dict[str, Any]]:
        trt, eng = self._trt, self._engine
        io = []
        if self._api == "tensors":
            for i in range(eng.num_io_tensors):
                name = eng.get_tensor_name(i)
                io.append({"name": name, "index": i,
                           "input": eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                           "dtype": np.dtype(trt.nptype(eng.get_tensor_dtype(name)))})
        else:
            for i in range(eng.num_bindings):
                io.append({"name": eng.get_binding_name(i), "index": i, "input": eng.binding_is_input(i),
                           "dtype": np.dtype(trt.nptype(eng.get_binding_dtype(i)))})
        return io

    def _check_io(self) -> None:
        ins = [t["name"] for t in self._io if t["input"]]
        outs = [t["name"] for t in self._io if not t["input"]]
        if ins != [self.spec.input_name]:
            raise IncompatibleModelError(f"engine inputs are {ins}, its manifest says ['{self.spec.input_name}']",
                                         path=self.source)
        missing = [n for n in self.spec.output_names if n not in outs]
        if missing:
            raise IncompatibleModelError(f"engine lacks outputs {missing} (has {outs})", path=self.source)

    def _set_shape(self, shape: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
        """Set the input shape on the execution context; return every output's shape."""
        ctx = self._context
        inp = next(t for t in self._io if t["input"])
        if self._api == "tensors":
            ok = ctx.set_input_shape(inp["name"], shape)
        else:
            ok = ctx.set_binding_shape(inp["index"], shape)
        if not ok:
            raise BadInputError(f"engine refused input shape {shape} for '{inp['name']}'", path=self.source,
                                hint=f"batch must be {self.min_batch}..{self.max_batch}")
        out = {}
        for t in self._io:
            if not t["input"]:
                s = (ctx.get_tensor_shape(t["name"]) if self._api == "tensors"
                     else ctx.get_binding_shape(t["index"]))
                out[t["name"]] = tuple(int(d) for d in s)
                if any(d < 0 for d in out[t["name"]]):
                    raise RuntimeFailure(f"engine left output '{t['name']}' shape unresolved {out[t['name']]}",
                                         path=self.source)
        return out

    def _allocate(self) -> None:
        """Allocate every I/O buffer once, for the largest batch, and bind the addresses."""
        cuda = self._cuda
        inp = next(t for t in self._io if t["input"])
        top = (self.max_batch, self.spec.in_chans, *self.spec.input_size)
        shapes = {inp["name"]: top, **self._set_shape(top)}
        bufs = _Buffers(shapes=shapes)
        self._buffers = bufs
        for t in self._io:
            s = shapes[t["name"]]
            if not s or s[0] != self.max_batch:
                raise RuntimeFailure(f"engine output '{t['name']}' has shape {s} at batch {self.max_batch}; "
                                     "expected the batch first", path=self.source)
            host = cuda.pagelocked_empty(s, t["dtype"])
            bufs.host[t["name"]] = host
            bufs.device[t["name"]] = cuda.mem_alloc(max(host.nbytes, 1))
        if self._api == "tensors":
            for t in self._io:
                if not self._context.set_tensor_address(t["name"], int(bufs.device[t["name"]])):
                    raise RuntimeFailure(f"TensorRT refused the address of '{t['name']}'", path=self.source)
        self._current = top

    def _bind(self, shape: Tuple[int, ...]) -> Dict[str, np.ndarray]:
        """Set the input shape (when it changed) and return the host views for this batch."""
        n = shape[0]
        if shape != self._current:
            self._current = None  # until the new shape is set
            self._set_shape(shape)
            self._current = shape
        return {name: host[:n] for name, host in self._buffers.host.items()}

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        cuda = self._cuda
        self._push()
        try:
            self._logger.records.clear()  # only this call's messages explain its failure
            shape = tuple(int(d) for d in x.shape)
            host = self._bind(shape)
            device = self._buffers.device
            inp = next(t for t in self._io if t["input"])
            np.copyto(host[inp["name"]], x, casting="same_kind")
            stream = self._stream
            e_start, e_h2d, e_compute, e_d2h = self._events
            e_start.record(stream)
            cuda.memcpy_htod_async(device[inp["name"]], host[inp["name"]], stream)
            e_h2d.record(stream)
            if self._api == "tensors":
                ok = self._context.execute_async_v3(stream.handle)
            else:
                bindings = [int(device[t["name"]]) for t in sorted(self._io, key=lambda t: t["index"])]
                ok = self._context.execute_async_v2(bindings, stream.handle)
            if not ok:

                raise RuntimeFailure(format_trt_errors("run", [], self._logger.records, source=self.source))
            e_compute.record(stream)
            for t in self._io:
                if not t["input"]:
                    cuda.memcpy_dtoh_async(host[t["name"]], device[t["name"]], stream)
            e_d2h.record(stream)
            stream.synchronize()
            self._stage_ms = {"h2d": e_h2d.time_since(e_start), "compute": e_compute.time_since(e_h2d),
                              "d2h": e_d2h.time_since(e_compute)}
            return {name: host[name].astype(np.float32, copy=True) for name in self.spec.output_names}
        except (BadInputError, RuntimeFailure):
            raise
        except Exception as exc:
            raise RuntimeFailure(f"TensorRT inference failed: {type(exc).__name__}: {exc}", path=self.source) from exc
        finally:
            self._pop()

    def _release(self) -> None:
        if self._buffers is not None:
            self._buffers.free()
        self._buffers = None
        self._current = None
        # Order matters: the context before the engine before the runtime.
        self._events = None
        self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None

    def _deactivate(self) -> None:
        self._push()
        try:
            self._release()
        finally:
            self._pop()

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        dev = self.manifest.device or {}
        d.update({"version": self.manifest.backend_version, "device": dev.get("gpu") or f"cuda:{self.device_index}",
                  "compute_capability": dev.get("gpu_compute_capability"),
                  "device_index": self.device_index, "execution_api": self._api,
                  "version_compatible": self.manifest.version_compatible,
                  "dla_core": dla_core_of(self.manifest),
                  "opt_batch": self.manifest.opt_batch, "engine_sha256": self.manifest.engine_sha256})
        return d


__all__ = ["TrtRunner", "execution_api", "parse_device", "primary_context", "dla_core_of"]
