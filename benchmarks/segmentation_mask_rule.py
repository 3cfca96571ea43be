"""The segmenter's mask rule step by step (issue 20, item 5), and the infection gate's choice.

One inference pass per split with the shipped segmenter (ONNX Runtime fp32, one thread); every
rule variant is scored on the same probabilities, at each image's own size, with covidedge's
SegmentationAccumulator (the metrics ``covidedge evaluate`` reports):

* ``--pick-gate`` (on **Train**): the share of the lungs under which the infection mask is
  emptied, as the largest candidate that costs at most ``--dice-budget`` (1 point) of infection
  Dice on COVID-19 images, with the whole sweep: infection Dice, the false-positive infected area
  on infection-free images and the share of those images with any false positive, per candidate,
  and the smallest candidate meeting ``--fp-target`` (2 % of the image, issue 20) if any. The
  chosen value belongs in covidedge/runtime/postprocess.py as INFECTION_GATE.
* the step table (default, on **Val**): the plain threshold (the rule before issue 20), then each
  step of covidedge.runtime.postprocess.MaskRule added in turn, the last row being MASK_RULE.
  Lung Dice, infection Dice (COVID-19 images), false-positive infected area on infection-free
  images and the images whose lungs are more than two regions. ``--check-evaluate`` also runs
  ``covidedge.evaluation.evaluate`` and checks that it reports the last row.

Usage:
    python benchmarks/segmentation_mask_rule.py --pick-gate --split Train \\
        --out benchmarks/results/segmentation-gate-train
    python benchmarks/segmentation_mask_rule.py --split Val --check-evaluate \\
        --out benchmarks/results/segmentation-mask-rule-val
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from covidedge.backends.base import infer_fitted
from covidedge.data.covidqu import CovidQuDataset, select_samples
from covidedge.data.imageio import read_gray
from covidedge.data.preprocess import preprocess_batch
from covidedge.fileio import OutputExistsError, refuse_existing, write_atomic
from covidedge.metrics import SegmentationAccumulator
from covidedge.pretrained import get_shipped
from covidedge.runtime import load
from covidedge.runtime.postprocess import (MASK_RULE, PLAIN_THRESHOLD, lung_regions, segmentation_masks,
                                           segmentation_probabilities)
from covidedge.spec import MASK_THRESHOLD

MODEL = "covidqu-resunet256"
#: Each row adds one step of MaskRule to the row before; the last is the rule every caller uses.
STEPS = (
    ("plain threshold (before issue 20)", PLAIN_THRESHOLD),
    ("+ opacified lung is lung", replace(PLAIN_THRESHOLD, opacity_is_lung=True)),
    ("+ at most 2 lung regions", replace(PLAIN_THRESHOLD, opacity_is_lung=True, lung_regions=2)),
    ("+ lung holes filled", replace(MASK_RULE, infection_in_lungs=False, infection_gate=0.0)),
    ("+ infection only inside the lungs", replace(MASK_RULE, infection_gate=0.0)),
    (f"+ infection gate {MASK_RULE.infection_gate:.1%} of the lungs (MASK_RULE)", MASK_RULE),
)
GATES = (0.0, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10,
         0.125, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def probabilities(model: Path, samples, threads: int, batch_size: int = 16):
    """(sample, C x h x w probabilities, channel labels) per image, preprocessed and run as
    covidedge evaluate does."""
    runner = load(model, backend="onnxruntime", intra_op_threads=threads)
    with runner:
        spec = runner.spec
        t0 = time.perf_counter()
        for a in range(0, len(samples), batch_size):
            chunk = samples[a:a + batch_size]
            x = preprocess_batch([s.image for s in chunk], size=tuple(spec.input_size))
            p = np.asarray(infer_fitted(runner, x)[spec.output_names[1]], dtype=np.float32)
            for s, prob in zip(chunk, p):
                yield s, prob, list(spec.labels)
            if a % (20 * batch_size) == 0:
                log(f"  {a + len(chunk)}/{len(samples)} images, {time.perf_counter() - t0:.0f} s")


def truth(sample):
    """(lungs, infection) ground truth, boolean, at the image's size (no infection mask: empty)."""
    lungs = read_gray(sample.lung_mask) > 0
    inf = read_gray(sample.infection_mask) > 0 if sample.infection_mask else np.zeros_like(lungs)
    return lungs, inf


def score(stream, rules, threshold: float):
    """Per rule an accumulator and the count of images whose lungs are > 2 regions; per image
    the last rule's infected share of the lungs at the model's size (what the gate reads)."""
    accs = {name: SegmentationAccumulator() for name, _ in rules}
    many = {name: 0 for name, _ in rules}
    shares = []
    for s, prob, labels in stream:
        lp, ip = prob[labels.index("lungs")], prob[labels.index("infection")]
        true_lungs, true_inf = truth(s)
        for name, rule in rules:
            lungs, inf = segmentation_masks(lp, ip, threshold, true_lungs.shape, rule)
            accs[name].update(lungs, true_lungs, inf, true_inf, label=s.label, name=s.name)
            many[name] += int(np.count_nonzero(lung_regions(lungs)[1]) > 2)
        lq, iq = segmentation_probabilities(lp, ip, threshold, rules[-1][1])
        shares.append(np.count_nonzero(iq > threshold) / max(1, np.count_nonzero(lq > threshold)))
    return accs, many, shares


def row(name: str, acc: SegmentationAccumulator, many: int) -> dict:
    r = acc.result()
    return {"rule": name, "lung_dice": r["lungs"]["dice"], "infection_dice": r["infection"]["dice"],
            "fp_infected_area_of_image": r["infection_free"]["fp_fraction_of_image"],
            "fp_images": r["infection_free"]["images_with_fp"], "severity_mae": r["severity"]["mae"],
            "images_lungs_over_2_regions": many, "images": r["images"]}


def gate_sweep(acc: SegmentationAccumulator, shares, gates=GATES) -> list:
    """Infection Dice and FP area for each candidate gate, from the ungated per-image records: an
    image whose value in ``shares`` is under the gate has an empty infection mask (Dice 0 against
    a lesion, undefined against none; no false-positive area)."""
    out = []
    for g in gates:
        dices, fps, emptied = [], [], 0
        for rec, share in zip(acc.per_image, shares):
            gated = share < g
            if rec["covid"]:
                d = rec["infection_dice"]
                if gated:
                    d = None if rec["true_infection_empty"] else 0.0
                    emptied += 1
                if d is not None:
                    dices.append(d)
            if rec["true_infection_empty"]:
                fps.append(0.0 if gated else rec["pred_infection_fraction_image"])
        out.append({"gate": g, "infection_dice": float(np.mean(dices)),
                    "fp_infected_area_of_image": float(np.mean(fps)),
                    "fp_images": float(np.mean([f > 0 for f in fps])), "covid_images_emptied": emptied})
    return out


def pick_gate(sweep: list, dice_budget: float, fp_target: float) -> dict:
    """The largest gate within ``dice_budget`` of the ungated infection Dice, and the smallest
    meeting ``fp_target`` (None when no candidate does)."""
    base = sweep[0]["infection_dice"]
    fits = [r["gate"] for r in sweep if base - r["infection_dice"] <= dice_budget]
    meets = [r["gate"] for r in sweep if r["fp_infected_area_of_image"] <= fp_target]
    return {"gate": max(fits), "dice_budget": dice_budget, "fp_target": fp_target,
            "smallest_gate_meeting_fp_target": min(meets) if meets else None}


def sweep_markdown(doc: dict) -> str:
    c = doc["choice"]
    lines = [f"# Infection gate sweep ({doc['split']}, {doc['images']} images)", "",
             f"Model {doc['model']} (ONNX Runtime fp32), threshold {doc['threshold']}, every other step "
             "of MASK_RULE on. Reproduce: `" + doc["command"] + "`.", "",
             f"Chosen: **{c['gate']:.1%} of the lungs**, the largest gate costing at most "
             f"{100 * c['dice_budget']:.0f} point of infection Dice. Smallest gate with FP area <= "
             f"{c['fp_target']:.0%}: " + (f"{c['smallest_gate_meeting_fp_target']:.1%}"
                                          if c["smallest_gate_meeting_fp_target"] is not None else "none") + ".",
             "", "| gate (share of the lungs) | infection Dice (COVID-19) | FP infected area (% of image) | "
             "infection-free images with FP | COVID-19 images emptied |", "|---:|---:|---:|---:|---:|"]
    for r in doc["sweep"]:
        lines.append(f"| {r['gate']:.2%} | {r['infection_dice']:.4f} | {100 * r['fp_infected_area_of_image']:.2f} | "
                     f"{100 * r['fp_images']:.1f} % | {r['covid_images_emptied']} |")
    return "\n".join(lines) + "\n"


def markdown(doc: dict) -> str:
    lines = [f"# Segmenter mask rule, step by step ({doc['split']}, {doc['images']} images)", "",
             f"Model {doc['model']} (ONNX Runtime fp32), threshold {doc['threshold']}, masks scored "
             "at each image's own size. Reproduce: `" + doc["command"] + "`.", "",
             "| rule | lung Dice | infection Dice (COVID-19) | FP infected area, infection-free "
             "(% of image) | infection-free images with FP | severity MAE (% of lungs) | "
             "images with > 2 lung regions |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['rule']} | {r['lung_dice']:.4f} | {r['infection_dice']:.4f} | "
                     f"{100 * r['fp_infected_area_of_image']:.2f} | {100 * r['fp_images']:.1f} % | "
                     f"{100 * r['severity_mae']:.2f} | {r['images_lungs_over_2_regions']} |")
    if doc.get("evaluate"):
        lines += ["", f"`covidedge.evaluation.evaluate` on the same split: {doc['evaluate']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/covid-qu-ex")
    ap.add_argument("--split", default="Val")
    ap.add_argument("--model", type=Path, help=f"an fp32 ONNX segmenter (default: the shipped {MODEL})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--pick-gate", action="store_true", help="sweep the gate (run it on Train)")
    ap.add_argument("--fp-target", type=float, default=0.02, help="FP infected area, fraction of image")
    ap.add_argument("--dice-budget", type=float, default=0.01, help="infection Dice the gate may cost")
    ap.add_argument("--check-evaluate", action="store_true")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier OUT.json / OUT.md")
    a = ap.parse_args(argv)
    check_out(a.out, a.overwrite)
    model = a.model or get_shipped(MODEL).fp32_onnx()
    name = a.model.name if a.model else MODEL
    samples = select_samples(CovidQuDataset(a.data).samples(a.split), a.limit_per_class, 0)
    rules = STEPS[-2:-1] if a.pick_gate else STEPS
    log(f"{name} on {a.split}: {len(samples)} images, {len(rules)} rules")
    accs, many, shares = score(probabilities(model, samples, a.threads), rules, MASK_THRESHOLD)
    doc = {"split": a.split, "images": len(samples), "model": name, "threshold": MASK_THRESHOLD,
           "command": "python benchmarks/segmentation_mask_rule.py " + " ".join(argv or sys.argv[1:]),
           "mask_rule": asdict(MASK_RULE), "rows": [row(n, accs[n], many[n]) for n, _ in rules]}
    if a.pick_gate:
        doc["sweep"] = gate_sweep(accs[rules[0][0]], shares)
        doc["choice"] = pick_gate(doc["sweep"], a.dice_budget, a.fp_target)
        return _write(doc, sweep_markdown(doc), a.out, a.overwrite)
    if a.check_evaluate:
        from covidedge.evaluation import evaluate

        rep = evaluate(model, a.data, a.split, backend="onnxruntime",
                       limit_per_class=a.limit_per_class).metrics
        last = doc["rows"][-1]
        got = (rep["lung_dice"], rep["infection_dice"], rep["fp_infection_fraction"])
        want = (last["lung_dice"], last["infection_dice"], last["fp_infected_area_of_image"])
        same = bool(np.allclose(got, want, rtol=0, atol=1e-9))
        doc["evaluate"] = (f"lung Dice {got[0]:.4f}, infection Dice {got[1]:.4f}, FP area "
                           f"{100 * got[2]:.2f} % ({'the last row' if same else 'DIFFERS from the last row'})")
        if not same:
            log(f"evaluate reports {got}, the last row is {want}")
    _write(doc, markdown(doc), a.out, a.overwrite)
    return 0 if not a.check_evaluate or "DIFFERS" not in doc["evaluate"] else 1


def check_out(out, overwrite: bool) -> None:
    """Refuse an existing OUT.json / OUT.md before the work (minutes) rather than after it."""
    if out:
        for suffix in (".json", ".md"):
            try:
                refuse_existing(out.with_suffix(suffix), overwrite=overwrite)
            except OutputExistsError as exc:
                raise SystemExit(f"error: {exc}") from None


def _write(doc: dict, md: str, out, overwrite: bool = False) -> int:
    print(md)
    if out:
        write_atomic(out.with_suffix(".json"), (json.dumps(doc, indent=2) + "\n").encode(), overwrite=overwrite)
        write_atomic(out.with_suffix(".md"), md.encode(), overwrite=overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
