"""The whole pipeline end to end, for a first look: data -> train -> engines -> evaluate -> infer -> bench.

On a machine without a GPU this runs in a few minutes on the embedded default (ONNX Runtime on
the CPU); where TensorRT and a GPU are present the engines are TensorRT plans. Without ``data`` it
makes a small synthetic dataset (for a demonstration only: its numbers say nothing about real
X-rays); with a COVID-QU-Ex folder it does the same on real images.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from covidedge.errors import BadInputError
from covidedge.fileio import write_atomic
from covidedge.spec import PRECISIONS



@dataclass
class DemoSettings:
    """Sizes of the demo run. Defaults keep it to a few minutes on a 2-core CPU.

    The networks are named variants of the model registry (covidedge.models.registry.VARIANTS);
    ``image_size``, when given, overrides the variants' input size."""

    classifier_variant: str = "xception64-small"
    segmenter_variant: str = "resunet64-small"
    image_size: Optional[int] = None
    epochs: int = 16
    batch_size: int = 8
    lr: float = 3e-3
    per_class: int = 40
    limit_per_class: Optional[int] = None
    eval_limit_per_class: Optional[int] = None
    calib_count: int = 48
    infer_images: int = 6
    bench_iterations: int = 30
    precisions: Sequence[str] = PRECISIONS
    seed: int = 0

    @classmethod
    def for_real_data(cls, **kw) -> "DemoSettings":
        """Larger defaults for a real COVID-QU-Ex folder (:data:`REAL_DATA_SETTINGS`)."""
        return cls(**{**REAL_DATA_SETTINGS, **kw})


#: What a real COVID-QU-Ex folder changes in :class:`DemoSettings`: a few hundred images at 128 px.
REAL_DATA_SETTINGS: Dict[str, Any] = dict(classifier_variant="xception128-small",
                                          segmenter_variant="resunet128-small", epochs=8, batch_size=16,
                                          lr=1e-3, limit_per_class=100, eval_limit_per_class=60,
                                          calib_count=60)


def input_size(settings: "DemoSettings") -> int:
    """The demo's training and engine input size: ``image_size`` or the classifier variant's."""
    from covidedge.models.registry import get_variant

    return settings.image_size or get_variant(settings.classifier_variant, "classifier").input_size


@dataclass
class DemoResult:
    out_dir: Path
    data_root: Path
    synthetic: bool
    steps: Dict[str, Any] = field(default_factory=dict)
    summary_md: Optional[Path] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"out_dir": str(self.out_dir), "data_root": str(self.data_root),
                "synthetic": self.synthetic, "summary": str(self.summary_md), **self.steps}


#: What a demo writes into its folder; ``--overwrite`` removes these and nothing else, and only
#: where :data:`DEMO_MARKER` says an earlier demo made them.
DEMO_FOLDERS = ("runs", "engines", "infer", "reports", "data", "calibration")
DEMO_FILES = ("summary.md", "summary.json")
DEMO_MARKER = "covidedge-demo.json"


def _remove_previous_demo(out: Path) -> None:
    """Delete what an earlier demo made in ``out``; refuse when ``out`` holds demo-named folders
    that no demo marked as its own (a user's ``data`` or ``reports`` is never deleted)."""
    import shutil

    present = [n for n in (*DEMO_FOLDERS, *DEMO_FILES) if (out / n).exists()]
    if not present:
        return
    try:
        marked = json.loads((out / DEMO_MARKER).read_text())
        ours = set(marked.get("folders", [])) | set(marked.get("files", []))
    except (OSError, ValueError, AttributeError):
        ours = set()
    foreign = [n for n in present if n not in ours]
    if foreign:
        raise BadInputError(f"--overwrite would delete {', '.join(foreign)}, which covidedge demo did not "
                            f"make (no {DEMO_MARKER} marks them)", path=out,
                            hint="choose another --out, or move those files away")
    for n in present:
        target = out / n
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


def run_demo(out_dir="demo", data=None, settings: Optional[DemoSettings] = None, *,
             backend: str = "auto", overwrite: bool = False, progress: bool = True,
             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> DemoResult:
    """Run every stage once and write ``summary.md`` / ``summary.json`` under ``out_dir``.

    ``data`` is a COVID-QU-Ex folder, or None for a synthetic one made under ``out_dir/data``.
    ``backend`` is the engine backend (auto: TensorRT where present, else ONNX Runtime).
    """
    from covidedge.bench.timing import time_runner
    from covidedge.data.covidqu import CovidQuDataset
    from covidedge.engine.build import build_engine, resolve_backend
    from covidedge.engine.paths import default_engine_path
    from covidedge.machine import module_present
    from covidedge.evaluation import evaluate
    from covidedge.export.calibration import make_calibration_set
    from covidedge.runtime import load
    from covidedge.runtime.run import run_inference
    from covidedge.train.loop import train_classifier, train_segmenter

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BadInputError("output folder is not empty", path=out,
                            hint="pass --overwrite to replace the demo there, or another --out")
    if out.exists() and overwrite:
        _remove_previous_demo(out)
    out.mkdir(parents=True, exist_ok=True)
    # the marker first: an interrupted demo is still recognised as ours (and replaced) later
    write_atomic(out / DEMO_MARKER, (json.dumps({"made_by": "covidedge demo", "folders": list(DEMO_FOLDERS),
                                                 "files": list(DEMO_FILES)}, indent=1) + "\n").encode("utf-8"))
    synthetic = data is None
    s = settings or (DemoSettings() if synthetic else DemoSettings.for_real_data())
    for p in s.precisions:
        if p not in PRECISIONS:
            raise BadInputError(f"precision {p!r} is unknown; expected some of {', '.join(PRECISIONS)}")
    t_start = time.perf_counter()
    result = DemoResult(out_dir=out, data_root=Path(data) if data else out / "data", synthetic=synthetic)
    steps = result.steps

    # 1. data ------------------------------------------------------------------------------
    if synthetic:
        from covidedge.data.synth import make_synthetic_dataset

        log(f"[1/6] data: writing a synthetic dataset ({s.per_class} images per class and split) "
                  f"to {out / 'data'} - synthetic, for a demonstration only")
        make_synthetic_dataset(out / "data", per_class=s.per_class, seed=s.seed,
                               splits=("Train", "Val", "Test"))
    else:
        log(f"[1/6] data: using {data}")
    ds = CovidQuDataset(result.data_root)
    steps["data"] = {"root": str(ds.root), "counts": ds.counts(), "synthetic": synthetic}

    # 2. train -----------------------------------------------------------------------------
    size = input_size(s)
    common = dict(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, image_size=size,
                  seed=s.seed, progress=progress,
                  limit_per_class=s.limit_per_class, overwrite=True, patience=max(3, s.epochs))
    log(f"[2/6] train: classifier {s.classifier_variant} ({size} px, {s.epochs} epochs)")
    cls = train_classifier(result.data_root, out / "runs" / "classifier", variant=s.classifier_variant,
                           **common)
    log(f"[2/6] train: segmenter {s.segmenter_variant} ({size} px, {s.epochs} epochs)")
    seg = train_segmenter(result.data_root, out / "runs" / "segmenter", variant=s.segmenter_variant,
                          **common)
    steps["train"] = {
        "classifier": {"checkpoint": str(cls.best_checkpoint), "best_epoch": cls.best_epoch,
                       "monitor": cls.monitor, "best_score": cls.best_score, "seconds": round(cls.seconds, 1)},
        "segmenter": {"checkpoint": str(seg.best_checkpoint), "best_epoch": seg.best_epoch,
                      "monitor": seg.monitor, "best_score": seg.best_score, "seconds": round(seg.seconds, 1)},
    }

    # 3. engines ---------------------------------------------------------------------------
    calib = None
    if "int8" in s.precisions:
        calib = make_calibration_set(result.data_root, s.calib_count, split="Train", seed=s.seed,
                                     input_size=(size, size),
                                     out=out / "calibration" / "calibration.json")
    engines: Dict[str, Dict[str, Path]] = {"classifier": {}, "segmenter": {}}
    build_rows: List[Dict[str, Any]] = []
    chosen = resolve_backend(backend, module_present("tensorrt"), module_present("pycuda"))
    for task, ckpt in (("classifier", cls.best_checkpoint), ("segmenter", seg.best_checkpoint)):
        for prec in s.precisions:
            log(f"[3/6] build-engine: {task} {prec}")
            # named by backend as build-engine names them (.trt.engine, .ort.onnx, .ov.onnx); a
            # TensorRT name here leaves out the release and GPU that build-engine's default adds
            res = build_engine(ckpt, default_engine_path(f"{task}.pt", prec, chosen, build_dir=out / "engines"),
                               precision=prec,
                               backend=backend, calibration=calib if prec == "int8" else None,
                               max_batch=8, progress=progress)
            engines[task][prec] = res.engine_path
            build_rows.append({"task": task, "precision": prec, "backend": res.backend,
                               "engine": str(res.engine_path), "manifest": str(res.manifest_path),
                               "size_mb": round(res.engine_path.stat().st_size / 2 ** 20, 3),
                               "note": res.note})
    steps["engines"] = build_rows

    # 4. evaluate: accuracy / Dice per precision on Val -----------------------------------
    eval_rows: List[Dict[str, Any]] = []
    for task, ckpt in (("classifier", cls.best_checkpoint), ("segmenter", seg.best_checkpoint)):
        candidates = [("checkpoint", "torch", ckpt)] + [(p, "engine", e) for p, e in engines[task].items()]
        for prec, kind, path in candidates:
            log(f"[4/6] evaluate: {task} {prec} on Val")
            rep = evaluate(path, result.data_root, "Val", limit_per_class=s.eval_limit_per_class,
                           progress=progress, seed=s.seed)
            row = {"task": task, "precision": prec, "model": str(path)}
            row.update(_headline(rep))
            eval_rows.append(row)
    steps["evaluate"] = eval_rows

    # 5. infer -----------------------------------------------------------------------------
    best = "int8" if "int8" in s.precisions else s.precisions[0]
    val_images = [smp.image for smp in ds.samples("Val")]
    picks = _spread(val_images, s.infer_images)
    infer_dir = out / "infer"
    log(f"[5/6] infer: {len(picks)} Val images with the {best} engines -> {infer_dir}")
    infer_rows: List[Dict[str, Any]] = []
    run = run_inference(picks, classifier=engines["classifier"][best], segmenter=engines["segmenter"][best],
                        batch_size=4, out_dir=infer_dir, on_result=lambda r: infer_rows.append(r.to_dict()),
                        on_note=log)
    steps["infer"] = {"out_dir": str(infer_dir), "results_file": str(run.results_path),
                      "summary": run.to_dict(), "results": infer_rows}

    # 6. bench -----------------------------------------------------------------------------
    bench_rows = []
    for task in ("classifier", "segmenter"):
        targets = [("checkpoint", cls.best_checkpoint if task == "classifier" else seg.best_checkpoint)]
        targets += list(engines[task].items())
        for prec, path in targets:
            log(f"[6/6] bench: {task} {prec} at batch 1")
            with load(path) as runner:
                st = time_runner(runner, 1, warmup=5, iterations=s.bench_iterations)
                bench_rows.append({"task": task, "precision": prec, "backend": runner.backend,
                                   "median_ms": round(st.median_ms, 3), "p99_ms": round(st.p99_ms, 3),
                                   "fps": round(st.throughput, 1), "cv": round(st.cv, 3)})
    steps["bench"] = bench_rows
    steps["seconds"] = round(time.perf_counter() - t_start, 1)

    result.summary_md = _write_summary(out, result, s)
    write_atomic(out / "summary.json", json.dumps(result.to_dict(), indent=2, default=str).encode("utf-8"))
    return result


def _headline(report) -> Dict[str, Any]:
    """The one or two numbers of an EvaluationReport that the summary table shows."""
    m = report.metrics
    if report.task == "classifier":
        return {"metric": "accuracy", "value": m.get("accuracy")}
    return {"metric": "lung Dice / infection Dice", "value": m.get("lung_dice"),
            "value2": m.get("infection_dice")}


def _spread(items: List[Path], n: int) -> List[Path]:
    """``n`` items spread evenly over the list (so every class shows up in a sorted list)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _write_summary(out: Path, result: DemoResult, s: DemoSettings) -> Path:
    st = result.steps
    lines = ["# covidedge demo", ""]
    if result.synthetic:
        lines += ["Data: a **synthetic** COVID-QU-Ex twin (for a demonstration only; its numbers say "
                  "nothing about real X-rays).", ""]
    else:
        lines += [f"Data: `{result.data_root}`", ""]
    lines += [f"Settings: classifier {s.classifier_variant}, segmenter {s.segmenter_variant}, "
              f"{input_size(s)} px, {s.epochs} epochs. Total {st['seconds']} s.", "",
              "## Where everything went", "",
              f"- checkpoints: `{out / 'runs'}` (best.pt, history.json, learning_curves.png)",
              f"- engines and manifests: `{out / 'engines'}`",
              f"- masks, overlays, results.csv: `{out / 'infer'}`", "",
              "## Accuracy per precision (Val)", "",
              "| model | precision | metric | value |", "|---|---|---|---|"]
    for r in st["evaluate"]:
        val = _fmt(r.get("value")) + (f" / {_fmt(r.get('value2'))}" if "value2" in r else "")
        lines.append(f"| {r['task']} | {r['precision']} | {r['metric']} | {val} |")
    lines += ["", "## Latency at batch 1", "", "| model | precision | backend | median ms | p99 ms | FPS |",
              "|---|---|---|---|---|---|"]
    for r in st["bench"]:
        lines.append(f"| {r['task']} | {r['precision']} | {r['backend']} | {r['median_ms']} | "
                     f"{r['p99_ms']} | {r['fps']} |")
    lines += ["", "## Inference", "", "| image | class | confidence | lungs % of image | infected % of lungs |",
              "|---|---|---|---|---|"]
    for r in st["infer"]["results"]:
        if r.get("status") == "failed":
            lines.append(f"| {Path(r.get('source', '?')).name} | error: {r.get('error')} | | | |")
            continue
        probs = r.get("probabilities") or {}
        conf = probs.get(r.get("label")) if r.get("label") else None
        lf, inf = r.get("lung_fraction"), r.get("infected_fraction")
        lines.append(f"| {Path(r['source']).name} | {r.get('label')} | {_fmt(conf)} | "
                     f"{'-' if lf is None else f'{100 * lf:.1f}'} | {'-' if inf is None else f'{100 * inf:.1f}'} |")
    path = out / "summary.md"
    return write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
