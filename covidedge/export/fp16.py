"""fp16 in the graph: a mixed-precision copy of an fp32 ONNX graph, with fp32 inputs and outputs.

TensorRT 10 deprecates and TensorRT 11 removes the FP16 builder flag: networks are strongly typed,
so the precision has to be written into the ONNX graph. ``onnxconverter_common.float16`` converts
weights and compute to fp16 with fp32 inputs and outputs; the output Softmax / Sigmoid, the
reductions and Resize (:data:`FP16_KEEP_FP32_OPS`) stay fp32. The same graph runs in ONNX Runtime
on a CPU, so its accuracy can be measured anywhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence, Union

from covidedge.errors import RuntimeFailure
from covidedge.export.converted import (KEY_SOURCE_SHA, graph_task, input_info, output_nodes,
                                        require_fp32_source, save_checked)
from covidedge.fileio import sha256_file
from covidedge.formats.onnxfile import KEY_PRECISION, load_onnx, set_metadata

PathLike = Union[str, Path]

#: Ops computed in fp32 inside an fp16 graph: the output activations, reductions (sums of many
#: fp16 values lose precision) and Resize (its scales input must stay float).
FP16_KEEP_FP32_OPS = ("Softmax", "Sigmoid", "LogSoftmax", "GlobalAveragePool", "ReduceMean",
                      "ReduceSum", "ReduceMax", "ReduceL2", "Resize", "Upsample")

#: Metadata key listing the op types kept in fp32.
KEY_FP32_OPS = "covidedge.fp16_fp32_ops"


def _fix_output_casts(model) -> None:
    """Keep fp32 outputs fp32 when the node writing them was kept in fp32.

    The converter puts a Cast-to-fp16 after every blocked node, including one that writes a
    graph output, and then declares that output fp16. Such a cast is removed here and the output
    is declared fp32 again, so ``keep_io_types`` holds for every output.
    """
    import onnx

    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    outputs = {o.name: o for o in model.graph.output}
    for cast in list(model.graph.node):
        if cast.op_type != "Cast" or cast.output[0] not in outputs:
            continue
        if not any(a.name == "to" and a.i == f16 for a in cast.attribute):
            continue
        src_name = cast.input[0]
        producers = [n for n in model.graph.node if src_name in n.output]
        others = [n for n in model.graph.node if n is not cast and src_name in n.input]
        if len(producers) != 1 or others:
            continue
        out = producers[0].output
        out[list(out).index(src_name)] = cast.output[0]
        model.graph.node.remove(cast)
        outputs[cast.output[0]].type.tensor_type.elem_type = f32
        for vi in list(model.graph.value_info):
            if vi.name == src_name:
                model.graph.value_info.remove(vi)


def convert_fp16(src: PathLike, dst: PathLike, *,
                 keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS) -> Path:
    """Write a mixed-precision copy of an fp32 ONNX graph: fp16 weights and compute, fp32
    inputs and outputs, ``keep_fp32_ops`` (and the output Softmax/Sigmoid) computed in fp32.

    The result is checked with the full ONNX checker, run in ONNX Runtime on the CPU and
    compared with the source; the comparison lands in ``metadata_props`` as
    ``covidedge.parity_vs_fp32``. Returns ``dst``.
    """
    import onnx
    from covidedge.errors import require

    float16 = require("onnxconverter_common.float16", extra="precision", purpose="fp16 export")
    src, dst = Path(src), Path(dst)
    model = load_onnx(src)
    require_fp32_source(model, src)
    name, batch, chw = input_info(model)
    task = graph_task(model)
    keep = list(dict.fromkeys(keep_fp32_ops))
    blocked_nodes = [n.name for n in model.graph.node
                     if n.name in output_nodes(model) and n.op_type in ("Softmax", "Sigmoid")]
    # a classifier's temperature (logits / T before the output Softmax) is computed in fp32 too
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.name in blocked_nodes and n.op_type == "Softmax":
            p = producers.get(n.input[0])
            if p is not None and p.op_type == "Div":
                blocked_nodes.append(p.name)
                blocked_nodes += [producers[i].name for i in p.input
                                  if i in producers and producers[i].op_type == "Constant"]
    try:
        with warnings.catch_warnings():
            # the converter warns for every weight below fp16's smallest normal number that it
            # rounds (to 1e-7); the parity check below measures what that costs
            warnings.filterwarnings("ignore", message=".*will be truncated to.*")
            half = float16.convert_float_to_float16(
                model, keep_io_types=True,
                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + keep,
                node_block_list=blocked_nodes)
    except Exception as exc:
        raise RuntimeFailure(f"fp16 conversion failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                             path=src) from exc
    _fix_output_casts(half)
    f32 = onnx.TensorProto.FLOAT
    bad = [vi.name for vi in list(half.graph.input) + list(half.graph.output)
           if vi.type.tensor_type.elem_type != f32]
    if bad:
        raise RuntimeFailure(f"fp16 graph has non-fp32 inputs/outputs {bad}; expected fp32 I/O",
                             path=dst)
    set_metadata(half, {KEY_PRECISION: "fp16", KEY_SOURCE_SHA: sha256_file(src),
                        KEY_FP32_OPS: ",".join(keep)})
    return save_checked(half, src, dst, task, batch, chw)


__all__ = ["FP16_KEEP_FP32_OPS", "KEY_FP32_OPS", "convert_fp16"]
