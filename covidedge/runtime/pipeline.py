"""The Python API for inference: Classifier, Segmenter and Pipeline.

>>> from covidedge import Pipeline
>>> with Pipeline(classifier="build/cls.onnx", segmenter="build/seg.onnx") as pipe:
...     result = pipe.predict("xray.png")
>>> result.label, result.probabilities, result.infected_fraction, result.timings_ms["total"]

A model is a path (TensorRT engine with its manifest, ONNX model, or checkpoint, opened with
:func:`covidedge.runtime.load`) or a ready :class:`~covidedge.backends.base.Runner`. Its task
is checked from its spec when the object is made, before any image is read. One image goes
through decode -> preprocess (THE covidedge preprocessing, per model input size) -> inference
-> postprocess: the class and its probabilities, and the lung and infection masks resized back
to the image's own size (probabilities upsampled bilinearly, then thresholded). Each stage is
timed in milliseconds. ``predict_many`` batches inference and turns a bad item into a
:class:`~covidedge.runtime.results.Failure` instead of stopping.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from covidedge.data.preprocess import as_gray, resize_gray
from covidedge.data.quality import check_quality, describe_flags
from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure, UsageError
from covidedge.metrics import infected_fraction, lung_fraction
from covidedge.backends.base import Runner, infer_fitted
from covidedge.runtime.checks import check_batch_size, check_model_spec
from covidedge.runtime.postprocess import infection_allowed, segmentation_masks
from covidedge.prediction import STAGES, Failure, OutputNamer, Prediction, Result, source_name
from covidedge.spec import MASK_CHANNELS, MASK_THRESHOLD, check_threshold

ModelLike = Union[str, "os.PathLike[str]", Runner]
ImageItem = Union[str, "os.PathLike[str]", np.ndarray, Any]

_NO_MODEL_HINT = ("pass a classifier and/or a segmenter (--classifier / --segmenter); "
                  "get models with 'covidedge demo' or 'covidedge build-engine'")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


# ---------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------
class _Model:
    """A runner checked for one task; activation is shared with any pipeline using it."""

    task = ""

    def __init__(self, model: ModelLike, backend: str = "auto", **opts):
        if isinstance(model, _Model):
            raise BadInputError(f"got a {type(model).__name__}; pass its path or runner instead")
        if isinstance(model, Runner):
            if opts:
                raise UsageError(f"options {sorted(opts)} apply only when the model is a path, "
                                 "not a ready runner")
            if backend not in ("auto", model.backend):
                raise UsageError(f"backend={backend!r} does not apply to a ready {model.backend} runner",
                                 hint="pass the model's path to choose its backend")
            runner = model
        elif isinstance(model, (str, os.PathLike)):
            from covidedge.runtime import load

            runner = load(model, backend=backend, **opts)
        else:
            raise BadInputError(f"model is a {type(model).__name__}, expected a path "
                                "(engine, ONNX model or checkpoint) or a covidedge Runner")
        check_model_spec(runner, self.task)
        self.runner = runner
        self._pipeline: Optional["Pipeline"] = None

    # -- facts ------------------------------------------------------------------------------
    @property
    def spec(self):
        return self.runner.spec

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.runner.spec.labels)

    @property
    def source(self) -> str:
        return self.runner.source

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.runner.spec.input_size)

    def describe(self) -> Dict[str, Any]:
        return self.runner.describe()

    # -- life cycle --------------------------------------------------------------------------
    def activate(self) -> "_Model":
        self.runner.activate()
        return self

    def deactivate(self) -> None:
        self.runner.deactivate()

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference ---------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed NCHW batch of any size, fitted to the runner's batch
        range by :func:`covidedge.backends.base.infer_fitted`."""
        r = self.runner
        if not r.is_active:
            r.activate()
        prob_name = r.spec.output_names[1]
        out = infer_fitted(r, batch)
        if prob_name not in out:
            raise IncompatibleModelError(f"runner returned {sorted(out)}, expected '{prob_name}'",
                                         path=r.source)
        return np.asarray(out[prob_name])

    def _single_pipeline(self) -> "Pipeline":
        if self._pipeline is None:
            self._pipeline = Pipeline(**{self.task: self})
        return self._pipeline

    def predict(self, image_or_path: ImageItem) -> Prediction:
        """One image (path, array or PIL image) -> :class:`Prediction`; raises on a bad image."""
        return self._single_pipeline().predict(image_or_path)

    def predict_many(self, items: Iterable[ImageItem], batch_size: int = 8, **kw) -> Iterator[Result]:
        """Like :meth:`Pipeline.predict_many` with this model alone."""
        return self._single_pipeline().predict_many(items, batch_size=batch_size, **kw)


class Classifier(_Model):
    """A chest X-ray classifier: ``Classifier("cls.onnx").predict("xray.png").label``."""

    task = "classifier"


class Segmenter(_Model):
    """A lungs + infection segmenter; mask pixels are those whose probability exceeds
    ``threshold`` (0..1, exclusive)."""

    task = "segmenter"

    def __init__(self, model: ModelLike, threshold: float = MASK_THRESHOLD, backend: str = "auto", **opts):
        self.threshold = check_threshold(threshold)
        super().__init__(model, backend=backend, **opts)

    @property
    def channel_index(self) -> Dict[str, int]:
        return {c: self.labels.index(c) for c in MASK_CHANNELS}


def _refuse_unused(classifier, segmenter, threshold, backend, options) -> None:
    """Options a Pipeline could not honour are errors, never silently dropped."""
    if threshold is not None:
        if segmenter is None:
            raise UsageError(f"threshold={threshold!r} applies to a segmenter, and none is given",
                             hint="drop the threshold or add a segmenter")
        if isinstance(segmenter, Segmenter) and check_threshold(threshold) != segmenter.threshold:
            raise UsageError(f"threshold={threshold!r} does not apply to a ready Segmenter (it has "
                             f"threshold {segmenter.threshold})",
                             hint="set the threshold when making the Segmenter")
    ready = [m for m in (classifier, segmenter) if isinstance(m, _Model)]
    if ready and options:
        raise UsageError(f"options {sorted(options)} do not apply to a ready "
                         f"{type(ready[0]).__name__}; pass them when making it")
    for m in ready:
        if backend not in ("auto", m.backend):
            raise UsageError(f"backend={backend!r} does not apply to a ready {type(m).__name__} "
                             f"running on {m.backend}", hint="pass the model's path to choose its backend")


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
class _Item:
    """One image in flight through a batch: its data, timings, and result or error."""

    __slots__ = ("source", "gray", "inputs", "timings", "result", "error", "stage", "quality")

    def __init__(self, source: str):
        self.source = source
        self.quality: List[str] = []
        self.gray: Optional[np.ndarray] = None
        self.inputs: Dict[Tuple[int, int], np.ndarray] = {}
        self.timings: Dict[str, float] = {}
        self.result: Optional[Prediction] = None
        self.error: Optional[BaseException] = None
        self.stage = "decode"

    def fail(self, exc: BaseException, stage: str) -> None:
        self.error, self.stage = exc, stage
        self.inputs = {}

    def outcome(self) -> Result:
        if self.error is not None:
            return Failure.from_exception(self.error, self.source, self.stage)
        return self.result


class Pipeline:
    """Classifier and/or segmenter over the same images, with one decode per image.

    ``classifier`` / ``segmenter``: a path, a Runner, or a Classifier / Segmenter; with neither,
    the default models for this machine (:func:`covidedge.runtime.defaults.default_models`: the
    default engines, else the shipped models), which ``default_models`` then holds (its ``line``
    says which). ``threshold`` (default 0.5) applies to a segmenter made here from a path or runner; a
    Segmenter object keeps its own, and a different ``threshold``, ``backend`` or ``options``
    given with ready objects is refused rather than ignored. ``batch_size`` is the default for
    :meth:`predict_many`; ``backend`` and ``options`` go to :func:`covidedge.runtime.load` for paths. A context
    manager: ``with Pipeline(...) as p`` activates the runners once and frees them at the end
    (runners that were already active are left active). Every image goes through the input
    quality check (covidedge.data.quality: constant, tiny, extreme aspect ratio); its flags are
    on the result (``quality_flags``), or, with ``strict=True``, a flagged image is a failure.
    """

    #: Decode the next batch in a thread while this one runs (:meth:`predict_many`).
    prefetch: bool = True

    def __init__(self, classifier: Union[ModelLike, Classifier, None] = None,
                 segmenter: Union[ModelLike, Segmenter, None] = None, threshold: Optional[float] = None,
                 batch_size: int = 8, backend: str = "auto", strict: bool = False, **options):
        #: What runs when no model was given (covidedge.runtime.defaults.DefaultModels), else None.
        self.default_models = None
        if classifier is None and segmenter is None:
            from covidedge.runtime.defaults import default_models

            self.default_models = default_models(backend=backend)
            classifier, segmenter = self.default_models.classifier, self.default_models.segmenter
            if classifier is None and segmenter is None:
                raise BadInputError("no model given", hint=_NO_MODEL_HINT)
        _refuse_unused(classifier, segmenter, threshold, backend, options)
        threshold = MASK_THRESHOLD if threshold is None else threshold
        if isinstance(classifier, Segmenter) or isinstance(segmenter, Classifier):
            wrong = classifier if isinstance(classifier, Segmenter) else segmenter
            raise IncompatibleModelError(
                f"is a {wrong.task} model, but it was passed as the other one", path=wrong.source,
                hint=f"pass it as --{wrong.task} instead")
        self.batch_size = check_batch_size(batch_size)
        self.strict = bool(strict)
        self.classifier: Optional[Classifier] = (
            None if classifier is None else classifier if isinstance(classifier, Classifier)
            else Classifier(classifier, backend=backend, **options))
        self.segmenter: Optional[Segmenter] = (
            None if segmenter is None else segmenter if isinstance(segmenter, Segmenter)
            else Segmenter(segmenter, threshold=threshold, backend=backend, **options))
        self._activated: List[Runner] = []

    # -- facts ------------------------------------------------------------------------------
    @property
    def models(self) -> List[_Model]:
        return [m for m in (self.classifier, self.segmenter) if m is not None]

    @property
    def labels(self) -> Tuple[str, ...]:
        """Class labels of the classifier (empty without one)."""
        return self.classifier.labels if self.classifier is not None else ()

    @property
    def threshold(self) -> Optional[float]:
        return self.segmenter.threshold if self.segmenter is not None else None

    def describe(self) -> Dict[str, Any]:
        """Per task, what runs it (backend, precision, device, source)."""
        return {m.task: m.describe() for m in self.models}

    # -- life cycle --------------------------------------------------------------------------
    def activate(self) -> "Pipeline":
        for m in self.models:
            if not m.runner.is_active:
                m.runner.activate()
                self._activated.append(m.runner)
        return self

    def deactivate(self) -> None:
        while self._activated:
            self._activated.pop().deactivate()

    close = deactivate

    def __enter__(self) -> "Pipeline":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- stages ------------------------------------------------------------------------------
    def _sizes(self) -> List[Tuple[int, int]]:
        sizes: List[Tuple[int, int]] = []
        for m in self.models:
            if m.input_size not in sizes:
                sizes.append(m.input_size)
        return sizes

    def _load(self, item: ImageItem, source: str) -> _Item:
        """Decode and preprocess one image; an error is recorded on the returned item."""
        it = _Item(source)
        stage = "decode"
        try:
            t0 = time.perf_counter()
            gray = as_gray(item)
            it.timings["decode"] = _ms(t0)
            it.quality = check_quality(gray)
            if it.quality and self.strict:
                raise BadInputError(f"fails the input quality check ({describe_flags(it.quality)})",
                                    path=source, hint="check the file, or run without --strict to get a "
                                                      "flagged result")
            stage = "preprocess"
            t0 = time.perf_counter()
            for size in self._sizes():
                x = resize_gray(gray, size)
                if not np.isfinite(x).all():
                    raise BadInputError("contains NaN or infinite pixel values after preprocessing",
                                        path=source, hint="check the file's pixel data")
                it.inputs[size] = x
            it.timings["preprocess"] = _ms(t0)
            it.gray = gray
        except Exception as exc:  # one bad image must not stop a batch
            it.fail(exc, stage)
        return it

    def _infer(self, items: List[_Item]) -> Dict[str, np.ndarray]:
        """Batched inference per model; returns probabilities per task in the order of ``items``."""
        out: Dict[str, np.ndarray] = {}
        for m in self.models:
            size = m.input_size
            batch = np.stack([it.inputs[size] for it in items])[:, None, :, :]
            out[m.task] = m.run(np.ascontiguousarray(batch, dtype=np.float32))
        return out

    def _postprocess(self, it: _Item, probs: Dict[str, np.ndarray]) -> Prediction:
        h, w = it.gray.shape
        pred = Prediction(source=it.source, image_size=(int(h), int(w)), quality_flags=list(it.quality))
        covid_possible = True
        if self.classifier is not None:
            p = np.asarray(probs["classifier"], dtype=np.float64).reshape(-1)
            labels = self.classifier.labels
            if p.shape[0] != len(labels):
                raise IncompatibleModelError(f"classifier gave {p.shape[0]} probabilities for "
                                             f"{len(labels)} labels", path=self.classifier.source)
            if not np.isfinite(p).all():
                raise RuntimeFailure("classifier output contains NaN or infinite values",
                                     path=it.source, hint="check the model and the image")
            pred.probabilities = {lab: float(v) for lab, v in zip(labels, p)}
            pred.label = labels[int(np.argmax(p))]
            covid_possible = infection_allowed(labels, p)
        if self.segmenter is not None:
            p = np.asarray(probs["segmenter"], dtype=np.float32)
            if not np.isfinite(p).all():
                raise RuntimeFailure("segmenter output contains NaN or infinite values",
                                     path=it.source, hint="check the model and the image")
            idx, t = self.segmenter.channel_index, self.segmenter.threshold
            lungs, infection = segmentation_masks(p[idx["lungs"]], p[idx["infection"]], t, (h, w),
                                                  infection=covid_possible)
            pred.lung_mask, pred.infection_mask = lungs, infection
            pred.lung_fraction = lung_fraction(lungs)
            pred.infected_fraction = infected_fraction(infection, lungs)
        return pred

    def _run_chunk(self, chunk: List[Tuple[ImageItem, str]], namer: Optional[OutputNamer],
                   out_dir, overlay: bool, loaded: Optional[List[_Item]] = None) -> Iterator[_Item]:
        """Decode, infer (batched), postprocess and save one chunk, yielding each item, in order,
        as soon as it is finished (saved); never raises for an item. ``loaded``: the chunk
        already decoded (by the prefetching thread of :meth:`predict_many`)."""
        items = loaded if loaded is not None else [self._load(item, source) for item, source in chunk]
        good = [it for it in items if it.error is None]
        if not good:
            yield from items
            return
        self.activate()
        try:
            t0 = time.perf_counter()
            probs = self._infer(good)
            share = _ms(t0) / len(good)
            per_item = [({k: v[i] for k, v in probs.items()}, share) for i in range(len(good))]
        except Exception:
            # Something in the batch broke inference: run each image alone to find it.
            per_item = []
            for it in good:
                try:
                    t0 = time.perf_counter()
                    p = self._infer([it])
                    per_item.append(({k: v[0] for k, v in p.items()}, _ms(t0)))
                except Exception as exc:
                    it.fail(exc, "inference")
                    per_item.append((None, 0.0))
        outcome = {id(it): po for it, po in zip(good, per_item)}
        for it in items:
            if it.error is not None:
                yield it
                continue
            p, ms = outcome[id(it)]
            it.timings["inference"] = ms
            it.inputs = {}
            stage = "postprocess"
            try:
                t0 = time.perf_counter()
                pred = self._postprocess(it, p)
                it.timings["postprocess"] = _ms(t0)
                pred.timings_ms = {s: it.timings[s] for s in STAGES[:-1]}
                pred.timings_ms["total"] = sum(pred.timings_ms.values())
                if out_dir is not None:
                    stage = "save"
                    pred.save(out_dir, namer(it.source) if namer else None, image=it.gray,
                              overlay=overlay)
                it.result = pred
            except Exception as exc:
                it.fail(exc, stage)
            it.gray = None
            yield it

    # -- public ------------------------------------------------------------------------------
    def predict(self, image_or_path: ImageItem, *, out_dir=None, overlay: bool = True) -> Prediction:
        """One image (path, HxW array, or PIL image) -> :class:`Prediction`. Raises the image's
        error (BadInputError for a bad file) instead of returning a failure. With ``out_dir``,
        masks (and the overlay) are written there."""
        source = source_name(image_or_path, 0)
        namer = OutputNamer() if out_dir is not None else None
        it = next(self._run_chunk([(image_or_path, source)], namer, out_dir, overlay))
        if it.error is not None:
            raise it.error
        return it.result

    def predict_many(self, items: Iterable[ImageItem], batch_size: Optional[int] = None, *,
                     out_dir=None, overlay: bool = True) -> Iterator[Result]:
        """Yield one result per item, in order: a :class:`Prediction`, or a :class:`Failure`
        (source, one-line error, exit code) for an item that could not be processed. Images are
        decoded a batch at a time (at most :data:`MAX_BATCH`), so memory stays bounded for any
        number of items, and each result is yielded as soon as that image is finished, so a
        caller writing results line by line loses nothing finished when interrupted. With
        ``out_dir``, each image's masks and overlay are written as it completes, under unique
        names (``<stem>``, ``<stem>_2`` ...).

        While one batch runs through the models, one thread decodes and preprocesses the next
        (decoding releases the GIL in Pillow and numpy), so at most two batches are in memory."""
        bs = self.batch_size if batch_size is None else check_batch_size(batch_size)
        namer = OutputNamer() if out_dir is not None else None
        if not self.prefetch:
            chunk: List[Tuple[ImageItem, str]] = []
            for i, item in enumerate(items):
                chunk.append((item, source_name(item, i)))
                if len(chunk) == bs:
                    for it in self._run_chunk(chunk, namer, out_dir, overlay):
                        yield it.outcome()
                    chunk = []
            for it in self._run_chunk(chunk, namer, out_dir, overlay) if chunk else ():
                yield it.outcome()
            return

        def chunks() -> Iterator[List[Tuple[ImageItem, str]]]:
            chunk: List[Tuple[ImageItem, str]] = []
            for i, item in enumerate(items):
                chunk.append((item, source_name(item, i)))
                if len(chunk) == bs:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidedge-decode") as pool:
            def load(chunk):
                return pool.submit(lambda: [self._load(item, source) for item, source in chunk])

            pending = None
            for chunk in chunks():
                ahead = (chunk, load(chunk))
                if pending is not None:
                    for it in self._run_chunk(pending[0], namer, out_dir, overlay, pending[1].result()):
                        yield it.outcome()
                pending = ahead
            if pending is not None:
                for it in self._run_chunk(pending[0], namer, out_dir, overlay, pending[1].result()):
                    yield it.outcome()


__all__ = ["Classifier", "Segmenter", "Pipeline", "check_model_spec"]
