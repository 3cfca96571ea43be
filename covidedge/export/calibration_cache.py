"""Calibration caches: the activation ranges of one fp32 graph, computed once on a calibration set.

What TensorRT calls a calibration cache: with it an int8 graph is made without reading a single
image, so a shipped model can be quantized on a machine that has no dataset. The file is JSON:

* ``format`` - :data:`CACHE_FORMAT`;
* ``source_sha256`` - the fp32 ONNX graph the ranges belong to (tensor names are that graph's,
  after ONNX Runtime's shape-inference pass); any other graph is refused;
* ``calibration`` - the calibration set's summary (manifest sha256, count, split, seed, balance);
* ``method``, ``percentile``, ``histogram_bins`` - how the ranges were chosen;
* ``ranges`` - ONNX Runtime's ``TensorsData`` as ``save_tensors_data`` writes it.

Ranges are chosen by a :mod:`covidedge.export.calibrators` calibrator, as for
:func:`covidedge.export.int8.quantize_int8` with signed symmetric activations (histogram methods
give thresholds on |x| clipped to the values seen, so one cache serves signed symmetric
(TensorRT) and unsigned asymmetric (ONNX Runtime CPU) activations alike; minmax ranges are
±max|x|).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.export.calibrators import DEFAULT_METHOD

PathLike = Union[str, "os.PathLike[str]"]

CACHE_FORMAT = "covidedge-calibration-cache/1"


def write_calibration_cache(src: PathLike, dst: PathLike, calibration, *, method: str = DEFAULT_METHOD,
                            percentile: Optional[float] = None, histogram_bins: Optional[int] = None,
                            batch_size: int = 8) -> Dict[str, Any]:
    """Compute the activation ranges of the fp32 graph ``src`` on ``calibration`` (a
    CalibrationSet or its manifest path) and write them to ``dst``; returns what was written.
    ``method`` and its options are those of :func:`covidedge.export.int8.quantize_int8` (an
    option the method cannot honour is refused). The same graph, set and options give the same
    file."""
    from covidedge.errors import require
    from covidedge.fileio import sha256_file
    from covidedge.formats.onnxfile import load_onnx
    from covidedge.fileio import write_atomic
    from covidedge.export.calibration import CalibrationReader, as_calibration_set
    from covidedge.export.calibrators import calibrator_for, collect_ranges
    from covidedge.export.converted import input_info, require_fp32_source

    require("onnxruntime.quantization", purpose="int8 calibration")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrator = calibrator_for(method, symmetric_activations=True, percentile=percentile,
                                histogram_bins=histogram_bins)
    src = Path(src)
    model = load_onnx(src)
    require_fp32_source(model, src)
    name, batch, chw = input_info(model)
    calib = as_calibration_set(calibration)
    if tuple(calib.input_size) != tuple(chw[1:]):
        raise IncompatibleModelError(
            f"calibration images are {calib.input_size[0]}x{calib.input_size[1]} px but the "
            f"graph takes {chw[1]}x{chw[2]} px", path=calib.source)
    reader = CalibrationReader(calib, name, batch_size=batch or batch_size)
    with tempfile.TemporaryDirectory(prefix="covidedge-cache-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        ranges = collect_ranges(pre, reader, calibrator, work_dir=Path(tmp))
        from onnxruntime import quantization as quant

        quant.save_tensors_data(ranges, Path(tmp) / "ranges.json")
        payload = json.loads((Path(tmp) / "ranges.json").read_text())
    summary = calib.summary()
    settings = calibrator.settings()
    doc = {"format": CACHE_FORMAT, "source_sha256": sha256_file(src),
           "calibration": {k: summary[k] for k in ("sha256", "count", "split", "seed",
                                                   "class_balance", "dataset", "preprocessing")},
           "calibration_sha256": calib.sha256, "calibration_count": reader.images_read,
           "method": calibrator.method, "percentile": settings.get("percentile"),
           "histogram_bins": settings.get("histogram_bins"),
           "ranges": payload}
    write_atomic(dst, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return doc


def read_calibration_cache(path: PathLike, *, source: PathLike) -> Dict[str, Any]:
    """Read the calibration cache ``path`` and check it belongs to the fp32 graph ``source``."""
    from covidedge.fileio import sha256_file

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError("calibration cache not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"calibration cache is not readable JSON ({exc})", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or not isinstance(doc.get("ranges"), dict):
        raise BadInputError(f"not a calibration cache (expected format {CACHE_FORMAT!r})", path=path,
                            hint="write one with covidedge.export.calibration_cache.write_calibration_cache")
    want = sha256_file(source)
    if doc.get("source_sha256") != want:
        raise IncompatibleModelError(
            f"calibration cache was computed for another graph (sha256 {str(doc.get('source_sha256'))[:12]}, "
            f"this one {want[:12]})", path=path,
            hint="a cache serves only the exact fp32 graph it was computed on; recalibrate with a dataset")
    return doc


__all__ = ["CACHE_FORMAT", "write_calibration_cache", "read_calibration_cache"]
