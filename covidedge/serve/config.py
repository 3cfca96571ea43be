"""Triton ``config.pbtxt`` files: built as plain dicts, checked against Triton's own schema.

Each model configuration is written as a dict in the JSON form of Triton's ``ModelConfig``
protobuf message (``tritonclient.grpc.model_config_pb2``), parsed into that message (so an
unknown field, a wrong type or a misspelt enum such as ``TYPE_FP23`` is refused before anything
is written) and printed in protobuf text format, which is what Triton reads.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from covidedge.errors import MissingDependencyError, require

#: The optional extra that holds the Triton server, its client and the config schema.
SERVE_EXTRA = "serve"
SERVE_INSTALL = "pip install 'covidedge[serve]'"

#: numpy dtype name -> Triton data type.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
                 "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8",
                 "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}


def model_config_schema():
    """The ``model_config_pb2`` module of tritonclient, or MissingDependencyError naming the extra."""
    try:
        return require("tritonclient.grpc.model_config_pb2", extra=SERVE_EXTRA,
                       purpose="Triton model configurations")
    except MissingDependencyError:
        raise
    except Exception as exc:  # a broken install (e.g. protobuf too old for the generated code)
        raise MissingDependencyError(
            f"tritonclient's model_config schema cannot be loaded: {type(exc).__name__}: {exc}",
            hint=f"reinstall the serve extra: {SERVE_INSTALL}") from exc


def tensor(name: str, dtype: str, dims: Sequence[int], **extra) -> Dict[str, Any]:
    """One ``input`` / ``output`` entry; ``dtype`` is a numpy name or a Triton ``TYPE_*``."""
    entry = {"name": name, "data_type": TRITON_DTYPES.get(dtype, dtype), "dims": [int(d) for d in dims]}
    entry.update(extra)
    return entry


def parameters(values: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
    """``parameters`` map: every value as a string (Triton's ModelParameter holds strings)."""
    return {k: {"string_value": str(v)} for k, v in values.items()}


def dynamic_batching(max_queue_delay_us: int, preferred: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    d: Dict[str, Any] = {"max_queue_delay_microseconds": int(max_queue_delay_us)}
    if preferred:
        d["preferred_batch_size"] = [int(b) for b in preferred]
    return d


def instance_group(count: int, kind: str, gpus: Optional[List[int]] = None) -> List[Dict[str, Any]]:
    """``instance_group`` with ``count`` instances of ``kind`` ("KIND_CPU", "KIND_GPU", "KIND_MODEL")."""
    g: Dict[str, Any] = {"count": int(count), "kind": kind}
    if gpus:
        g["gpus"] = [int(i) for i in gpus]
    return [g]


def to_message(config: Dict[str, Any], source: object = None):
    """``config`` (JSON form) as a ``ModelConfig`` message; a config Triton's schema refuses is a
    ValueError naming the model and the field."""
    from google.protobuf import json_format

    pb = model_config_schema()
    try:
        return json_format.ParseDict(config, pb.ModelConfig())
    except json_format.ParseError as exc:
        name = config.get("name", "?") if isinstance(config, dict) else "?"
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}model '{name}' config does not fit Triton's ModelConfig schema: "
                         f"{exc}") from exc


def to_pbtxt(config: Dict[str, Any]) -> str:
    """The validated config in protobuf text format (the ``config.pbtxt`` content)."""
    from google.protobuf import text_format

    return text_format.MessageToString(to_message(config))


def parse_pbtxt(text: str, source: object = None):
    """Parse ``config.pbtxt`` text into a ``ModelConfig`` message (ValueError when Triton's schema
    refuses it)."""
    from google.protobuf import text_format

    pb = model_config_schema()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{source or 'config.pbtxt'}: not a valid Triton model config: {exc}") from exc


def message_to_dict(message) -> Dict[str, Any]:
    """A ``ModelConfig`` message back as its JSON-form dict (field names as in the .pbtxt)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


__all__ = ["SERVE_EXTRA", "SERVE_INSTALL", "TRITON_DTYPES", "model_config_schema", "tensor",
           "parameters", "dynamic_batching", "instance_group", "to_message", "to_pbtxt",
           "parse_pbtxt", "message_to_dict"]
