"""Read an ONNX model's ``metadata_props`` without importing onnx or parsing the graph.

Start-up matters on the edge: ``import onnx`` plus parsing an 80 MB model costs about a second,
while the spec the runtime needs sits in a few hundred bytes. ONNX files are protobuf
``ModelProto`` messages; this walks only their top-level fields (skipping the graph by its
length prefix) and decodes field 14, ``metadata_props`` (``StringStringEntryProto``: key = 1,
value = 2), per onnx/onnx.proto.
"""

from __future__ import annotations

import mmap
import os
from typing import Dict, Tuple

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
