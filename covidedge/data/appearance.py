"""Does an image look like a frontal chest X-ray? The appearance check behind the
``out_of_distribution`` quality flag.

A model trained on chest radiographs answers confidently on anything: a CT slice, a photograph, a
checkerboard. Its own confidence cannot tell (softmax scores of foreign images are often near 1),
so covidedge checks the input instead. Every image is reduced to a 32 x 32 thumbnail (box
filter) and standardised (zero mean, unit variance: exposure and window do not matter). Chest
X-rays share their layout (two dark lung fields, mediastinum, shoulders, diaphragm), so their
thumbnails lie close to a low-dimensional subspace: the principal components of COVID-QU-Ex Train
thumbnails. The **appearance score** is the Mahalanobis distance of a thumbnail under that
probabilistic PCA model: the squared coordinates along each component divided by its variance,
plus the squared distance off the subspace divided by the mean variance left there. Foreign
images (a CT or MR slice, a photograph, a document, a pattern) score far higher. The threshold
is a high quantile of the Val images' scores, so a known share of real X-rays is flagged (the
profile records it).

The profile (mean, components, threshold, and how they were made) is
``covidedge/data/cxr_appearance.npz``, written by ``python -m covidedge.data.appearance --data
COVID-QU-Ex``. Numpy and Pillow only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from covidedge.errors import BadInputError

__all__ = ["THUMB_SIDE", "PROFILE_FILE", "AppearanceProfile", "thumbnail", "default_profile",
           "fit_profile"]

#: Side of the thumbnail the score is computed on, px.
THUMB_SIDE = 32
#: The shipped profile (fitted on COVID-QU-Ex Train, threshold from Val).
PROFILE_FILE = Path(__file__).with_name("cxr_appearance.npz")


def thumbnail(gray) -> np.ndarray:
    """A ``THUMB_SIDE``-square box-filtered copy of the 2-D image ``gray``, standardised to zero
    mean and unit variance and flattened (float64). A constant image gives zeros."""
    from PIL import Image

    arr = np.asarray(gray, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise BadInputError(f"image for the appearance check has shape {arr.shape}, expected H x W")
    t = np.asarray(Image.fromarray(arr, mode="F").resize((THUMB_SIDE, THUMB_SIDE), Image.BOX),
                   dtype=np.float64).ravel()
    t -= t.mean()
    sd = t.std()
    return t / sd if sd > 1e-8 else t


@dataclass(frozen=True)
class AppearanceProfile:
    """Principal components of chest X-ray thumbnails and the score above which an image is
    flagged. ``about`` records the data, counts and quantile it was made from."""

    mean: np.ndarray
    components: np.ndarray  # (k, THUMB_SIDE**2), orthonormal rows
    variances: np.ndarray   # (k,) Train variance along each component
    residual_variance: float  # mean Train variance per dimension off the subspace
    threshold: float
    about: Dict[str, Any]

    def score(self, gray) -> float:
        """The appearance score of a 2-D gray image (higher: less like a chest X-ray)."""
        return float(self.scores(thumbnail(gray)[None])[0])

    def scores(self, thumbs: np.ndarray) -> np.ndarray:
        """Scores of standardised thumbnails (N, THUMB_SIDE**2)."""
        x = np.asarray(thumbs, dtype=np.float64) - self.mean
        proj = x @ self.components.T
        off = (x * x).sum(axis=1) - (proj * proj).sum(axis=1)
        return (proj * proj / self.variances).sum(axis=1) + np.maximum(off, 0.0) / self.residual_variance

    def is_foreign(self, gray) -> bool:
        return self.score(gray) > self.threshold

    def save(self, path) -> Path:
        from covidedge.fileio import atomic_target

        path = Path(path)
        with atomic_target(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, mean=self.mean.astype(np.float32),
                                    components=self.components.astype(np.float32),
                                    variances=self.variances.astype(np.float64),
                                    residual_variance=np.float64(self.residual_variance),
                                    threshold=np.float64(self.threshold),
                                    about=np.array(json.dumps(self.about)))
        return path

    @classmethod
    def load(cls, path) -> "AppearanceProfile":
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(mean=z["mean"].astype(np.float64),
                       components=z["components"].astype(np.float64),
                       variances=z["variances"].astype(np.float64),
                       residual_variance=float(z["residual_variance"]),
                       threshold=float(z["threshold"]), about=json.loads(str(z["about"])))


@lru_cache(maxsize=1)
def default_profile() -> Optional[AppearanceProfile]:
    """The shipped profile, or None when the package has none (then no image is flagged)."""
    return AppearanceProfile.load(PROFILE_FILE) if PROFILE_FILE.is_file() else None


def fit_profile(train_thumbs: np.ndarray, val_thumbs: np.ndarray, *, components: int = 96,
                quantile: float = 0.97, about: Optional[Dict[str, Any]] = None) -> AppearanceProfile:
    """Probabilistic PCA of ``train_thumbs`` (N, THUMB_SIDE**2): ``components`` principal axes
    with their variances and the mean variance left off them; the threshold is the
    ``quantile`` of the Val thumbnails' scores."""
    x = np.asarray(train_thumbs, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] <= components:
        raise BadInputError(f"{x.shape[0]} thumbnails cannot give {components} components")
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = sv ** 2 / len(x)
    rest = float(var[components:].sum() / max(1, x.shape[1] - components))
    fitted = dict(mean=mean, components=vt[:components], variances=np.maximum(var[:components], 1e-12),
                  residual_variance=max(rest, 1e-12))
    val_scores = AppearanceProfile(**fitted, threshold=np.inf, about={}).scores(val_thumbs)
    threshold = float(np.quantile(val_scores, quantile))
    info = {**(about or {}), "components": components, "quantile": quantile,
            "train_images": int(x.shape[0]), "val_images": int(len(val_scores)),
            "val_flagged": float((val_scores > threshold).mean()),
            "val_score_median": float(np.median(val_scores))}
    return AppearanceProfile(**fitted, threshold=threshold, about=info)


def _thumbs(paths: Sequence[Path], progress: bool) -> np.ndarray:
    from covidedge.data.imageio import read_gray

    out: List[np.ndarray] = []
    for i, p in enumerate(paths):
        out.append(thumbnail(read_gray(p)))
        if progress and (i + 1) % 500 == 0:
            print(f"  {i + 1}/{len(paths)} thumbnails", file=sys.stderr, flush=True)
    return np.stack(out)


def main(argv: Optional[List[str]] = None) -> int:
    """Fit the profile on a COVID-QU-Ex folder (Train components, Val threshold)."""
    from covidedge.data.covidqu import CovidQuDataset

    p = argparse.ArgumentParser(description="Fit covidedge's chest X-ray appearance profile.")
    p.add_argument("--data", required=True, help="COVID-QU-Ex folder with Train and Val")
    p.add_argument("--out", default=str(PROFILE_FILE))
    p.add_argument("--components", type=int, default=96)
    p.add_argument("--quantile", type=float, default=0.97)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    from covidedge.fileio import refuse_existing

    refuse_existing(a.out, what="appearance profile", overwrite=a.overwrite)
    ds = CovidQuDataset(a.data)
    train = _thumbs([s.image for s in ds.samples("Train")], True)
    val = _thumbs([s.image for s in ds.samples("Val")], True)
    prof = fit_profile(train, val, components=a.components, quantile=a.quantile,
                       about={"data": "COVID-QU-Ex Infection Segmentation Data",
                              "components_from": "Train", "threshold_from": "Val"})
    if a.overwrite and Path(a.out).exists():
        Path(a.out).unlink()
    prof.save(a.out)
    print(json.dumps({"out": a.out, "threshold": prof.threshold, **prof.about}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
