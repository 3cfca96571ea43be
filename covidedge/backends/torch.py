"""torch backend: the reference that runs a training checkpoint as it is (it builds no engines).

Used for parity checks against exported graphs, as the PyTorch-eager baseline in benchmarks, and
on GPUs without TensorRT (fp16 on CUDA with ``half=True``). torch is imported on activation only.
"""

from __future__ import annotations

import os
import time
from typing import Dict

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, MissingDependencyError, RuntimeFailure
from covidedge.backends.base import Backend, Runner, take_options


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "torch is needed to run a checkpoint", hint="pip install 'covidedge[train]', "
            "or export the checkpoint to ONNX / an engine on a machine that has torch") from exc
    return torch


def read_checkpoint_spec(path):
    """The ModelSpec stored in a checkpoint (loads the file with torch)."""
    _torch()  # a clear MissingDependencyError where torch is not installed
    from covidedge.spec import ModelSpec
    from covidedge.formats.checkpoint import read_checkpoint

    return ModelSpec.from_dict(read_checkpoint(path)["spec"])


class TorchRunner(Runner):
    """Runs a covidedge checkpoint with torch, returning the same outputs as the exported graph."""

    backend = "torch"

    def __init__(self, checkpoint_path, device: str = "auto", half: bool = False, spec=None):
        path = os.fspath(checkpoint_path)
        if not os.path.isfile(path):
            raise BadInputError("checkpoint not found", path=path)
        self._device_request = device
        self.half = bool(half)
        self.model = None
        self.meta = {}
        if spec is None:
            spec = read_checkpoint_spec(path)
        super().__init__(spec, path, "fp16" if half else "fp32")
        self.device = None

    def _resolve_device(self, torch):
        dev = self._device_request
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeFailure("device 'cuda' was asked for, but torch sees no CUDA GPU",
                                 path=self.source, hint="use --device cpu")
        if self.half and not dev.startswith("cuda"):
            raise BadInputError("fp16 torch inference needs a CUDA device", path=self.source,
                                hint="drop --half, or run on a GPU")
        return torch.device(dev)

    def _activate(self) -> None:
        torch = _torch()
        from covidedge.models.wrapper import InferenceWrapper
        from covidedge.models.loading import load_checkpoint

        self.device = self._resolve_device(torch)
        model, spec, self.meta = load_checkpoint(self.source, device=str(self.device))
        wrapped = InferenceWrapper(model, spec.task, spec.temperature).to(self.device).eval()
        if self.half:
            wrapped = wrapped.half()
        self.model = wrapped

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        torch = _torch()
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            t0 = time.perf_counter()
            xt = torch.from_numpy(x).to(self.device, non_blocking=cuda)
            if self.half:
                xt = xt.half()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                h2d = (time.perf_counter() - t0) * 1e3
                start.record()
            logits, probs = self.model(xt)
            if cuda:
                end.record()
                torch.cuda.synchronize()
                t1 = time.perf_counter()
            out = {self.spec.output_names[0]: logits.float().cpu().numpy(),
                   self.spec.output_names[1]: probs.float().cpu().numpy()}
            if cuda:
                self._stage_ms = {"h2d": h2d, "compute": start.elapsed_time(end),
                                  "d2h": (time.perf_counter() - t1) * 1e3}
        return out

    def _deactivate(self) -> None:
        self.model = None
        if self.device is not None and self.device.type == "cuda":
            _torch().cuda.empty_cache()

    def describe(self):
        d = super().describe()
        d["device"] = str(self.device) if self.device is not None else self._device_request
        try:
            import torch

            d["version"] = torch.__version__
            d["threads"] = {"intra_op": torch.get_num_threads()}
        except ImportError:
            pass
        return d


#: Options a torch runner takes (beyond the checkpoint path).
TORCH_OPTIONS = ("device", "half")


class TorchBackend(Backend):
    """torch: runs checkpoints, builds no engines."""

    name = "torch"
    title = "torch"
    requires = ("torch",)
    builds = False
    suffix = ""
    runner_options = TORCH_OPTIONS
    triton_targets = ()

    def open_checkpoint(self, path, options):
        return TorchRunner(path, **take_options(dict(options), TORCH_OPTIONS, "the torch backend", path))

    def open_onnx(self, path, options):
        raise IncompatibleModelError("is an ONNX graph; torch runs checkpoints only", path=path,
                                     hint="load the .pt checkpoint for torch, or use --backend onnxruntime")

    def threads(self, threads):
        """Use ``threads`` torch intra-op threads (a checkpoint being timed), then restore."""
        import contextlib

        @contextlib.contextmanager
        def scoped():
            if threads is None:
                yield
                return
            torch = _torch()
            before = torch.get_num_threads()
            torch.set_num_threads(int(threads))
            try:
                yield
            finally:
                torch.set_num_threads(before)

        return scoped()


BACKEND = TorchBackend()
