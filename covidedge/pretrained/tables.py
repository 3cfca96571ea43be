"""The results tables of README.md and docs/, rendered from the shipped models' index and the
benchmark results, never pasted by hand.

A Markdown file holds each table between two marker comments::

    <!-- tables:accuracy -->
    ...rendered rows, replaced on every run...
    <!-- /tables:accuracy -->

Blocks: ``accuracy`` (accuracy / Dice per precision of every shipped model, short),
``classifier`` and ``segmenter`` (the full Val rows of the shipped model of that task, with ECE,
change against the checkpoint and agreement), ``temperature`` and ``robustness`` (the
classifier's calibration temperature and its accuracy under hospital shifts), ``latency`` (ms per
image per engine at batch 1, from the newest ``benchmarks/results/*.json`` run).

    python -m covidedge.pretrained.tables README.md docs/*.md          # rewrite the blocks
    python -m covidedge.pretrained.tables --check README.md docs/*.md  # exit 1 when one differs

Reads ``models.json`` of :func:`covidedge.pretrained.models_dir`; needs no torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from covidedge.pretrained import shipped_models

BLOCK = re.compile(r"(<!-- tables:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /tables:(?P=name) -->)", re.S)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _f(v: Optional[float], fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _model(task: str):
    return next((m for m in shipped_models() if m.task == task), None)


def _key_label(row: Dict[str, Any]) -> str:
    return {"checkpoint": "checkpoint (torch)", "fp32": "fp32 graph", "fp16": "fp16 graph",
            "int8-s8": "int8, TensorRT form (s8)", "int8-u8": "int8, ONNX Runtime CPU form (u8)"
            }.get(row.get("key", ""), row.get("model", "?"))


def accuracy_table() -> str:
    """Every shipped model's headline metric per precision, on its selection split."""
    out: List[str] = []
    for m in shipped_models():
        s = m.summary
        rows = s.get("val") or []
        if not rows:
            continue
        split, n = s.get("split", "Val"), s.get("val_images", "?")
        if m.task == "classifier":
            out += [f"**{m.name}** (classifier; {split}, {n} images; CPU engine: {s.get('cpu_engine_precision', 'fp32')})",
                    "", "| model | accuracy | macro F1 | ECE | Δ vs checkpoint (pts) | agreement |",
                    "|---|---:|---:|---:|---:|---:|"]
            for r in rows:
                out.append(f"| {_key_label(r)} | {_f(r.get('accuracy'))} | {_f(r.get('macro_f1'))} | "
                           f"{_f(r.get('ece'))} | {r.get('delta_points', 0.0):+.2f} | {r.get('agreement', 1.0):.4f} |")
        else:
            out += [f"**{m.name}** (segmenter; {split}, {n} images; CPU engine: {s.get('cpu_engine_precision', 'fp32')})",
                    "", "| model | lung Dice | infection Dice | severity MAE (% of lungs) | Δ lung / infection (pts) |",
                    "|---|---:|---:|---:|---|"]
            for r in rows:
                out.append(f"| {_key_label(r)} | {_f(r.get('lung_dice'))} | {_f(r.get('infection_dice'))} | "
                           f"{_pct(r.get('severity_mae'))} | {r.get('delta_lung_points', 0.0):+.2f} / "
                           f"{r.get('delta_infection_points', 0.0):+.2f} |")
        out.append("")
    return "\n".join(out).rstrip("\n") or "(no shipped model)"


def classifier_table() -> str:
    """The shipped classifier's full Val rows."""
    m = _model("classifier")
    if m is None:
        return "(no shipped classifier)"
    s = m.summary
    labels = s.get("labels") or []
    lines = [f"| model | size MB | accuracy | macro F1 | recall {' / '.join(labels)} | ECE | "
             "Δ vs checkpoint (pts) | agreement with checkpoint |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in s.get("val") or []:
        rec = " / ".join(f"{(r.get('recall') or {}).get(k, 0):.3f}" for k in labels)
        lines.append(f"| {r['model']} | {r.get('size_mb')} | {_f(r.get('accuracy'))} | {_f(r.get('macro_f1'))} | "
                     f"{rec} | {_f(r.get('ece'))} | {r.get('delta_points', 0.0):+.2f} | {r.get('agreement', 1.0):.4f} |")
    return "\n".join(lines)


def segmenter_table() -> str:
    """The shipped segmenter's full Val rows."""
    m = _model("segmenter")
    if m is None:
        return "(no shipped segmenter)"
    lines = ["| model | size MB | lung Dice | infection Dice (COVID-19 images) | infection IoU | FP infected area, "
             "infection-free images (% of image) | severity MAE (% of lungs) | Δ lung / infection (pts) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in m.summary.get("val") or []:
        lines.append(f"| {r['model']} | {r.get('size_mb')} | {_f(r.get('lung_dice'))} | {_f(r.get('infection_dice'))} | "
                     f"{_f(r.get('infection_iou'))} | {_pct(r.get('fp_infection_fraction'))} | "
                     f"{_pct(r.get('severity_mae'))} | {r.get('delta_lung_points', 0.0):+.2f} / "
                     f"{r.get('delta_infection_points', 0.0):+.2f} |")
    return "\n".join(lines)


def temperature_line() -> str:
    """One sentence: the classifier's temperature."""
    m = _model("classifier")
    if m is None:
        return "(no shipped classifier)"
    t = m.summary.get("temperature")
    if t is None:
        return (f"{m.name} was released before temperature scaling: its graphs compute "
                "softmax(logits) (temperature 1).")
    return (f"{m.name}: temperature {t:.4f}, fitted on {m.summary.get('split', 'Val')} (negative "
            f"log-likelihood); every graph computes softmax(logits / {t:.4f}), so the answers do not "
            "change and ECE drops.")


def robustness_table() -> str:
    """The classifier's accuracy under the shifts of covidedge.evaluation.robustness."""
    m = _model("classifier")
    rob = (m.summary.get("robustness") if m is not None else None) or {}
    if not rob.get("rows"):
        return "(the shipped classifier's release recorded no robustness run)"
    lines = [f"{rob.get('split', 'Val')}, {rob.get('images', '?')} images, shipped fp32 graph:", "",
             "| shift | accuracy | Δ vs clean (pts) | agreement with clean answers |", "|---|---:|---:|---:|"]
    for r in rob["rows"]:
        lines.append(f"| {r['shift']} | {_f(r.get('accuracy'))} | {r.get('delta_points', 0.0):+.2f} | "
                     f"{_f(r.get('agreement'))} |")
    bn = rob.get("batchnorm_check")
    if bn:
        lines += ["", f"BatchNorm statistics re-estimated on {bn.get('images')} other clean Train images: "
                  f"accuracy {_f(bn.get('accuracy'))} -> {_f(bn.get('accuracy_reestimated'))} "
                  f"({bn.get('delta_points', 0.0):+.2f} points)."]
    return "\n".join(lines)


def _latest_benchmark(folder: Path) -> Optional[Path]:
    """The newest run of benchmarks/compare_backends.py in ``folder`` (a JSON with a report and a
    comparison; other scripts' results are left alone)."""
    runs = []
    for p in folder.glob("*.json"):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "comparison" in doc and isinstance(doc.get("report"), dict):
            runs.append((str(doc["report"].get("created_utc", "")), p.name, p))
    return max(runs)[2] if runs else None


def latency_table(folder: Optional[Path] = None) -> str:
    """ms per image at batch 1 per engine, from the newest benchmarks/results/*.json run."""
    path = _latest_benchmark(folder or REPO_ROOT / "benchmarks" / "results")
    if path is None:
        return "(no benchmark run in benchmarks/results/)"
    report = json.loads(path.read_text())["report"]
    rows = [r for r in report["rows"] if r.get("batch") == 1]
    models = list(dict.fromkeys(r["model"] for r in rows))
    engines = list(dict.fromkeys((r["backend"], r["precision"]) for r in rows))
    lines = ["| engine | precision | " + " | ".join(models) + " |", "|---|---" + "|---:" * len(models) + "|"]
    for b, p in engines:
        cells = []
        for model in models:
            r = next((r for r in rows if r["model"] == model and (r["backend"], r["precision"]) == (b, p)), None)
            cells.append("-" if r is None else f"{r['ms_per_image']:.1f}")
        lines.append(f"| {b} | {p} | " + " | ".join(cells) + " |")
    mach = report.get("machine") or {}
    lines += ["", f"ms per image, batch 1, `{path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else path.name}` "
              f"({mach.get('cpu', '?')}, {mach.get('cpu_cores', '?')} cores, {report.get('created_utc', '?')[:10]})."]
    return "\n".join(lines)


RENDERERS: Dict[str, Callable[[], str]] = {
    "accuracy": accuracy_table, "classifier": classifier_table, "segmenter": segmenter_table,
    "temperature": temperature_line, "robustness": robustness_table, "latency": latency_table,
}


def render_text(text: str) -> str:
    """``text`` with every marked block replaced by what its renderer gives now."""
    def sub(m: re.Match) -> str:
        fn = RENDERERS.get(m.group("name"))
        if fn is None:
            raise ValueError(f"unknown table block {m.group('name')!r} (known: {', '.join(RENDERERS)})")
        return m.group(1) + fn().rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(sub, text)


def stale(paths) -> List[str]:
    """The files among ``paths`` whose blocks differ from what the renderers give now."""
    return [str(p) for p in paths if render_text(Path(p).read_text()) != Path(p).read_text()]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="Markdown files (default: README.md and docs/*.md of the repository)")
    p.add_argument("--check", action="store_true", help="only say which files differ (exit 1)")
    a = p.parse_args(argv)
    files = [Path(f) for f in a.files] or [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    if a.check:
        bad = stale(files)
        for f in bad:
            print(f"{f}: tables differ from models.json; run python -m covidedge.pretrained.tables", file=sys.stderr)
        return 1 if bad else 0
    from covidedge.fileio import write_atomic

    for f in files:
        text = f.read_text()
        new = render_text(text)
        if new != text:
            write_atomic(f, new.encode("utf-8"))
            print(f"updated {f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
