"""OpenVINO backend: runs the exported ONNX graphs on Intel CPUs (and other OpenVINO devices).

On x86 CPUs OpenVINO's kernels can beat ONNX Runtime (see benchmarks/results/), so covidedge
offers it behind the same Runner interface: ``covidedge.runtime.load(model.onnx,
backend="openvino")``, ``--backend openvino`` on infer / bench / evaluate, or an engine from
``covidedge build-engine --backend openvino``. It reads the precision-bearing ONNX export
directly (fp32, fp16, int8 Q/DQ); ONNX Runtime engine artifacts hold ONNX Runtime's own fused
operators and are refused by the selector. openvino is imported on
activation only. :func:`build_engine_file` makes the OpenVINO engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from covidedge.errors import BadInputError, MissingDependencyError, RuntimeFailure
from covidedge.backends.base import Runner, self_check
from covidedge.fileio import write_atomic
from covidedge.formats.onnxfile import metadata_precision, open_onnx
from covidedge.machine import package_version
from covidedge.spec import ModelSpec

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
#: OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 units (AMX, AVX512-BF16),
#: which moves fp32 logits by ~1e-3. covidedge asks for f32 unless told otherwise, so a graph
#: runs at the precision it carries; "bf16" is the opt-in speed-up.
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
#: Largest |probability| difference accepted, per precision, between OpenVINO (f32 compute) and
#: ONNX Runtime on the same graph in the build's self-check: other kernels, so int8 may differ
#: by a quantization step.
SELF_CHECK_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError("OpenVINO is not installed", hint="pip install openvino") from exc
    return openvino


class OpenVinoRunner(Runner):
    """Runs an ONNX model with OpenVINO on ``device`` (default CPU). ``threads`` caps the
    inference threads; ``performance_hint`` is LATENCY (one request at a time, the default) or
    THROUGHPUT; ``inference_precision`` is f32 (default: faithful to the graph), bf16 or f16."""

    backend = "openvino"

    def __init__(self, path, spec: Optional[ModelSpec] = None, device: str = "CPU",
                 threads: Optional[int] = None, performance_hint: str = "LATENCY",
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

    def _activate(self) -> None:
        ov = _openvino()
        config = {"PERFORMANCE_HINT": self.performance_hint,
                  "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(self.source), self.device, config)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeFailure(f"OpenVINO could not compile the model for {self.device}: {first}",
                                 path=self.source) from exc
        self._request = self.compiled.create_infer_request()

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        try:
            result = self._request.infer({self.spec.input_name: x})
        except Exception as exc:
            raise RuntimeFailure(f"OpenVINO inference failed: {str(exc).splitlines()[0]}",
                                 path=self.source) from exc
        by_name = {}
        for port, value in result.items():
            for name in port.get_names():
                by_name[name] = value
        return {n: np.array(by_name[n], dtype=np.float32, copy=True) for n in self.spec.output_names}

    def _deactivate(self) -> None:
        self._request = None
        self.compiled = None

    def describe(self):
        d = super().describe()
        d.update({"device": self.device.lower(), "performance_hint": self.performance_hint,
                  "inference_precision": self.inference_precision,
                  "threads": {"inference": self.threads or 0}})
        version = package_version("openvino")
        if version:
            d["version"] = version
        return d


def build_engine_file(onnx_path, out, spec: ModelSpec, opt_batch: int, precision: str) -> Dict[str, Any]:
    """The OpenVINO engine is the precision graph itself (OpenVINO compiles it for the CPU it runs
    on when loaded): a copy of ``onnx_path`` at ``out``, accepted by
    :func:`~covidedge.backends.base.self_check` (compiled by OpenVINO, on a batch of ``opt_batch``
    images, within :data:`SELF_CHECK_ATOL`). Returns the self-check's numbers."""
    out = Path(os.fspath(out))
    tmp = out.with_name(out.name + ".tmp.onnx")
    write_atomic(tmp, Path(os.fspath(onnx_path)).read_bytes())
    return self_check(OpenVinoRunner(tmp, spec=spec, precision=precision), onnx_path, precision,
                      SELF_CHECK_ATOL, batch=opt_batch, out=out, engine_name="OpenVINO")
