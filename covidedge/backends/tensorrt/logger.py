"""TensorRT's logger and error glue, shared by the builder and the runner of this package.

TensorRT reports failures through its logger, not its return values (a ``None`` engine, a
``False`` from ``execute``). The recording logger keeps errors and warnings, and
:func:`format_trt_errors` turns them, with the ONNX parser's errors, into one line.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

TENSORRT_INSTALL_HINT = (
    "on a Jetson TensorRT comes with JetPack (sudo apt install nvidia-jetpack, or python3-libnvinfer); "
    "on an x86 NVIDIA GPU: pip install tensorrt pycuda (NVIDIA's wheels) or NVIDIA's TensorRT "
    "packages; or build for ONNX Runtime with --backend onnxruntime")


def format_trt_errors(stage: str, parser_errors: Sequence[str], records: Sequence[Tuple[str, str]],
                      source: object = None, limit: int = 3) -> str:
    """One line from TensorRT's parser errors and logged messages (errors first, else warnings)."""
    def clean(text):
        return " ".join(str(text).split())

    msgs = [clean(e) for e in parser_errors if clean(e)]
    errors = [clean(m) for lvl, m in records if lvl in ("internal_error", "error") and clean(m)]
    warnings = [clean(m) for lvl, m in records if lvl == "warning" and clean(m)]
    msgs += [m for m in errors if m not in msgs]
    if not msgs:
        msgs = warnings[-limit:]
    if not msgs:
        detail = "TensorRT logged no error"
    else:
        shown = [m if len(m) <= 300 else m[:297] + "..." for m in msgs[:limit]]
        detail = " | ".join(shown) + (f" (+{len(msgs) - limit} more)" if len(msgs) > limit else "")
    where = f" {source}" if source is not None else ""
    return f"TensorRT could not {stage}{where}: {detail}"


def enum_name(value) -> str:
    """Lower-case member name of a TensorRT enum value (ILogger.Severity, DataType):
    ``DataType.FLOAT`` -> 'float'."""
    name = getattr(value, "name", None) or str(value).rsplit(".", 1)[-1]
    return name.lower()


def make_recording_logger(trt, keep: str = "warning"):
    """A TensorRT logger that keeps errors and warnings (for error messages) instead of printing."""
    order = ["internal_error", "error", "warning", "info", "verbose"]
    limit = order.index(keep)

    class RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.records: List[Tuple[str, str]] = []

        def log(self, severity, msg):
            name = enum_name(severity)
            if name in order and order.index(name) <= limit:
                self.records.append((name, str(msg)))

    return RecordingLogger()


__all__ = ["TENSORRT_INSTALL_HINT", "format_trt_errors", "enum_name", "make_recording_logger"]
