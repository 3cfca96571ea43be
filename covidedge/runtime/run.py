"""``run_inference``: a set of inputs through a pipeline, with results streamed to a file.

This is what ``covidedge infer`` runs, and what any program that wants the same behaviour
calls::

    from covidedge.runtime.run import run_inference
    summary = run_inference(["scans/"], classifier="build/cls.onnx", segmenter="build/seg.onnx",
                            out_dir="results")
    print(summary.line(), summary.exit_code)

Inputs are files, folders (searched recursively) and globs. Bad inputs never stop the run: each
becomes a ``Failure`` with a one-line reason, reported through ``on_note``, and the run goes on.
With ``out_dir`` the masks and overlays are written there, together with a results file that
grows one complete line per image (an interrupted run keeps what it finished); one run at a time
holds an output folder. Nothing that exists is overwritten without ``overwrite=True``, and an
input, a model or its manifest never is.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Union

from covidedge.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, BadInputError, UsageError
from covidedge.spec import check_choice
from covidedge.prediction import Result
from covidedge.runtime.options import InferenceOptions

PathLike = Union[str, "os.PathLike[str]"]
#: Results file formats by name; the default follows the file's suffix (.jsonl, else CSV).
RESULT_FORMATS = ("csv", "jsonl")


def _quiet(_: str) -> None:
    pass


@dataclass
class RunSummary:
    """What a run did: counts, where things went, and the exit code it earns."""

    images: int = 0
    ok: int = 0
    failed: int = 0
    not_selected: int = 0
    dicom_failed: int = 0
    flagged: int = 0
    seconds: float = 0.0
    results_path: Optional[Path] = None
    out_dir: Optional[Path] = None
    masks_written: bool = False
    dicom_summary: str = ""
    selection_summary: str = ""
    problems: List[str] = field(default_factory=list)

    @property
    def input_problems(self) -> int:
        """Inputs that were not images to run on (missing, unreadable, loops)."""
        return len(self.problems)

    @property
    def exit_code(self) -> int:
        """0 every image done; 1 some inputs failed; 3 every image failed."""
        if self.images and self.ok == 0:
            return EXIT_BAD_INPUT
        return EXIT_PARTIAL if (self.failed or self.input_problems or self.dicom_failed) else EXIT_OK

    def line(self) -> str:
        """The run's one summary line."""
        plural = "s" if self.images != 1 else ""
        text = f"{self.images} image{plural}: {self.ok} ok, {self.failed} failed in {self.seconds:.1f} s"
        if self.results_path is not None:
            text += f"; results in {self.results_path}"
        if self.masks_written:
            text += f"; masks in {self.out_dir}"
        return text + self.selection_summary + self.dicom_summary

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("images", "ok", "failed", "input_problems", "not_selected",
                                            "dicom_failed", "flagged", "seconds")}
        d.update(results=str(self.results_path) if self.results_path else None,
                 out_dir=str(self.out_dir) if self.out_dir else None, exit_code=self.exit_code)
        return d


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or below it (real paths)."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _results_format(results_format: Optional[str], path: Optional[Path]) -> Optional[str]:
    if results_format is None:
        return None
    check_choice("results format", results_format, RESULT_FORMATS)
    if path is None:
        raise UsageError("results_format applies to a results file; give out_dir or results too")
    return results_format


def run_inference(inputs: Union[PathLike, Iterable[PathLike]], options: Optional[InferenceOptions] = None, *,
                  pipeline=None, on_files: Optional[Callable[[List[Path]], Any]] = None,
                  on_result: Optional[Callable[[Result], Any]] = None,
                  on_note: Callable[[str], Any] = _quiet, **overrides: Any) -> RunSummary:
    """Run ``inputs`` through a pipeline and return a :class:`RunSummary`.

    ``options`` is an :class:`~covidedge.runtime.options.InferenceOptions`; its fields may also
    be given as keywords (``overrides``), as below.

    The models come from ``pipeline`` (a ready :class:`~covidedge.runtime.pipeline.Pipeline`, or
    any object with its ``predict_many`` / ``labels`` / ``segmenter`` / context manager, such as
    a Triton client pipeline) or from ``classifier`` / ``segmenter`` paths or runners, made with
    ``threshold``, ``batch_size``, ``backend`` and ``strict``; not both. ``results`` is the results
    file (``.csv`` or ``.jsonl``; ``results_format`` forces one); with ``out_dir`` and no
    ``results`` it is ``out_dir/results.csv`` (``results.jsonl`` with ``results_format="jsonl"``).
    ``dicom_out`` writes DICOM SEG / SR / Secondary Capture objects for DICOM inputs chosen by
    ``series_filter`` (a :class:`covidedge.dicom.SeriesFilter`; default CR/DX, PA/AP).
    ``on_files`` gets the list of image files once they are found (before the first is read);
    ``on_result`` gets every result (a Prediction or a Failure) as it is done; ``on_note`` gets
    one-line notes (skipped inputs, quality warnings, DICOM outputs). Inputs, models and their
    manifests are never overwritten. Raises BadInputError when
    there is no image to process, before anything is written.
    """
    from covidedge.dicom import AlgorithmInfo, DicomOutputs, SeriesFilter, select_instances
    from covidedge.formats.manifest import manifest_path_for
    from covidedge.inputs import expand_inputs
    from covidedge.runtime.pipeline import Pipeline
    from covidedge.fileio import OutputLock
    from covidedge.runtime.results import open_results_writer, printable

    o = InferenceOptions.of(options, **overrides)
    classifier, segmenter, threshold, batch_size = o.classifier, o.segmenter, o.threshold, o.batch_size
    out_dir, results, results_format, overlay, overwrite = o.out_dir, o.results, o.results_format, o.overlay, o.overwrite
    dicom_out, series_filter, show_patient_ids = o.dicom_out, o.series_filter, o.show_patient_ids
    if pipeline is not None:
        given = o.model_options()
        if given:
            raise UsageError(f"{', '.join(given)} apply to models made here; with a ready pipeline, "
                             "set them when making it")
        pipe = pipeline
    else:
        pipe = Pipeline(classifier=classifier, segmenter=segmenter, threshold=threshold,
                        batch_size=batch_size, backend=o.backend, strict=o.strict)
    models = [Path(m.source) for m in getattr(pipe, "models", ()) if os.path.isfile(str(m.source))]
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]
    out_path = Path(out_dir) if out_dir is not None else None
    results_path = Path(results) if results is not None else None
    fmt = _results_format(results_format, results_path or out_path)
    if results_path is None and out_path is not None:
        results_path = out_path / ("results.jsonl" if fmt == "jsonl" else "results.csv")
    series_filter = series_filter if series_filter is not None else SeriesFilter()

    summary = RunSummary(out_dir=out_path)
    dicom = (DicomOutputs(dicom_out, AlgorithmInfo.from_pipeline(pipe), show_patient_ids=show_patient_ids,
                          overlay=overlay) if dicom_out is not None else None)
    expanded = expand_inputs(inputs, exclude=[os.fspath(d) for d in (out_dir, dicom_out) if d is not None])
    for problem in expanded.problems:
        summary.problems.append(str(problem))
        on_note(f"skipped: {printable(str(problem))}")
    selection = select_instances(expanded.files, series_filter)
    for line in selection.lines():
        on_note(line)
    summary.not_selected, summary.selection_summary = len(selection.not_selected), selection.summary()
    files = selection.files
    if not files:
        for item in inputs:  # the input is an output folder: say so, not "no images"
            for flag, folder in (("--out", out_dir), ("--dicom-out", dicom_out)):
                if folder is not None and os.path.isdir(item) and _inside(Path(item), Path(folder)):
                    raise UsageError(f"the input folder {item} is the {flag} folder {os.fspath(folder)} (or "
                                     "inside it); covidedge never reads its own output folders",
                                     hint=f"choose a {flag} folder outside the inputs")
        raise BadInputError("no images to process in " + ", ".join(repr(i) for i in inputs),
                            hint="pass image files (.png .jpg .jpeg .bmp .tif .tiff .dcm) or "
                                 "folders holding them")
    summary.images = len(files)
    if on_files is not None:
        on_files(list(files))
    if pipe.segmenter is not None and out_path is None and overlay:
        on_note("note: masks and overlays are not saved without an output folder (out_dir, --out DIR)")

    locks = []  # one run at a time per shared output: the --out folder, the results file, --dicom-out
    try:
        if out_path is not None:
            locks.append(OutputLock(out_path).acquire())
        if results_path is not None:
            locks.append(OutputLock.for_file(results_path).acquire())
        if dicom is not None and not (out_path is not None and _same_folder(out_path, dicom.out_dir)):
            locks.append(OutputLock(dicom.out_dir, what="DICOM output folder").acquire())
        if dicom is not None:
            dicom.check_index()
        writer = (open_results_writer(results_path, pipe.labels, fmt=fmt, overwrite=overwrite,
                                      protected=[*files, *models, *(manifest_path_for(m) for m in models)])
                  if results_path is not None else None)
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        raise
    summary.results_path = writer.path if writer is not None else None

    t_start = time.perf_counter()
    try:
        with pipe, warnings.catch_warnings():
            if o.suppress_warnings:  # decoders' warnings (pydicom's) would break "one line per file"
                warnings.simplefilter("ignore")
            for result in pipe.predict_many(files, batch_size=batch_size, out_dir=out_dir, overlay=overlay):
                for line in (dicom.write(result) if dicom is not None else ()):
                    on_note(line)
                if writer is not None:
                    writer.write(result)
                if result.ok:
                    summary.ok += 1
                    if result.quality_flags:
                        from covidedge.data.quality import describe_flags

                        summary.flagged += 1
                        on_note(f"warning: {printable(result.name)}: do not trust this result, the input "
                                f"fails the quality check ({describe_flags(result.quality_flags)}; "
                                "--strict refuses such images)")
                else:
                    summary.failed += 1
                    on_note(f"skipped: {printable(result.error)}")
                if on_result is not None:
                    on_result(result)
    finally:
        if writer is not None:
            writer.close()
        if dicom is not None:
            dicom.close()
            summary.dicom_failed, summary.dicom_summary = dicom.failed, dicom.summary()
        for lock in reversed(locks):
            lock.release()
        summary.seconds = time.perf_counter() - t_start
    summary.masks_written = out_path is not None and pipe.segmenter is not None
    return summary


__all__ = ["run_inference", "RunSummary", "RESULT_FORMATS"]
