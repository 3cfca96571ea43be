"""Turn a trained checkpoint into a shipped model: compact graph, calibration cache, model card.

A maintainer's tool (needs torch, onnxruntime and the dataset):

    python -m covidedge.pretrained.release runs/cls/best.pt --name covidqu-xception256-small \\
        --data COVID-QU-Ex --command "covidedge train classifier ..." [--calib-count 500]

Steps: for a classifier, fit a temperature on Val (probabilities = softmax(logits / T)) and
carry it in the spec, so the graphs apply it; export the checkpoint to fp32 ONNX; write the
compact graph (fp16-stored weights) and restore it; compute the calibration cache on a calibration set of Train images (manifest written
to ``calibration/``); evaluate on Val the checkpoint, the restored fp32 graph, its fp16 graph and
both int8 flavours made from the cache (ONNX Runtime, CPU); for a classifier, its accuracy
under the shifts of ``covidedge.evaluation.robustness``; write the model card and the row of
``models.json``. Every number in the card comes from that run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from covidedge.pretrained import INDEX_FILE, PACKAGE_DIR, pack_compact, restore_compact
from covidedge.fileio import write_atomic

#: An int8 flavour is "faithful" when its Val metric is within this many points of the checkpoint
#: (for the segmenter: lung and infection Dice each) ...
FAITHFUL_POINTS = 0.5
#: ... and, for a classifier, agrees with the checkpoint's answers on at least this share of Val.
FAITHFUL_AGREEMENT = 0.98


def _metric_row(key: str, label: str, path: Path, report, ref=None) -> Dict[str, Any]:
    m = report.metrics
    row: Dict[str, Any] = {"key": key, "model": label, "file": path.name,
                           "size_mb": round(path.stat().st_size / 1e6, 2)}
    if report.task == "classifier":
        row.update(accuracy=m["accuracy"], macro_f1=m.get("macro_f1"), ece=m.get("ece"),
                   recall={k: v.get("recall") for k, v in m["per_class"].items()})
        if ref is not None:
            row["delta_points"] = round(100 * (m["accuracy"] - ref.metrics["accuracy"]), 3)
            row["agreement"] = float((report.predictions == ref.predictions).mean())
    else:
        row.update(lung_dice=m["lung_dice"], infection_dice=m["infection_dice"],
                   infection_iou=m.get("infection_iou"),
                   fp_infection_fraction=m.get("fp_infection_fraction"),
                   severity_mae=m.get("severity_mae"))
        if ref is not None:
            row["delta_lung_points"] = round(100 * (m["lung_dice"] - ref.metrics["lung_dice"]), 3)
            row["delta_infection_points"] = round(
                100 * (m["infection_dice"] - ref.metrics["infection_dice"]), 3)
    return row


def _headline(task: str, row: Dict[str, Any]) -> float:
    return row["accuracy"] if task == "classifier" else row["infection_dice"]


def release(checkpoint, name: str, data_root, *, command: str, calib_count: int = 500,
            calib_method: str = "entropy",
            out_dir=PACKAGE_DIR, calibration_dir=Path("calibration"), split: str = "Val",
            progress: bool = True) -> Dict[str, Any]:
    from covidedge.evaluation import evaluate
    from covidedge.export.calibration import default_manifest_path, make_calibration_set
    from covidedge.export.calibration_cache import write_calibration_cache
    from covidedge.export.onnx import export_onnx
    from covidedge.fileio import sha256_file
    from covidedge.formats.onnxfile import spec_from_onnx
    from covidedge.export.fp16 import convert_fp16
    from covidedge.export.int8 import quantize_int8
    from covidedge.formats.checkpoint import read_checkpoint

    def note(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ck = read_checkpoint(checkpoint)
    extra = ck.get("extra") or {}

    def run(path, backend):
        note(f"evaluating {Path(path).name} on {split}")
        return evaluate(path, data_root, split, batch_size=16, backend=backend,
                        progress=progress, keep_outputs=True)

    with tempfile.TemporaryDirectory(prefix="covidedge-release-") as tmp:
        tmp = Path(tmp)
        ref = run(checkpoint, "torch")
        temperature = 1.0
        source = checkpoint
        if ck["spec"]["task"] == "classifier":
            from covidedge.formats.checkpoint import with_temperature
            from covidedge.metrics import fit_temperature

            y = [list(ref.labels).index(t) for t in ref.true_labels]
            temperature = fit_temperature(ref.probabilities, y)
            note(f"temperature fitted on {split}: {temperature:.4f}")
            source = with_temperature(checkpoint, tmp / "calibrated.pt", temperature)
        raw = tmp / "raw.fp32.onnx"
        note(f"exporting {checkpoint}")
        export_onnx(source, raw)
        compact = out_dir / f"{name}.compact.onnx"
        packed = pack_compact(raw, compact)
        fp32 = tmp / f"{name}.fp32.onnx"
        restore_compact(compact, fp32)
        spec = spec_from_onnx(fp32)
        fp16 = convert_fp16(fp32, tmp / f"{name}.fp16.onnx")

        calib_manifest = Path(calibration_dir) / default_manifest_path("covid-qu-ex", "Train", calib_count, 0).name
        note(f"calibration set: {calib_count} Train images -> {calib_manifest}")
        calib = make_calibration_set(data_root, calib_count, split="Train", seed=0,
                                     input_size=spec.input_size, out=calib_manifest,
                                     dataset="covid-qu-ex")
        cache_path = out_dir / f"{name}.calib.json"
        t0 = time.perf_counter()
        cache = write_calibration_cache(fp32, cache_path, calib, method=calib_method)
        calib_seconds = time.perf_counter() - t0
        int8_trt = quantize_int8(fp32, tmp / f"{name}.int8-s8.onnx", None, ranges=cache_path,
                                 activation_type="int8", symmetric_activations=True,
                                 qdq_placement="tensorrt")
        int8_cpu = quantize_int8(fp32, tmp / f"{name}.int8-u8.onnx", None, ranges=cache_path,
                                 activation_type="uint8", symmetric_activations=False)

        rows = [_metric_row("checkpoint", "checkpoint (fp32 weights, torch, no temperature)",
                            checkpoint, ref)]
        for key, label, path in (("fp32", "shipped fp32 (fp16-stored weights restored)", fp32),
                                 ("fp16", "fp16 graph", fp16),
                                 ("int8-s8", "int8, signed symmetric activations (TensorRT form)", int8_trt),
                                 ("int8-u8", "int8, unsigned activations (ONNX Runtime CPU form)", int8_cpu)):
            rows.append(_metric_row(key, label, Path(path), run(path, "onnxruntime"), ref))
        rows[0]["size_mb"] = round(raw.stat().st_size / 1e6, 2)  # the unrounded fp32 graph
        fp32_sha = sha256_file(fp32)
        robustness = None
        if spec.task == "classifier":
            from covidedge.evaluation.robustness import classifier_robustness

            from covidedge.train.bn import batchnorm_shift

            note(f"robustness of {fp32.name} on {split}")
            robustness = classifier_robustness(fp32, data_root, split, backend="onnxruntime")
            note("BatchNorm statistics: re-estimated on other clean Train images")
            robustness["batchnorm_check"] = batchnorm_shift(checkpoint, data_root, split=split)

    task = spec.task
    key = "delta_points" if task == "classifier" else "delta_infection_points"
    cpu_row = rows[4]
    cpu_precision = "int8" if abs(cpu_row[key]) <= FAITHFUL_POINTS and (
        cpu_row.get("agreement", 1.0) >= FAITHFUL_AGREEMENT if task == "classifier"
        else abs(cpu_row["delta_lung_points"]) <= FAITHFUL_POINTS) else "fp32"
    opts = extra.get("train_options") or {}
    summary = {
        "architecture": spec.model_name, "model_kwargs": spec.model_kwargs,
        "input_size": list(spec.input_size), "labels": list(spec.labels),
        "parameters": _parameters(ck), "epoch": extra.get("epoch"),
        "train_images": extra.get("train_images"), "val_images": extra.get("val_images"),
        "amp": extra.get("amp"), "command": command, "split": split,
        "val": rows, "headline": {"metric": "accuracy" if task == "classifier" else "infection Dice",
                                  "value": _headline(task, rows[1])},
        "cpu_engine_precision": cpu_precision, "gpu_engine_precisions": ["fp16", "int8"],
        "compact": packed, "calibration": {**cache["calibration"], "manifest": str(calib_manifest),
                                           "method": cache["method"],
                                           "seconds": round(calib_seconds, 1)},
        "released": _dt.date.today().isoformat(), "train_options": opts,
        "temperature": temperature, "robustness": robustness,
    }
    row = {"name": name, "task": task, "compact": compact.name, "card": f"{name}.md",
           "calibration_cache": cache_path.name, "fp32_sha256": fp32_sha, "summary": summary}
    write_atomic(out_dir / f"{name}.md", model_card(row).encode("utf-8"))
    _update_index(out_dir / INDEX_FILE, row)
    note(f"released {name}: {compact} ({packed['bytes'] / 1e6:.1f} MB), card {out_dir / (name + '.md')}")
    return row


def _parameters(ck) -> int:
    sd = ck.get("state_dict") or {}
    return int(sum(v.numel() for k, v in sd.items()
                   if hasattr(v, "numel") and "running_" not in k and "num_batches" not in k))


def _update_index(path: Path, row: Dict[str, Any]) -> None:
    """Add or replace ``row`` in models.json (under a file lock: two releases may finish together)."""
    import fcntl

    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.is_file() else {"models": []}
        models: List[Dict[str, Any]] = [m for m in doc["models"] if m["name"] != row["name"]]
        models.append(row)
        models.sort(key=lambda m: 0 if m["task"] == "classifier" else 1)
        write_atomic(path, (json.dumps({"models": models}, indent=1, sort_keys=True) + "\n").encode())
    path.with_name(path.name + ".lock").unlink(missing_ok=True)


def _pct(v, nd=2) -> str:
    return "n/a" if v is None else f"{100 * v:.{nd}f}"


def model_card(row: Dict[str, Any]) -> str:
    s = row["summary"]
    task = row["task"]
    arch = s["architecture"]
    kw = ", ".join(f"{k}={v}" for k, v in s["model_kwargs"].items())
    lines = [f"# Model card: {row['name']}", "",
             f"**Task:** {task} ({', '.join(s['labels'])}). **Network:** {arch} ({kw}), "
             f"{s['parameters'] / 1e6:.2f} M parameters, input 1×{s['input_size'][0]}×{s['input_size'][1]} "
             "grayscale in [0, 1] (covidedge's one preprocessing).", "",
             "## Data and training", "",
             "- Data: COVID-QU-Ex, *Infection Segmentation Data* subset (Tahir et al., Computers in Biology "
             "and Medicine 139, 2021; Kaggle \"COVID-QU-Ex Dataset\"). Trained on its **Train** split "
             f"({s['train_images']} images), model selected on **Val** ({s['val_images']} images) "
             f"at epoch {s['epoch']}. The Test split was not used.",
             f"- Command: `{s['command']}`",
             f"- Mixed precision: {(s.get('amp') or {}).get('dtype', 'fp32')} "
             f"(channels_last: {(s.get('amp') or {}).get('channels_last', False)}), on a CPU.",
             "", f"## Val metrics per precision ({s['split']} split, all {s['val_images']} images)", ""]
    if task == "classifier":
        lines += ["| model | size MB | accuracy | macro F1 | recall COVID-19 / Non-COVID / Normal | ECE | Δ vs checkpoint (pts) | agreement with checkpoint |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in s["val"]:
            rec = " / ".join(f"{r['recall'].get(k, 0):.3f}" for k in s["labels"])
            ece = "n/a" if r.get("ece") is None else f"{r['ece']:.4f}"
            lines.append(f"| {r['model']} | {r['size_mb']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {rec} | "
                         f"{ece} | {r.get('delta_points', 0.0):+.2f} | {r.get('agreement', 1.0):.4f} |")
        t = s.get("temperature") or 1.0
        lines += ["", f"Probabilities are calibrated by a temperature fitted on {s['split']} (negative "
                  f"log-likelihood): every graph computes softmax(logits / {t:.4f}); the `logits` output "
                  "is the network's own. ECE is the expected calibration error over 15 confidence bins "
                  "(the first row is before the temperature, the others after; the answers do not change)."]
        rob = s.get("robustness")
        if rob:
            lines += ["", f"### Accuracy under shifts a hospital brings ({rob['split']}, {rob['images']} images, "
                      "shipped fp32 graph)", "",
                      "| shift | accuracy | Δ vs clean (pts) | agreement with clean answers |", "|---|---:|---:|---:|"]
            for r in rob["rows"]:
                lines.append(f"| {r['shift']} | {r['accuracy']:.4f} | {r['delta_points']:+.2f} | {r['agreement']:.4f} |")
            lines += ["", "`python -m covidedge.evaluation.robustness MODEL --data COVID-QU-Ex` repeats it."]
            bn = rob.get("batchnorm_check")
            if bn:
                lines += ["", f"Eval-mode statistics: re-estimating the BatchNorm statistics on {bn['images']} "
                          f"other clean Train images (seed {bn['seed']}) moves {s['split']} accuracy from "
                          f"{bn['accuracy']:.4f} to {bn['accuracy_reestimated']:.4f} "
                          f"({bn['delta_points']:+.2f} points)"
                          + (": the saved statistics describe real films." if abs(bn["delta_points"]) < 0.5
                             else ": more than half a point, so the saved statistics do not describe real "
                                  "films well.")]
    else:
        lines += ["| model | size MB | lung Dice | infection Dice (COVID-19 images) | infection IoU | FP infected area, infection-free images (% of image) | severity MAE (% of lungs) | Δ lung / infection (pts) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in s["val"]:
            lines.append(f"| {r['model']} | {r['size_mb']} | {r['lung_dice']:.4f} | {r['infection_dice']:.4f} | "
                         f"{r['infection_iou']:.4f} | {_pct(r['fp_infection_fraction'])} | {_pct(r['severity_mae'])} | "
                         f"{r.get('delta_lung_points', 0.0):+.2f} / {r.get('delta_infection_points', 0.0):+.2f} |")
    c, cal = s["compact"], s["calibration"]
    lines += ["",
              f"Shipped as fp16-stored weights ({c['fp16_tensors']} tensors; {c['fp32_tensors']} small tensors kept "
              f"fp32; largest relative rounding error of a tensor {c['max_relative_rounding']:.1e} (L2)), {c['bytes'] / 1e6:.1f} MB, restored "
              "to fp32 on first use; the second row is that restored graph, the first the unrounded checkpoint.",
              f"`covidedge build-engine` builds **{s['cpu_engine_precision']}** for ONNX Runtime on a CPU "
              f"(int8 when the CPU int8 form is within {FAITHFUL_POINTS:g} point of the checkpoint on Val"
              + (f" and agrees with it on at least {FAITHFUL_AGREEMENT:.0%} of the images" if task == "classifier" else
                 " in lung and in infection Dice")
              + ") and fp16 + int8 plans where TensorRT is present.", "",
              "## Calibration", "",
              f"int8 ranges ({cal['method']}, {cal['count']} Train images, seed {cal['seed']}, class balance "
              f"{cal['class_balance']}) are shipped as `{row['calibration_cache']}`; the image list with "
              f"sha256 is `{Path(cal['manifest']).as_posix()}` in the repository (manifest sha256 "
              f"{cal['sha256'][:16]}…). int8 builds of this model read no images.", "",
              "## Intended use and limits", "",
              "- Research and engineering of edge deployment (latency, precision, faithfulness). **Not a "
              "medical device**; not validated for diagnosis or triage.",
              "- Frontal (PA/AP) adult chest X-rays like COVID-QU-Ex's; other views, children, devices or "
              "hospitals may differ. Inputs that do not look like a frontal chest X-ray (CT or MR slices, "
              "photographs, documents) get the `out_of_distribution` quality flag and a warning; `--strict` "
              "refuses them. Val images come from the same sources as Train, so Val figures are "
              "optimistic for other sites.",
              "- COVID-QU-Ex is distributed for research under the terms on its Kaggle page; check them "
              "before any other use.", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--command", required=True, help="the training command, for the card")
    p.add_argument("--calib-count", type=int, default=500)
    p.add_argument("--calib-method", default="entropy", help="minmax, entropy or percentile")
    p.add_argument("--out-dir", default=str(PACKAGE_DIR))
    p.add_argument("--calibration-dir", default="calibration")
    a = p.parse_args(argv)
    row = release(a.checkpoint, a.name, a.data, command=a.command, calib_count=a.calib_count,
                  calib_method=a.calib_method,
                  out_dir=a.out_dir, calibration_dir=a.calibration_dir)
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
