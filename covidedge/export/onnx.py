"""Export a checkpoint to one self-contained ONNX file that carries its spec, then prove it.

The graph takes ``image`` (N, 1, H, W) float32 in [0, 1] and returns ``logits`` and
``probabilities`` (softmax over classes, or a sigmoid per mask channel). Its ``metadata_props``
hold the ModelSpec and where the graph came from (checkpoint sha256, precision, opset), so every
later stage can check it got the model it expects. After writing, the file goes through
``onnx.checker`` (full check) and an ONNX Runtime parity check against the torch model.

Exporter: torch's TorchScript-based exporter (``dynamo=False``) by default. With torch 2.13 it
writes the opset that was asked for directly, folds BatchNorm into the convolutions, emits plain
``GlobalAveragePool`` / ``Flatten`` / ``Gemm`` and takes about 2 s for these models. The dynamo
exporter writes opset 18 and converts down afterwards, about eight times slower, and the
conversion fails for some ops (a ``ReduceMean`` with an axes input, for one).
``exporter="dynamo"`` remains available and is verified the same way: a graph whose opset is
not the one asked for is an error, never a silent change.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure, first_line
from covidedge.fileio import sha256_file
from covidedge.formats.onnxfile import KEY_CHECKPOINT_SHA, KEY_DYNAMIC_BATCH, KEY_EXPORTER, KEY_OPSET, KEY_PRECISION, KEY_VERSION, check_onnx, graph_io, graph_opset, save_onnx, set_metadata
from covidedge.backends.tensorrt.plan import TENSORRT8_MAX_OPSET
from covidedge.spec import MASK_THRESHOLD, ModelSpec

#: Opsets accepted: 13 is the first with the ops these models need in their current form;
#: 20 is the newest that TensorRT 10.3 (JetPack 6) parses.
MIN_OPSET = 13
MAX_OPSET = 20
DEFAULT_OPSET = 17

#: Largest |probability| difference between the ONNX graph (fp32) and the torch model that
#: still counts as the same model; float32 re-association noise is around 1e-6.
PARITY_ATOL = 1e-3

#: Images in the default parity batch (seeded, smooth synthetic images).
PARITY_IMAGES = 4


EXPORTERS = ("torchscript", "dynamo")

def synthetic_images(n: int, size=(256, 256), seed: int = 0) -> np.ndarray:
    """``n`` deterministic smooth grayscale images (N, 1, H, W) float32 in [0, 1]: seeded noise,
    box-blurred, with a brighter central ellipse, so activations look like an X-ray's rather
    than white noise. Used when an export's parity check gets no real images."""
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, 1, h, w), np.float32)
    k = max(1, min(h, w) // 16)
    for i in range(n):
        img = rng.random((h, w), dtype=np.float32)
        for axis in (0, 1):  # separable box blur, twice, for smooth structure
            for _ in range(2):
                c = np.cumsum(np.pad(img, [(k, k) if a == axis else (0, 0) for a in (0, 1)],
                                     mode="edge"), axis=axis, dtype=np.float64)
                hi = np.take(c, range(2 * k, c.shape[axis]), axis=axis)
                lo = np.take(c, range(0, c.shape[axis] - 2 * k), axis=axis)
                img = ((hi - lo) / (2 * k)).astype(np.float32)
        cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
        ellipse = ((yy - cy) / (0.35 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 < 1.0
        img = img + 0.5 * ellipse
        img -= img.min()
        img /= max(float(img.max()), 1e-6)
        out[i, 0] = img
    return out


def run_onnx(path: Union[str, Path], x: np.ndarray, *, threads: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Run an ONNX file in ONNX Runtime on the CPU, through the ONNX Runtime backend's runner
    (``threads`` intra-op threads); a batch beyond the graph's batch range (a static-batch
    graph) is fed in pieces by :func:`~covidedge.backends.base.infer_fitted`."""
    from covidedge.backends.base import infer_fitted
    from covidedge.backends.onnxruntime import OrtRunner

    with OrtRunner(path, intra_op_threads=threads) as runner:
        return infer_fitted(runner, np.ascontiguousarray(x, np.float32))


def parity_stats(task: str, reference: Mapping[str, np.ndarray],
                 candidate: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """How close ``candidate`` outputs are to ``reference``: max |diff| per output, and
    argmax agreement (classifier) or mask pixel agreement at 0.5 (segmenter), as fractions."""
    stats: Dict[str, Any] = {"max_abs_diff": {}}
    for name in ("logits", "probabilities"):
        a = np.asarray(reference[name], np.float64)
        b = np.asarray(candidate[name], np.float64)
        if a.shape != b.shape:
            raise RuntimeFailure(f"output '{name}' has shape {b.shape}, expected {a.shape}")
        stats["max_abs_diff"][name] = float(np.max(np.abs(a - b))) if a.size else 0.0
    pa, pb = reference["probabilities"], candidate["probabilities"]
    if task == "classifier":
        stats["argmax_agreement"] = float(np.mean(pa.argmax(1) == pb.argmax(1)))
    else:
        stats["mask_agreement"] = float(np.mean((pa > MASK_THRESHOLD) == (pb > MASK_THRESHOLD)))
    stats["n"] = int(len(pa))
    return stats


# -- the report -----------------------------------------------------------------------------
@dataclass
class ExportReport:
    """What an export wrote and how well it matches its reference.

    ``parity`` compares the graph with the torch model (fp32) or, for fp16 / int8 graphs,
    with both the torch model and the fp32 graph (``parity["vs_fp32_graph"]``).
    """

    path: str
    sha256: str
    size_mb: float
    opset: int
    precision: str
    task: str
    inputs: Dict[str, List[Union[int, str]]]
    outputs: Dict[str, List[Union[int, str]]]
    parity: Dict[str, Any]
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    dynamic_batch: bool = True
    metadata: Dict[str, str] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)
    #: (parity inputs, the torch model's outputs on them) of an fp32 export, kept in memory so a
    #: conversion of this export compares with the checkpoint without running it again.
    reference: Optional[Tuple[np.ndarray, Dict[str, np.ndarray]]] = field(default=None, repr=False,
                                                                           compare=False)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(replace(self, reference=None))
        d.pop("reference")
        return json.loads(json.dumps(d))

    def summary_lines(self) -> List[str]:
        """A short human-readable description, one fact per line."""
        p = self.parity
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in p.get("max_abs_diff", {}).items())
        agree = ("argmax agreement" if "argmax_agreement" in p else "mask agreement")
        agree_v = p.get("argmax_agreement", p.get("mask_agreement"))
        lines = [
            f"wrote     {self.path} ({self.size_mb:.2f} MB, sha256 {self.sha256[:16]})",
            f"graph     {self.task}, {self.precision}, opset {self.opset}, "
            f"{'dynamic' if self.dynamic_batch else 'static'} batch",
            "inputs    " + "; ".join(f"{k} {v}" for k, v in self.inputs.items()),
            "outputs   " + "; ".join(f"{k} {v}" for k, v in self.outputs.items()),
        ]
        if agree_v is None:
            lines.append("parity    not run")
        else:
            lines.append(f"parity    vs checkpoint on {p.get('n')} images: max |diff| {diffs}; "
                         f"{agree} {100 * agree_v:.1f}%")
        vs = p.get("vs_fp32_graph")
        if vs:
            d = ", ".join(f"{k} {v:.2e}" for k, v in vs["max_abs_diff"].items())
            lines.append(f"vs fp32   max |diff| {d}")
        return lines


# -- export -----------------------------------------------------------------------------------
def _check_opset(opset: int) -> int:
    try:
        opset = int(opset)
    except (TypeError, ValueError):
        raise BadInputError(f"opset {opset!r} is not a number",
                            hint=f"pass an opset from {MIN_OPSET} to {MAX_OPSET}") from None
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BadInputError(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}",
                            hint=f"TensorRT 10 parses up to opset {MAX_OPSET}, TensorRT 8.x up to "
                                 f"{TENSORRT8_MAX_OPSET}; "
                                 f"{DEFAULT_OPSET} is the default")
    return opset


def _torch_to_onnx(wrapper, dummy, *, opset: int, dynamic_batch: bool, exporter: str):
    """Run torch's exporter and return the ModelProto (not yet written anywhere)."""
    import onnx
    import torch

    names = dict(input_names=["image"], output_names=["logits", "probabilities"])
    if exporter == "torchscript":
        buf = io.BytesIO()
        axes = ({"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}}
                if dynamic_batch else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (dummy,), buf, dynamo=False, opset_version=opset,
                              do_constant_folding=True, dynamic_axes=axes,
                              training=torch.onnx.TrainingMode.EVAL, **names)
        return onnx.load_from_string(buf.getvalue())
    # dynamo
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (dummy,), None, dynamo=True, opset_version=opset,
                                    dynamic_shapes=shapes, optimize=True, verbose=False, **names)
    return program.model_proto


def _drop_initializer_identities(model) -> int:
    """Remove ``Identity`` nodes that only alias an initializer (torch's constant folding
    shares equal tensors, e.g. the all-zero biases of folded BatchNorms, through them); their
    consumers read the initializer directly. Returns how many were removed."""
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {}
    for node in list(model.graph.node):
        if (node.op_type == "Identity" and node.input[0] in inits
                and node.output[0] not in outputs):
            alias[node.output[0]] = node.input[0]
            model.graph.node.remove(node)
    if alias:
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
        for vi in list(model.graph.value_info):
            if vi.name in alias:
                model.graph.value_info.remove(vi)
    return len(alias)


def _check_parity_inputs(x, spec: ModelSpec) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        except Exception:
            raise BadInputError(f"parity_inputs is a {type(x).__name__}, "
                                "expected an array") from None
    want = (spec.in_chans, *spec.input_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or len(x) == 0:
        raise BadInputError(f"parity_inputs has shape {tuple(x.shape)}, expected (N, "
                            + ", ".join(map(str, want)) + ") with N >= 1",
                            hint="preprocess images with covidedge.data.preprocess")
    if not np.isfinite(x).all():
        raise BadInputError("parity_inputs contains NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def torch_outputs(wrapper, x: np.ndarray, batch: int = 8) -> Dict[str, np.ndarray]:
    """Outputs of an InferenceWrapper on ``x``, in batches, as numpy arrays."""
    import torch

    logits, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            lo, pr = wrapper(torch.from_numpy(np.ascontiguousarray(x[start:start + batch])))
            logits.append(lo.float().numpy())
            probs.append(pr.float().numpy())
    return {"logits": np.concatenate(logits), "probabilities": np.concatenate(probs)}


def export_onnx(checkpoint_path: Union[str, Path], out_path: Union[str, Path], *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                parity_inputs: Optional[np.ndarray] = None, check: bool = True,
                exporter: str = "torchscript", parity_atol: float = PARITY_ATOL) -> ExportReport:
    """Export a checkpoint to an fp32 ONNX file and check it.

    The graph has input ``image`` (N, 1, H, W) (static N = 1 with ``dynamic_batch=False``) and
    outputs ``logits`` / ``probabilities``. ``check=True`` runs the full ONNX checker; parity
    against the torch model always runs, on ``parity_inputs`` or on seeded synthetic images,
    and a probability difference above ``parity_atol`` is a RuntimeFailure.
    """
    from covidedge import __version__
    from covidedge.models.wrapper import InferenceWrapper
    from covidedge.formats.checkpoint import checkpoint_sha256
    from covidedge.models.loading import load_checkpoint

    opset = _check_opset(opset)
    if exporter not in EXPORTERS:
        raise BadInputError(f"exporter {exporter!r} is unknown; expected one of {EXPORTERS}")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise BadInputError("output file must end in .onnx", path=out_path,
                            hint="pass --out model.onnx")
    model, spec, _meta = load_checkpoint(checkpoint_path)
    wrapper = InferenceWrapper(model, spec.task, spec.temperature).eval()
    if parity_inputs is None:
        x = synthetic_images(PARITY_IMAGES, spec.input_size, seed=0)
        if spec.in_chans != 1:
            x = np.repeat(x, spec.in_chans, axis=1)
    else:
        x = _check_parity_inputs(parity_inputs, spec)

    import torch

    dummy = torch.from_numpy(x[:2] if dynamic_batch else x[:1])
    try:
        proto = _torch_to_onnx(wrapper, dummy, opset=opset, dynamic_batch=dynamic_batch,
                               exporter=exporter)
    except Exception as exc:
        first = first_line(exc)
        raise RuntimeFailure(f"torch.onnx.export ({exporter}) failed: {first[:200]}",
                             path=checkpoint_path,
                             hint="try another --opset or report the checkpoint") from exc
    got = graph_opset(proto)
    if got != opset:
        raise IncompatibleModelError(
            f"the {exporter} exporter wrote opset {got}, but opset {opset} was asked for",
            path=checkpoint_path, hint=f"pass --opset {got} or use the torchscript exporter")
    _drop_initializer_identities(proto)
    bn = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if bn:
        raise RuntimeFailure(f"exported graph still has {len(bn)} BatchNormalization node(s) "
                             f"(first: {bn[0]}); expected them folded into convolutions",
                             path=checkpoint_path)

    ckpt_sha = checkpoint_sha256(checkpoint_path)
    meta = dict(spec.to_metadata())
    meta.update({KEY_VERSION: __version__, KEY_CHECKPOINT_SHA: ckpt_sha, KEY_PRECISION: "fp32",
                 KEY_OPSET: str(opset), KEY_DYNAMIC_BATCH: "true" if dynamic_batch else "false",
                 KEY_EXPORTER: exporter})
    set_metadata(proto, meta)
    proto.producer_name = "covidedge"
    proto.producer_version = __version__
    proto.doc_string = (f"covidedge {spec.task} '{spec.model_name}' exported from checkpoint "
                        f"sha256 {ckpt_sha[:16]}")
    save_onnx(proto, out_path)
    if check:
        check_onnx(out_path)

    ref = torch_outputs(wrapper, x)
    got_out = run_onnx(out_path, x)
    parity = parity_stats(spec.task, ref, got_out)
    worst = parity["max_abs_diff"]["probabilities"]
    if not worst <= parity_atol:
        raise RuntimeFailure(f"ONNX graph differs from the checkpoint: max |probability diff| "
                             f"{worst:.3g} > {parity_atol:g}", path=out_path,
                             hint="try another --opset or the other exporter")
    io_ = graph_io(proto)
    return ExportReport(
        path=str(out_path), sha256=sha256_file(out_path),
        size_mb=round(out_path.stat().st_size / 1e6, 3), opset=opset, precision="fp32",
        task=spec.task, inputs=io_["inputs"], outputs=io_["outputs"], parity=parity,
        checkpoint=str(checkpoint_path), checkpoint_sha256=ckpt_sha, dynamic_batch=dynamic_batch,
        metadata=meta, details={"exporter": exporter, "parity_atol": parity_atol}, reference=(x, ref),
    )


__all__ = [
    "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "ExportReport", "export_onnx", "run_onnx", "parity_stats",
    "synthetic_images", "torch_outputs",
]
