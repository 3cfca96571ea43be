"""InferenceOptions: how :func:`covidedge.runtime.run.run_inference` makes its models and writes
its outputs, with the defaults in one place (``covidedge infer`` builds one from its flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Union

from covidedge.spec import AUTO, Options

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class InferenceOptions(Options):
    """``classifier`` / ``segmenter``: paths or runners (neither: the default models for this
    machine), made with ``threshold`` (None: the model's 0.5), ``batch_size`` images per call,
    ``backend`` and ``strict`` (a quality-flagged image is a failure). ``out_dir`` gets masks,
    overlays (``overlay``) and the results file unless ``results`` names one (``results_format``
    "csv" or "jsonl" forces its format); ``overwrite`` allows replacing an earlier results file.
    ``dicom_out`` writes DICOM SEG / SR / Secondary Capture objects for the DICOM inputs
    ``series_filter`` picks (a covidedge.dicom.SeriesFilter), naming patients only with
    ``show_patient_ids``; ``suppress_warnings`` keeps decoders' warnings off stderr."""

    classifier: Any = None
    segmenter: Any = None
    threshold: Optional[float] = None
    batch_size: int = 8
    backend: str = AUTO
    strict: bool = False
    out_dir: Optional[PathLike] = None
    results: Optional[PathLike] = None
    results_format: Optional[str] = None
    overlay: bool = True
    overwrite: bool = False
    dicom_out: Optional[PathLike] = None
    series_filter: Any = None
    show_patient_ids: bool = False
    suppress_warnings: bool = True

    def model_options(self):
        """The options that make models, when given (refused with a ready pipeline)."""
        return [n for n, v in (("classifier", self.classifier), ("segmenter", self.segmenter),
                               ("threshold", self.threshold)) if v is not None] \
            + (["backend"] if self.backend != AUTO else []) + (["strict"] if self.strict else [])


__all__ = ["InferenceOptions"]
