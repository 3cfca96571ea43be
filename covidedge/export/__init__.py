"""Export: checkpoint -> ONNX with the precision in the graph (fp32, fp16, calibrated int8 Q/DQ).

``export_model`` is the one call the CLI and the engine builder use: it refuses options it
cannot honour, exports fp32 with :func:`covidedge.export.onnx.export_onnx`, then converts with
:mod:`covidedge.export.fp16` or :mod:`covidedge.export.int8` (ranges from a
:mod:`covidedge.export.calibrators` calibrator), and returns an :class:`ExportReport` of the
final file. Needs torch (the ``train`` extra); importing this package does not import it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from covidedge.errors import BadInputError, UsageError
from covidedge.export.options import KEYWORDS, OptionNames
from covidedge.spec import DEFAULT_CALIBRATION_COUNT, PRECISIONS, check_choice


# keyword arguments export_model passes on, by where they go
_EXPORT_KW = ("parity_inputs", "check", "exporter", "parity_atol")
_INT8_KW = ("activation_type", "symmetric_activations", "batch_size", "histogram_bins",
            "qdq_placement")
_CALIB_KW = ("calib_count", "calib_split", "calib_seed", "calib_out")
#: Options that only int8 export uses, in the order an error lists them.
_INT8_ONLY = ("calibration", "calib_count", "method", "percentile") + tuple(
    k for k in _INT8_KW + _CALIB_KW if k != "calib_count")


def check_export_options(precision: str, options: Dict[str, Any],
                         names: OptionNames = KEYWORDS) -> None:
    """Refuse export options that do not go together, before any work is done.

    ``options`` holds the options given (``calibration``, ``method``, ``percentile`` and the
    int8 / calibration keywords of :func:`export_model`; None means not given). ``names`` spells
    them in the messages: keywords for Python, flags for the command line.
    """
    check_choice("precision", precision, PRECISIONS)
    given = [k for k in _INT8_ONLY if options.get(k) is not None]
    if precision != "int8":
        if given:  # options that cannot apply: a usage error (exit 2), as build-engine's
            one = len(given) == 1
            raise UsageError(f"{', '.join(names(k) for k in given)} appl{'ies' if one else 'y'} "
                                f"to {names('int8')} only",
                                hint=f"drop {'it' if one else 'them'} or {names('choose_int8')}")
        return
    calibration = options.get("calibration")
    if calibration is None:
        raise BadInputError("int8 export needs calibration images", hint=names("give_calibration"))
    ready = (not isinstance(calibration, (str, os.PathLike))
             or Path(os.fspath(calibration)).is_file())  # a CalibrationSet or a manifest
    if options.get("calib_count") is not None and ready:
        raise BadInputError(f"{names('calib_count')} applies with {names('calibration_folder')}, "
                            f"not {names('calibration_manifest')}")
    from covidedge.export.calibrators import DEFAULT_METHOD, check_calibration_options

    method = options.get("method") or DEFAULT_METHOD
    check_calibration_options(method, [k for k in ("percentile", "histogram_bins")
                                       if options.get(k) is not None], names)


def resolve_calibration(calibration, input_size, *, calib_count: Optional[int] = None,
                        calib_split: str = "Train", calib_seed: int = 0, out=None, overwrite: bool = False):
    """A CalibrationSet from a CalibrationSet, a manifest file or a COVID-QU-Ex folder.

    A folder gives ``calib_count`` images of ``calib_split`` (default: 500, or all the split
    has if fewer) at ``input_size`` px, written to the default manifest path or ``out``; a
    manifest there that lists another set is refused unless ``overwrite``.
    """
    from covidedge.export.calibration import CalibrationSet, make_calibration_set

    if isinstance(calibration, CalibrationSet):
        if calib_count is not None:
            raise BadInputError("a calibration count applies to a dataset folder, not to a "
                                "ready calibration set", hint="drop --calib-count")
        return calibration
    if not isinstance(calibration, (str, os.PathLike)):
        raise BadInputError(f"calibration is a {type(calibration).__name__}; expected a "
                            "CalibrationSet, a manifest (.json) or a dataset folder")
    path = Path(os.fspath(calibration))
    if path.is_file():
        if calib_count is not None:
            raise BadInputError("a calibration count applies to a dataset folder, not to a "
                                "manifest", path=path, hint="drop --calib-count")
        return CalibrationSet.load(path)
    if path.is_dir():
        count = calib_count
        if count is None:
            from covidedge.data.covidqu import CovidQuDataset

            available = len(CovidQuDataset(path).samples(calib_split))
            count = min(DEFAULT_CALIBRATION_COUNT, available) or 1
        return make_calibration_set(path, count, split=calib_split, seed=calib_seed,
                                    input_size=tuple(input_size), out=out, overwrite=overwrite)
    raise BadInputError("calibration data not found", path=path,
                        hint="pass a COVID-QU-Ex folder or a calibration manifest (.json)")


def export_model(checkpoint, out, precision: str = "fp32", calibration=None,
                 method: Optional[str] = None, opset: int = 17, dynamic_batch: bool = True, *,
                 option_names: OptionNames = KEYWORDS, overwrite: bool = False, **kw: Any):
    """Export ``checkpoint`` to the ONNX file ``out`` in ``precision`` and return its report.

    fp16 / int8 export fp32 first (to a temporary file, or ``fp32_out`` when given), then
    convert. int8 needs ``calibration``: a CalibrationSet, a manifest or a dataset folder
    (``calib_count`` / ``calib_split`` / ``calib_seed`` choose its images, and ``calib_out``
    where the manifest of images drawn from a folder goes); ``method`` is
    minmax / entropy (the default) / percentile (``percentile`` in percent, default 99.99,
    percentile only, given as a keyword). Other keywords:
    ``parity_inputs``, ``check``, ``exporter``, ``parity_atol`` (export) and
    ``activation_type``, ``symmetric_activations``, ``batch_size``, ``histogram_bins``,
    ``qdq_placement`` (int8).
    The report's ``parity`` compares the final graph with the checkpoint; for fp16 / int8
    ``parity["vs_fp32_graph"]`` compares it with the fp32 graph.

    Options the export cannot honour (calibration options with fp32 / fp16, ``percentile``
    with another method, ``calib_count`` with a ready calibration set) are refused before any
    work, with one-line errors that name them as ``option_names`` spells them (the command
    line passes its flags). An existing ``out`` is refused before any work unless ``overwrite``
    (``covidedge export --overwrite``), which also replaces a ``calib_out`` listing another set.
    """
    from covidedge.export.onnx import ExportReport, parity_stats, run_onnx
    from covidedge.fileio import sha256_file
    from covidedge.formats.onnxfile import graph_io, load_onnx, read_onnx_metadata
    from covidedge.export.onnx import export_onnx
    from covidedge.export.converted import parity_vs_fp32
    from covidedge.export.fp16 import FP16_KEEP_FP32_OPS, convert_fp16
    from covidedge.export.int8 import KEY_CALIB_METHOD, KEY_CALIB_PERCENTILE, quantize_int8
    from covidedge.formats.onnxfile import graph_precision

    fp32_out = kw.pop("fp32_out", None)
    percentile = kw.pop("percentile", None)
    unknown = sorted(set(kw) - set(_EXPORT_KW) - set(_INT8_KW) - set(_CALIB_KW))
    if unknown:
        raise BadInputError(f"export_model does not take {', '.join(unknown)}",
                            hint=f"it takes {', '.join(_EXPORT_KW + _INT8_KW + _CALIB_KW)}")
    export_kw = {k: kw[k] for k in _EXPORT_KW if k in kw}
    int8_kw = {k: kw[k] for k in _INT8_KW if k in kw}
    calib_kw = {k: kw[k] for k in _CALIB_KW if k in kw}
    check_export_options(precision, dict(kw, calibration=calibration, method=method,
                                         percentile=percentile), option_names)
    out = Path(os.fspath(out))
    if out.suffix.lower() != ".onnx":
        raise BadInputError("output file must end in .onnx", path=out, hint="pass --out model.onnx")
    from covidedge.fileio import refuse_existing

    refuse_existing(out, what="export output", overwrite=overwrite)

    if precision == "fp32":
        if fp32_out is not None:
            raise BadInputError("fp32_out applies to fp16 / int8 export; an fp32 export "
                                "writes only 'out'")
        return export_onnx(checkpoint, out, opset=opset, dynamic_batch=dynamic_batch, **export_kw)

    with tempfile.TemporaryDirectory(prefix="covidedge-export-") as tmp:
        src = Path(fp32_out) if fp32_out is not None else Path(tmp) / "fp32.onnx"
        base = export_onnx(checkpoint, src, opset=opset, dynamic_batch=dynamic_batch, **export_kw)
        details = {"fp32_graph": str(src) if fp32_out is not None else None,
                   "fp32_sha256": base.sha256, "exporter": base.details.get("exporter")}
        if precision == "fp16":
            convert_fp16(src, out)
            details["fp32_ops"] = list(FP16_KEEP_FP32_OPS)
        else:
            from covidedge.spec import ModelSpec

            spec = ModelSpec.from_metadata(base.metadata, source=src)
            calib_out = calib_kw.pop("calib_out", None)
            # a calib_out named for this output is replaced with it; the shared default never is
            calib = resolve_calibration(calibration, spec.input_size, out=calib_out,
                                        overwrite=overwrite and calib_out is not None, **calib_kw)
            quantize_int8(src, out, calib, method=method, percentile=percentile, **int8_kw)
            details["calibration"] = calib.summary()
            written = read_onnx_metadata(out)
            details["method"] = written[KEY_CALIB_METHOD]
            if written.get(KEY_CALIB_PERCENTILE):
                details["percentile"] = float(written[KEY_CALIB_PERCENTILE])
        model = load_onnx(out)  # read once for the checks and the report
        got = graph_precision(model)
        if got != precision:
            raise BadInputError(f"converted graph reads as {got}, expected {precision}", path=out)

        x, ref = base.reference  # the fp32 export ran the checkpoint on its parity images already
        got_out = run_onnx(out, x)
        parity = parity_stats(base.task, ref, got_out)
        parity["vs_fp32_graph"] = parity_vs_fp32(model)
    meta = {p.key: p.value for p in model.metadata_props}
    io_ = graph_io(model)
    return ExportReport(
        path=str(out), sha256=sha256_file(out), size_mb=round(out.stat().st_size / 1e6, 3),
        opset=base.opset, precision=precision, task=base.task, inputs=io_["inputs"],
        outputs=io_["outputs"], parity=parity, checkpoint=base.checkpoint,
        checkpoint_sha256=base.checkpoint_sha256, dynamic_batch=dynamic_batch, metadata=meta,
        details=details)


def __getattr__(name):
    # the submodules' main entry points, loaded on first use (they import onnx / torch lazily)
    lazy = {"export_onnx": "covidedge.export.onnx", "ExportReport": "covidedge.export.onnx",
            "convert_fp16": "covidedge.export.fp16",
            "quantize_int8": "covidedge.export.int8",
            "inspect_qdq": "covidedge.export.int8",
            "create_calibrator": "covidedge.export.calibrators",
            "CalibrationSet": "covidedge.export.calibration",
            "make_calibration_set": "covidedge.export.calibration"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'covidedge.export' has no attribute {name!r}")


__all__ = ["export_model", "check_export_options", "resolve_calibration", "export_onnx",
           "ExportReport", "convert_fp16", "quantize_int8", "inspect_qdq", "create_calibrator",
           "CalibrationSet", "make_calibration_set", "OptionNames"]
