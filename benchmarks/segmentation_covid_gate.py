"""Infection masks gated by the classifier: the false-positive area against the infection Dice.

The segmenter marks opacities of other pneumonias as infection; the classifier tells COVID-19
from them. This script scores, on one split, the infection mask as the pipeline would give it
when the infection mask is emptied for images whose P(COVID-19) is under a gate, for each
candidate gate: infection Dice on COVID-19 images, false-positive infected area on
infection-free images (% of the image), and how many COVID-19 images lose their mask. Gate 0
is the segmenter alone (covidedge's mask rule, the numbers ``covidedge evaluate`` reports).

One inference pass per model (ONNX Runtime fp32); masks scored at each image's own size with
covidedge's SegmentationAccumulator. The choice is the smallest gate whose false-positive area
is at most half of ``--fp-target`` (2 % of the image): half, because on Train the classifier is
more sure of its own training images than it will be of new ones, so Train understates both
what a gate costs in Dice and the false-positive area left on other images. Pick it on
**Train**, report it on **Val**:

    python benchmarks/segmentation_covid_gate.py --split Train --out benchmarks/results/covid-gate-train
    python benchmarks/segmentation_covid_gate.py --split Val --out benchmarks/results/covid-gate-val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from segmentation_mask_rule import _write, check_out, gate_sweep, log, pick_gate, probabilities, truth  # noqa: E402

from covidedge.data.covidqu import CovidQuDataset, select_samples  # noqa: E402
from covidedge.metrics import SegmentationAccumulator  # noqa: E402
from covidedge.pretrained import default_model  # noqa: E402
from covidedge.runtime.postprocess import MASK_RULE, segmentation_masks  # noqa: E402
from covidedge.spec import MASK_THRESHOLD  # noqa: E402

GATES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
#: The chosen gate brings the false-positive area to this share of --fp-target on the split.
FP_MARGIN = 0.5
COVID = "COVID-19"


def covid_probability(model: Path, samples, threads: int) -> np.ndarray:
    """P(COVID-19) per sample from the classifier, preprocessed and run as covidedge evaluate does."""
    return np.array([prob[labels.index(COVID)] for _, prob, labels in probabilities(model, samples, threads)],
                    dtype=np.float64)


def choose(sweep: list, dice_budget: float, fp_target: float) -> dict:
    """pick_gate's facts, and ``chosen``: the smallest gate with FP area <= FP_MARGIN x target
    (the largest gate when none is)."""
    c = pick_gate(sweep, dice_budget, fp_target)
    meets = [r["gate"] for r in sweep if r["fp_infected_area_of_image"] <= fp_target * FP_MARGIN]
    c["chosen"] = min(meets) if meets else sweep[-1]["gate"]
    return c


def markdown(doc: dict) -> str:
    lines = [f"# Infection mask gated by P(COVID-19) ({doc['split']}, {doc['images']} images)", "",
             f"Segmenter {doc['segmenter']}, classifier {doc['classifier']} (ONNX Runtime fp32), mask "
             f"rule MASK_RULE, lung Dice {doc['lung_dice']:.4f} (the gate does not touch the lungs). "
             "Reproduce: `" + doc["command"] + "`.", ""]
    c = doc["choice"]
    lines += [("" if doc["split"].lower() == "train" else "For reference only (the gate is chosen on Train): ")
              + f"Chosen: **{c['chosen']:.2f}**, the smallest gate with FP area <= {c['fp_target'] * FP_MARGIN:.0%} "
              f"(half the {c['fp_target']:.0%} target). Largest gate costing at most {100 * c['dice_budget']:.0f} "
              f"point of infection Dice: {c['gate']:.2f}. Smallest gate with FP area <= {c['fp_target']:.0%}: "
              + (f"{c['smallest_gate_meeting_fp_target']:.2f}" if c["smallest_gate_meeting_fp_target"] is not None
                 else "none") + ".", "",
              "| gate P(COVID-19) < | infection Dice (COVID-19) | FP infected area (% of image) | "
             "infection-free images with FP | COVID-19 images emptied |"]
    lines.append("|---:|---:|---:|---:|---:|")
    for r in doc["sweep"]:
        lines.append(f"| {r['gate']:.2f} | {r['infection_dice']:.4f} | {100 * r['fp_infected_area_of_image']:.2f} | "
                     f"{100 * r['fp_images']:.1f} % | {r['covid_images_emptied']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/covid-qu-ex")
    ap.add_argument("--split", default="Val")
    ap.add_argument("--segmenter", type=Path, help="fp32 ONNX segmenter (default: the shipped one)")
    ap.add_argument("--classifier", type=Path, help="fp32 ONNX classifier (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--fp-target", type=float, default=0.02, help="FP infected area, fraction of image")
    ap.add_argument("--dice-budget", type=float, default=0.01, help="infection Dice the gate may cost")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier OUT.json / OUT.md")
    a = ap.parse_args(argv)
    check_out(a.out, a.overwrite)
    seg = a.segmenter or default_model("segmenter").fp32_onnx()
    cls = a.classifier or default_model("classifier").fp32_onnx()
    samples = select_samples(CovidQuDataset(a.data).samples(a.split), a.limit_per_class, 0)
    log(f"{a.split}: {len(samples)} images; classifier {cls.name}")
    p_covid = covid_probability(cls, samples, a.threads)
    acc = SegmentationAccumulator()
    for s, prob, labels in probabilities(seg, samples, a.threads):
        true_lungs, true_inf = truth(s)
        lungs, inf = segmentation_masks(prob[labels.index("lungs")], prob[labels.index("infection")],
                                        MASK_THRESHOLD, true_lungs.shape, MASK_RULE)
        acc.update(lungs, true_lungs, inf, true_inf, label=s.label, name=s.name)
    doc = {"split": a.split, "images": len(samples), "segmenter": seg.name, "classifier": cls.name,
           "command": "python benchmarks/segmentation_covid_gate.py " + " ".join(argv or sys.argv[1:]),
           "lung_dice": acc.result()["lungs"]["dice"], "sweep": gate_sweep(acc, p_covid, GATES)}
    doc["choice"] = choose(doc["sweep"], a.dice_budget, a.fp_target)
    return _write(doc, markdown(doc), a.out, a.overwrite)


if __name__ == "__main__":
    raise SystemExit(main())
