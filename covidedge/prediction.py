"""What one image gives: a typed result (:class:`Prediction`) or a failure record (:class:`Failure`),
and the names its output files get (:class:`OutputNamer`).

A :class:`Prediction` holds the class and its probabilities (with a classifier), the lung and
infection masks at the image's own size with the lung fraction and the infected fraction of the
lungs (with a segmenter), and the milliseconds each stage took. A :class:`Failure` names the
image, the one-line error and its exit code, so a batch can go on past a bad file. The pipeline,
the Triton client, the result files (covidedge.runtime.results) and the DICOM writers all use them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from covidedge.errors import EXIT_RUNTIME, CovidEdgeError, one_line


#: Per-image stages timed by the pipeline, in order; "total" is their sum (ms).
STAGES: Tuple[str, ...] = ("decode", "preprocess", "inference", "postprocess", "total")
#: Output files a prediction may have, keyed as in :attr:`Prediction.outputs`.
OUTPUT_KINDS: Tuple[str, ...] = ("lungs", "infection", "overlay")


def _round(v: Optional[float], digits: int = 6) -> Optional[float]:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else round(v, digits)


@dataclass
class Prediction:
    """The result for one image.

    ``image_size`` is (height, width) in px of the image as decoded; masks have that size.
    ``lung_fraction`` is lung pixels / image pixels and ``infected_fraction`` is infected lung
    pixels / lung pixels (the COVID-QU-Ex severity measure; 0.0 when no lung was found), both
    in 0..1. ``timings_ms`` has one entry per :data:`STAGES` (inference is the image's share of
    its batch). ``outputs`` maps "lungs" / "infection" / "overlay" to the files written.
    """

    source: str
    image_size: Tuple[int, int]
    label: Optional[str] = None
    probabilities: Optional[Dict[str, float]] = None
    lung_mask: Optional[np.ndarray] = field(default=None, repr=False)
    infection_mask: Optional[np.ndarray] = field(default=None, repr=False)
    lung_fraction: Optional[float] = None
    infected_fraction: Optional[float] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)
    #: Input quality flags (covidedge.data.quality): the image is constant, tiny or a strip, so
    #: the result should not be trusted. Empty when the image passed.
    quality_flags: List[str] = field(default_factory=list)

    ok = True

    @property
    def name(self) -> str:
        """The file name of the source (or the source itself for in-memory images)."""
        return Path(self.source).name or self.source

    @property
    def confidence(self) -> Optional[float]:
        """Probability of the predicted class, or None without a classifier."""
        if self.label is None or not self.probabilities:
            return None
        return self.probabilities[self.label]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe summary: everything except the mask arrays (their files are in "outputs")."""
        return {
            "source": self.source,
            "status": "ok",
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "label": self.label,
            "probabilities": (None if self.probabilities is None
                              else {k: _round(v) for k, v in self.probabilities.items()}),
            "lung_fraction": _round(self.lung_fraction),
            "infected_fraction": _round(self.infected_fraction),
            "timings_ms": {k: _round(v, 3) for k, v in self.timings_ms.items()},
            "outputs": dict(self.outputs),
            "quality_flags": list(self.quality_flags),
        }

    @property
    def caption(self) -> Optional[str]:
        """The overlay's caption: class and probability, infected share of the lungs."""
        caption = None
        if self.label is not None:
            caption = f"{self.label} {self.confidence:.2f}"
        if self.infected_fraction is not None:
            sev = f"infected {100 * self.infected_fraction:.1f}% of lungs"
            caption = f"{caption} | {sev}" if caption else sev
        return caption

    def save(self, out_dir, name: Optional[str] = None, *, image: Optional[np.ndarray] = None,
             overlay: bool = True) -> Dict[str, str]:
        """Write ``<name>_lungs.png`` and ``<name>_infection.png`` (and ``<name>_overlay.png``
        when ``overlay`` and the gray ``image`` are given) into ``out_dir``; records and returns
        the paths. Without masks (classifier only) nothing is written. Files never replace
        existing ones (an earlier run's masks): when a name is taken, ``<name>_2``, ``<name>_3``
        ... is used for all of this image's files."""
        from covidedge.fileio import OutputExistsError
        from covidedge.overlay import save_mask_png, save_overlay

        if self.lung_mask is None and self.infection_mask is None:
            return {}
        out_dir = Path(out_dir)
        base = name or OutputNamer()(self.source)
        kinds = [k for k, present in (("lungs", self.lung_mask is not None),
                                      ("infection", self.infection_mask is not None),
                                      ("overlay", overlay and image is not None)) if present]
        for n in range(1, 100000):
            stem = base if n == 1 else f"{base}_{n}"
            paths = {k: out_dir / f"{stem}_{k}.png" for k in kinds}
            if any(p.exists() or p.is_symlink() for p in paths.values()):
                continue
            written: Dict[str, str] = {}
            try:
                if "lungs" in paths:
                    written["lungs"] = str(save_mask_png(paths["lungs"], self.lung_mask, overwrite=False))
                if "infection" in paths:
                    written["infection"] = str(save_mask_png(paths["infection"], self.infection_mask,
                                                             overwrite=False))
                if "overlay" in paths:
                    written["overlay"] = str(save_overlay(paths["overlay"], image, self.lung_mask,
                                                          self.infection_mask, caption=self.caption,
                                                          overwrite=False))
            except OutputExistsError:  # another writer took the name meanwhile: next name
                for p in written.values():
                    Path(p).unlink()
                continue
            self.outputs.update(written)
            return written
        raise OutputExistsError("no free output name", path=out_dir / base)


@dataclass
class Failure:
    """An input that could not be processed: its source, the one-line error, the exit code
    of the error's kind and the stage where it failed."""

    source: str
    error: str
    exit_code: int
    stage: str = "decode"

    ok = False

    @property
    def name(self) -> str:
        return Path(self.source).name or self.source

    def to_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "status": "failed", "stage": self.stage,
                "error": self.error, "exit_code": int(self.exit_code)}

    @classmethod
    def from_exception(cls, exc: BaseException, source: str, stage: str) -> "Failure":
        """The record of ``exc`` for ``source``: its one-line text and its exit code (a runtime
        failure for anything that is not a covidedge error)."""
        code = exc.exit_code if isinstance(exc, CovidEdgeError) else EXIT_RUNTIME
        return cls(source=source, error=one_line(exc, source), exit_code=code, stage=stage)


def source_name(item: Any, index: int) -> str:
    """How results name an input: its path, or ``<image N>`` for an in-memory image."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"<image {index}>"


Result = Union[Prediction, Failure]


class OutputNamer:
    """Unique base names for output files: the source's stem, then ``_2``, ``_3`` ... when two
    inputs share a stem (``a/x.png`` and ``b/x.png``), so no output overwrites another."""

    def __init__(self):
        self._used: set = set()

    def __call__(self, source: str) -> str:
        if source.startswith("<"):  # an in-memory image, "<image 3>" -> "image_3"
            stem = "_".join(source.strip("<>").split()) or "image"
        else:
            stem = Path(source).stem or "image"
        name, n = stem, 1
        while name.lower() in self._used:
            n += 1
            name = f"{stem}_{n}"
        self._used.add(name.lower())
        return name


__all__ = ["STAGES", "OUTPUT_KINDS", "Prediction", "Failure", "Result", "OutputNamer", "source_name"]
