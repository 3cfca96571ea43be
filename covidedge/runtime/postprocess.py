"""The one rule that turns segmenter probabilities into masks, used by inference, evaluation,
benchmarks and the Triton models alike.

A pixel is in a mask when its probability is **strictly above** the threshold. When the mask is
wanted at another size than the model's output (the image's own size), the probability map is
first resized bilinearly and then thresholded, so mask edges follow the probabilities rather than
the model's pixel grid (:func:`probabilities_to_mask`).

:func:`segmentation_masks` turns the segmenter's lung and infection maps into the lung and
infection masks (issue 20): opacified lung is lung, at most two lung regions, infection only
inside the lungs, and no infection below :data:`INFECTION_GATE` of the lungs. Those decisions
are made at the model's output size (256 x 256: microseconds) by editing the two probability
maps, which are then resized and thresholded as above, so a 3000 x 3000 mask still costs only
its own bytes and the masks at the model's size and at the image's size follow one rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image


def upsample_probabilities(prob: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``h x w`` probability map to ``size = (H, W)`` (Pillow mode F)."""
    if prob.shape == tuple(size):
        return prob
    img = Image.fromarray(np.ascontiguousarray(prob, dtype=np.float32))
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


#: Output pixels per strip when probabilities are resized to a large image (16 MB of float32).
_STRIP_PIXELS = 1 << 22


def probabilities_to_mask(prob: np.ndarray, threshold: float, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Boolean mask of ``prob > threshold``, at ``size = (H, W)`` when given (probabilities resized
    bilinearly first), else at the probabilities' own size. ``prob`` may carry leading axes
    (e.g. N x C x h x w) when no ``size`` is given.

    A resized mask is made strip by strip of rows (Pillow's resize of the matching source box,
    the same sampling positions as one whole resize): an 8000 x 8000 mask costs its 64 MB, not
    a 256 MB float map and its copy."""
    p = np.asarray(prob, dtype=np.float32)
    if size is not None and tuple(p.shape[-2:]) != tuple(size):
        if p.ndim != 2:
            raise ValueError(f"resizing needs one h x w map, got shape {p.shape}")
        (H, W), (h, w) = (int(v) for v in size), p.shape
        img = Image.fromarray(np.ascontiguousarray(p))
        out = np.empty((H, W), dtype=bool)
        rows = max(1, _STRIP_PIXELS // max(1, W))
        for a in range(0, H, rows):
            b = min(H, a + rows)
            strip = img.resize((W, b - a), Image.Resampling.BILINEAR, box=(0, a * h / H, w, b * h / H))
            np.greater(np.asarray(strip, dtype=np.float32), float(threshold), out=out[a:b])
        return out
    return p > float(threshold)


#: Infection covering less than this fraction of the lungs (in the masks at the model's size) is
#: not reported: the infection mask is emptied, an image-level "no infection" decision. Chosen on
#: COVID-QU-Ex **Train** (3728 images; no Val figure entered the choice) with the shipped
#: covidqu-resunet256 by ``benchmarks/segmentation_mask_rule.py --pick-gate``: the largest
#: candidate costing at most 1 point of infection Dice on COVID-19 images (Train: 0.746 -> 0.737;
#: infection-free images with any false positive 62 % -> 40 %; false-positive area 2.79 -> 2.68 %
#: of the image; the sweep is benchmarks/results/segmentation-gate-train.md). No gate on this
#: score reaches 2 % of the image at an acceptable cost (the first that does, 25 % of the lungs,
#: leaves infection Dice 0.63): the segmenter marks opacities of other pneumonias (Non-COVID) as
#: infection, and their area does not tell them apart; the classifier does (:data:`COVID_GATE`).
INFECTION_GATE = 0.06

#: The classifier label whose probability gates the infection mask (:func:`infection_allowed`).
COVID_LABEL = "COVID-19"
#: When a classifier runs with the segmenter (a Pipeline, the Triton postprocess), an image whose
#: P(COVID-19) is under this has no infection mask: the segmenter also marks opacities of other
#: pneumonias, and the classifier tells them apart. Chosen on COVID-QU-Ex **Train** (3728 images;
#: no Val figure entered the choice) with the shipped models by
#: ``benchmarks/segmentation_covid_gate.py``: the smallest gate leaving at most 1 % of the image as
#: false-positive infection on infection-free images (Train: 2.68 -> 0.70 %, infection Dice 0.7370
#: unchanged, no COVID-19 image emptied; benchmarks/results/covid-gate-train.md). On Val: 3.31 ->
#: 1.50 %, infection Dice 0.7464 -> 0.7459 (covid-gate-val.md).
COVID_GATE = 0.02

#: 8-connectivity: pixels touching at a corner are one region.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class MaskRule:
    """The steps of :func:`segmentation_masks`, as data so a benchmark can measure each one.

    ``opacity_is_lung``: infection probability above the threshold counts as lung (COVID-QU-Ex
    lung masks include the opacified lung). ``lung_regions``: keep at most this many 8-connected
    lung regions, the largest (0 keeps all). ``fill_lung_holes``: background enclosed by a kept
    region is lung. ``infection_in_lungs``: infection only inside the lungs. ``infection_gate``:
    infection under this fraction of the lung area is emptied (0 turns it off)."""

    opacity_is_lung: bool = True
    lung_regions: int = 2
    fill_lung_holes: bool = True
    infection_in_lungs: bool = True
    infection_gate: float = INFECTION_GATE


#: The rule every caller uses.
MASK_RULE = MaskRule()
#: Each map thresholded on its own: the rule before issue 20 (the benchmark's baseline).
PLAIN_THRESHOLD = MaskRule(opacity_is_lung=False, lung_regions=0, fill_lung_holes=False,
                           infection_in_lungs=False, infection_gate=0.0)


def lung_regions(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(labels, sizes) of the 8-connected regions of a boolean ``h x w`` mask: ``labels`` numbers
    each region's pixels 1..n (0 is background), ``sizes[k]`` is region k's pixel count
    (``sizes[0] = 0``)."""
    from scipy import ndimage  # here, not at the top: a few hundred ms of cold start

    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels, sizes


def _kept_lungs(lungs: np.ndarray, rule: MaskRule) -> np.ndarray:
    """The lung mask with only its ``rule.lung_regions`` largest regions (ties: the first found),
    holes filled when the rule says so."""
    if rule.lung_regions > 0:
        labels, sizes = lung_regions(lungs)
        if np.count_nonzero(sizes) > rule.lung_regions:
            largest = np.argsort(-sizes, kind="stable")[:rule.lung_regions]
            keep = np.zeros(sizes.size, dtype=bool)
            keep[largest[sizes[largest] > 0]] = True
            lungs = keep[labels]
    if rule.fill_lung_holes:
        lungs = fill_holes(lungs)
    return lungs


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the border set: what
    ``scipy.ndimage.binary_fill_holes(mask, structure=8-connected)`` gives, by one labelling of
    the background instead of its repeated dilations (about 4x faster on 256 x 256)."""
    from scipy import ndimage

    labels, n = ndimage.label(~mask, structure=_EIGHT)
    if n == 0:
        return mask
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = np.ones(n + 1, dtype=bool)
    inside[edge] = False
    inside[0] = False
    return mask | inside[labels]


def segmentation_probabilities(lung_prob: np.ndarray, infection_prob: np.ndarray, threshold: float,
                               rule: MaskRule = MASK_RULE) -> Tuple[np.ndarray, np.ndarray]:
    """The two ``h x w`` maps at the model's size edited by ``rule``, so that thresholding them
    gives its masks: lung = max(lung, infection) where opacity is lung, 0 in dropped regions and 1
    in filled holes (other pixels keep their value, so mask edges do not move); infection =
    min(infection, lung), or 0 everywhere under the gate. Infection never exceeds lung, so after
    any bilinear resize the infection mask stays inside the lung mask."""
    t = float(threshold)
    lung = np.asarray(lung_prob, dtype=np.float32)
    inf = np.asarray(infection_prob, dtype=np.float32)
    if lung.ndim != 2 or lung.shape != inf.shape:
        raise ValueError(f"expected two h x w maps of one shape, got {lung.shape} and {inf.shape}")
    if rule.opacity_is_lung:
        lung = np.maximum(lung, inf)
    raw = lung > t
    kept = _kept_lungs(raw, rule)
    if not np.array_equal(kept, raw):  # dropped regions to 0, filled holes to 1, edges untouched
        lung = np.where(raw & ~kept, np.float32(0.0), np.where(kept & ~raw, np.float32(1.0), lung))
    if rule.infection_in_lungs:
        inf = np.minimum(inf, lung)
    if rule.infection_gate > 0:
        area = np.count_nonzero(lung > t)
        if np.count_nonzero(inf > t) < rule.infection_gate * area or area == 0:
            inf = np.zeros_like(inf)
    return lung, inf


def segmentation_masks(lung_prob: np.ndarray, infection_prob: np.ndarray, threshold: float,
                       size: Optional[Tuple[int, int]] = None, rule: MaskRule = MASK_RULE,
                       infection: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(lungs, infection): boolean masks at ``size = (H, W)`` (default: the maps' own size) from
    the segmenter's ``h x w`` lung and infection probabilities, by ``rule`` (module docstring).
    Regions, holes and the gate are decided at the maps' size; the edited maps are then resized
    and thresholded strip by strip (:func:`probabilities_to_mask`). ``infection=False`` (a
    classifier ruled COVID-19 out: :func:`infection_allowed`) gives an empty infection mask and
    the same lungs."""
    lung, inf = segmentation_probabilities(lung_prob, infection_prob, threshold, rule)
    lungs = probabilities_to_mask(lung, threshold, size)
    return lungs, probabilities_to_mask(inf, threshold, size) if infection else np.zeros_like(lungs)


def infection_allowed(labels, probabilities, gate: Optional[float] = None) -> bool:
    """False when a classifier's ``probabilities`` (in the order of its ``labels``) give
    :data:`COVID_LABEL` less than ``gate`` (default :data:`COVID_GATE`): that image's infection
    mask is then empty. True without a classifier, or one without that label."""
    labels = list(labels or ())
    if probabilities is None or COVID_LABEL not in labels:
        return True
    return float(probabilities[labels.index(COVID_LABEL)]) >= (COVID_GATE if gate is None else gate)


__all__ = ["probabilities_to_mask", "upsample_probabilities", "segmentation_masks", "fill_holes",
           "segmentation_probabilities", "lung_regions", "MaskRule", "MASK_RULE", "PLAIN_THRESHOLD",
           "INFECTION_GATE", "COVID_LABEL", "COVID_GATE", "infection_allowed"]
