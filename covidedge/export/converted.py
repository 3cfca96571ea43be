"""What every precision conversion shares: the fp32 source it starts from, and the check after it.

:mod:`covidedge.export.fp16` and :mod:`covidedge.export.int8` read their source graph's single
image input here, refuse a source that is not fp32, and save their result through
:func:`save_checked`: the full ONNX checker, then a run in ONNX Runtime on the CPU compared with
the fp32 source, recorded in the result's metadata as ``covidedge.parity_vs_fp32``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.export.onnx import parity_stats, run_onnx, synthetic_images
from covidedge.formats.onnxfile import as_model, check_onnx, graph_io, graph_precision, save_onnx, set_metadata

PathLike = Union[str, Path]

# metadata keys every converted graph carries
KEY_SOURCE_SHA = "covidedge.source_sha256"
KEY_VS_FP32 = "covidedge.parity_vs_fp32"

#: Images used to compare a converted graph with its fp32 source.
CHECK_IMAGES = 4


def input_info(model) -> Tuple[str, Optional[int], Tuple[int, int, int]]:
    """(input name, static batch or None, (C, H, W)) of a single-input image graph."""
    io_ = graph_io(model)["inputs"]
    if len(io_) != 1:
        raise IncompatibleModelError(f"graph has inputs {sorted(io_)}, expected one image input")
    name, shape = next(iter(io_.items()))
    if len(shape) != 4 or not all(isinstance(v, int) for v in shape[1:]):
        raise IncompatibleModelError(f"graph input '{name}' has shape {shape}, "
                                     f"expected (N, C, H, W) with fixed C, H, W")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return name, batch, (shape[1], shape[2], shape[3])


def graph_task(model) -> str:
    """"classifier" or "segmenter": the spec's task, else guessed from the logits' rank."""
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get("covidedge.task") or (
        "classifier" if len(graph_io(model)["outputs"].get("logits", [])) == 2 else "segmenter")


def output_nodes(model) -> List[str]:
    """Names of the nodes that write graph outputs (they stay in float precision)."""
    outs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if set(n.output) & outs]


def require_fp32_source(model, src) -> None:
    """Refuse a source graph that already carries a lower precision."""
    got = graph_precision(model)
    if got != "fp32":
        raise BadInputError(f"source graph is already {got}, expected an fp32 graph", path=src,
                            hint="convert from the fp32 file that 'covidedge export' wrote")


def _compare_with_source(src: Path, dst: Path, task: str, batch, chw) -> Dict[str, Any]:
    x = synthetic_images(CHECK_IMAGES, chw[1:], seed=1)
    if chw[0] != 1:
        x = np.repeat(x, chw[0], axis=1)
    ref = run_onnx(src, x)
    got = run_onnx(dst, x)
    return parity_stats(task, ref, got)


def save_checked(model, src, dst, task, batch, chw) -> Path:
    """Save a converted graph, run the ONNX checker on it, compare it with its fp32 source and
    record that comparison in its metadata (saved again). Returns ``dst``."""
    save_onnx(model, dst)
    check_onnx(dst)
    stats = _compare_with_source(src, dst, task, batch, chw)
    set_metadata(model, {KEY_VS_FP32: json.dumps(stats, sort_keys=True)})
    save_onnx(model, dst)
    return dst


def parity_vs_fp32(onnx_path) -> Optional[Dict[str, Any]]:
    """The comparison with the fp32 source stored in a converted graph's metadata, if any."""
    model = as_model(onnx_path)
    for p in model.metadata_props:
        if p.key == KEY_VS_FP32:
            return json.loads(p.value)
    return None


__all__ = ["KEY_SOURCE_SHA", "KEY_VS_FP32", "CHECK_IMAGES", "input_info", "graph_task",
           "output_nodes", "require_fp32_source", "save_checked", "parity_vs_fp32"]
