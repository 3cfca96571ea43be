"""ONNX files: open, read metadata, load, save, describe (inputs, outputs, opset, precision).

Every covidedge stage that touches an ONNX file goes through here.

Reading metadata does not import onnx or parse the graph. Start-up matters on the edge:
``import onnx`` plus parsing an 80 MB model costs about a second, while the spec the runtime needs
sits in a few hundred bytes. ONNX files are protobuf ``ModelProto`` messages;
:func:`read_metadata_props` walks only their top-level fields (skipping the graph by its length
prefix) and decodes field 14, ``metadata_props`` (``StringStringEntryProto``: key = 1, value = 2),
per onnx/onnx.proto.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure, first_line
from covidedge.fileio import atomic_target
from covidedge.spec import ModelSpec

PathLike = Union[str, "os.PathLike[str]"]

# metadata keys written beside ModelSpec.to_metadata()
KEY_VERSION = "covidedge.version"
KEY_CHECKPOINT_SHA = "covidedge.checkpoint_sha256"
KEY_PRECISION = "covidedge.precision"
KEY_OPSET = "covidedge.opset"
KEY_DYNAMIC_BATCH = "covidedge.dynamic_batch"
KEY_EXPORTER = "covidedge.exporter"
KEY_CALIBRATION_SHA = "covidedge.calibration_sha256"
#: "false" on an int8 graph TensorRT's explicit quantization does not take (asymmetric activations).
KEY_TRT_COMPATIBLE = "covidedge.tensorrt_compatible"

#: protobuf's limit for one self-contained file.
_TWO_GB = 2 * 1024 ** 3

METADATA_PROPS_FIELD = 14


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value or (offset, length)) for one message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
            yield number, wire, None
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WireError("length-delimited field runs past the end")
            yield number, wire, (pos, length)
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, None
        else:
            raise WireError(f"unsupported wire type {wire}")
    if pos != end:
        raise WireError("message runs past the end")


def read_metadata_props(path) -> Dict[str, str]:
    """``metadata_props`` of the ONNX file at ``path`` as a dict; raises WireError (a ValueError)
    when the file is not a protobuf message, OSError when it cannot be read."""
    size = os.path.getsize(path)
    if size == 0:
        raise WireError("empty file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        props: Dict[str, str] = {}
        for number, wire, value in _fields(buf, 0, size):
            if number != METADATA_PROPS_FIELD or wire != 2:
                continue
            off, length = value
            key = val = ""
            for n, w, v in _fields(buf, off, off + length):
                if w == 2 and n in (1, 2):
                    text = bytes(buf[v[0]:v[0] + v[1]]).decode("utf-8")
                    if n == 1:
                        key = text
                    else:
                        val = text
            props[key] = val
        return props


# -- reading without onnx ------------------------------------------------------------------------
def read_onnx_metadata(path: PathLike) -> Dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict, read without onnx and without the weights;
    covidedge's one-line errors for a file that is missing, unreadable or not ONNX."""
    try:
        return read_metadata_props(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IncompatibleModelError(f"not a readable ONNX model ({exc})", path=path,
                                     hint="re-export it with 'covidedge export'") from exc
    except FileNotFoundError as exc:
        raise BadInputError("ONNX file not found", path=path,
                            hint="export one with 'covidedge export CHECKPOINT --out FILE'") from exc
    except OSError as exc:
        raise BadInputError(f"cannot read the model file: {exc.strerror or exc}", path=path) from exc


def metadata_precision(meta: Mapping[str, str]) -> str:
    """The precision an exported graph's metadata declares (fp32 when it declares none)."""
    return meta.get(KEY_PRECISION, "fp32")


def open_onnx(path: PathLike, spec: Optional[ModelSpec] = None):
    """(path as str, metadata, spec) of an ONNX model file; the spec comes from its metadata
    when not given."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError("model file not found", path=path)
    meta = read_onnx_metadata(path)
    return path, meta, spec if spec is not None else ModelSpec.from_metadata(meta, source=path)


def spec_from_onnx(path: PathLike) -> ModelSpec:
    """The ModelSpec stored in an ONNX file's metadata."""
    return ModelSpec.from_metadata(read_onnx_metadata(path), source=path)


# -- loading and saving with onnx ------------------------------------------------------------------
def load_onnx(path: PathLike, *, weights: bool = True):
    """``onnx.load`` with a one-line BadInputError / IncompatibleModelError on failure;
    ``weights=False`` leaves external weight data unread (structure, types and metadata only)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BadInputError("ONNX file not found", path=path,
                            hint="export one with 'covidedge export CHECKPOINT --out FILE'")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:  # DecodeError and friends
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise IncompatibleModelError(f"not a readable ONNX model ({type(exc).__name__}: {first})",
                                     path=path, hint="re-export it with 'covidedge export'") from exc


def as_model(model_or_path):
    """An in-memory ModelProto: ``model_or_path`` itself, or the file it names, loaded."""
    return model_or_path if hasattr(model_or_path, "graph") else load_onnx(model_or_path)


def set_metadata(model, values: Mapping[str, Any]) -> None:
    """Set (add or replace) ``metadata_props`` entries of an in-memory ONNX model."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, str(value)


def save_onnx(model, path: PathLike) -> Path:
    """Write ``model`` as one self-contained file (no external data), atomically."""
    import onnx

    path = Path(path)
    size = model.ByteSize()
    if size >= _TWO_GB:
        raise IncompatibleModelError(
            f"graph is {size / 1e9:.1f} GB; one self-contained ONNX file must stay under 2 GB",
            path=path, hint="export a smaller model (width_mult / base_width)")
    with atomic_target(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return path


def check_onnx(path: PathLike) -> None:
    """``onnx.checker.check_model(full_check=True)``; a failure is a RuntimeFailure."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        first = first_line(exc)
        raise RuntimeFailure(f"ONNX checker rejected the graph: {first[:200]}", path=path,
                             hint="report this with the checkpoint; try another --opset") from exc


# -- describing a loaded graph ---------------------------------------------------------------------
def _dtype_name(elem_type: int) -> str:
    from onnx import helper

    try:
        import numpy as np

        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:
        return f"onnx:{elem_type}"


def graph_tensors(model) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Graph inputs (initializers excluded) and outputs as ``[{name, shape, dims, dtype}]``:
    ``shape`` has -1 for a dynamic axis, ``dims`` keeps the axis name (``"batch"``) instead."""
    inits = {t.name for t in model.graph.initializer}

    def info(vi):
        shape, dims = [], []
        for d in vi.type.tensor_type.shape.dim:
            fixed = d.HasField("dim_value") and d.dim_value > 0
            shape.append(int(d.dim_value) if fixed else -1)
            dims.append(int(d.dim_value) if fixed else (d.dim_param or "?"))
        return {"name": vi.name, "shape": shape, "dims": dims,
                "dtype": _dtype_name(vi.type.tensor_type.elem_type)}

    return ([info(v) for v in model.graph.input if v.name not in inits],
            [info(v) for v in model.graph.output])


def graph_io(model) -> Dict[str, Dict[str, List[Union[int, str]]]]:
    """``{"inputs": {name: dims}, "outputs": {name: dims}}`` (a dynamic axis shows its name): the
    short form reports print."""
    ins, outs = graph_tensors(model)
    return {"inputs": {t["name"]: t["dims"] for t in ins}, "outputs": {t["name"]: t["dims"] for t in outs}}


def graph_opset(model) -> Optional[int]:
    """The default-domain ONNX opset of a loaded model, or None when it declares none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def graph_precision(model_or_path) -> str:
    """"int8" when the graph has QuantizeLinear/DequantizeLinear nodes, "fp16" when it has fp16
    weights or casts to fp16, else "fp32". Read from the graph itself, not its metadata (a path is
    read without its external weights)."""
    import onnx

    model = model_or_path if hasattr(model_or_path, "graph") else load_onnx(model_or_path, weights=False)
    graph = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return "int8"
    f16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == f16 for t in graph.initializer):
        return "fp16"
    for n in graph.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute):
            return "fp16"
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == f16:
                    return "fp16"
    return "fp32"
