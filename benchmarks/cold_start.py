"""Cold start of covidedge: from a fresh Python process to the first classification result.

Edge devices often run one image per process (a camera trigger, a PACS hook), so the time to
import the runtime, open the model and classify one X-ray matters as much as warm latency. Each
measurement runs in a fresh subprocess, N times, and reports the median (and min / max) in ms:

* ``import covidedge.runtime`` alone (the import cost of the runtime, measured inside the process);
* the Python API: ``Pipeline(classifier=MODEL).predict(IMAGE)``, inside the process
  (import + model load + first result) and as the whole process's wall time seen from outside;
* the command line: ``python -m covidedge infer IMAGE --classifier MODEL --format json``.

Every API run also reports whether torch was imported (it must not be, for an ONNX model or
an engine).

Usage:
    python benchmarks/cold_start.py                       # builds a small Xception first
    python benchmarks/cold_start.py --width-mult 1.0      # the full-size Xception (80 MB)
    python benchmarks/cold_start.py --model build/cls.onnx --image xray.png --runs 11 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

API_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from covidedge import Pipeline
t1 = time.perf_counter()
pipe = Pipeline(classifier=sys.argv[1])
r = pipe.predict(sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_result_ms": (t2 - t0) * 1e3,
                  "label": r.label, "torch_loaded": "torch" in sys.modules,
                  "backend": pipe.classifier.backend}))
"""

IMPORT_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import covidedge.runtime
print(json.dumps({"import_ms": (time.perf_counter() - t0) * 1e3, "torch_loaded": "torch" in sys.modules}))
"""


def build_classifier(folder: Path, width_mult: float, size: int) -> Path:
    """Export an untrained Xception classifier to ONNX (needs torch; weights do not change timing)."""
    import torch

    from covidedge.export import export_model
    from covidedge.models.registry import create_model
    from covidedge.spec import classifier_spec
    from covidedge.formats.checkpoint import save_checkpoint

    torch.manual_seed(0)
    spec = classifier_spec(input_size=(size, size), model_kwargs={"width_mult": width_mult})
    model = create_model("xception", width_mult=width_mult).eval()
    ckpt = save_checkpoint(folder / "cls.pt", model, spec)
    out = folder / "cls.onnx"
    export_model(ckpt, out, precision="fp32")
    return out


def write_image(folder: Path, size: int = 256) -> Path:
    """A 256x256 8-bit gray test image (a smooth gradient with two dark ellipses)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.6 + 0.3 * yy
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 0.2
    path = folder / "xray.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def _run(cmd, env) -> tuple:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    wall = (time.perf_counter() - t0) * 1e3
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:3])} ... exited {proc.returncode}: "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    return wall, proc.stdout


def _stats(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(model: Path, image: Path, runs: int) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    py = sys.executable
    # One untimed run of each, so that file caches and .pyc files are warm: "cold" means a
    # fresh process, not a fresh disk.
    _run([py, "-c", API_SCRIPT, str(model), str(image)], env)
    _run([py, "-m", "covidedge", "infer", str(image), "--classifier", str(model), "--format", "json"], env)
    imports, api_in, api_wall, cli_wall, torch_seen, backend = [], [], [], [], False, ""
    for _ in range(runs):
        _, out = _run([py, "-c", IMPORT_SCRIPT], env)
        d = json.loads(out)
        imports.append(d["import_ms"])
        torch_seen |= d["torch_loaded"]
        wall, out = _run([py, "-c", API_SCRIPT, str(model), str(image)], env)
        d = json.loads(out)
        api_in.append(d["first_result_ms"])
        api_wall.append(wall)
        torch_seen |= d["torch_loaded"]
        backend = d["backend"]
        wall, _ = _run([py, "-m", "covidedge", "infer", str(image), "--classifier", str(model),
                        "--format", "json"], env)
        cli_wall.append(wall)
    return {
        "model": str(model), "model_mb": round(model.stat().st_size / 2**20, 2), "image": str(image),
        "backend": backend, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "torch_imported": torch_seen,
        "import_covidedge_runtime_ms": _stats(imports),
        "api_first_result_in_process_ms": _stats(api_in),
        "api_process_wall_ms": _stats(api_wall),
        "cli_process_wall_ms": _stats(cli_wall),
    }


def print_table(r: dict) -> None:
    print(f"model {r['model']} ({r['model_mb']} MB, {r['backend']}), {r['import_covidedge_runtime_ms']['n']} "
          f"fresh processes each, Python {r['python']}, {r['cpu_count']} CPUs")
    print(f"{'measurement':<44} {'median ms':>10} {'min':>8} {'max':>8}")
    rows = [("import covidedge.runtime", "import_covidedge_runtime_ms"),
            ("API: import + load + first result (in process)", "api_first_result_in_process_ms"),
            ("API: whole process (wall)", "api_process_wall_ms"),
            ("CLI: covidedge infer, whole process (wall)", "cli_process_wall_ms")]
    for label, key in rows:
        s = r[key]
        print(f"{label:<44} {s['median']:>10.1f} {s['min']:>8.1f} {s['max']:>8.1f}")
    print(f"torch imported: {'YES (it should not be)' if r['torch_imported'] else 'no'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="classifier ONNX model or engine (default: build one)")
    ap.add_argument("--image", type=Path, help="X-ray to classify (default: a generated 256x256 PNG)")
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per measurement (default 7)")
    ap.add_argument("--width-mult", type=float, default=0.25,
                    help="width of the Xception built when --model is absent (default 0.25, a "
                         "5 MB model; 1.0 = the full-size 80 MB model)")
    ap.add_argument("--size", type=int, default=256, help="input size of the built model in px")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="covidedge-cold-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            print(f"building an Xception classifier (width_mult={args.width_mult}, "
                  f"{args.size}x{args.size}) ...", file=sys.stderr)
            model = build_classifier(tmp, args.width_mult, args.size)
        image = args.image or write_image(tmp)
        result = measure(model, image, args.runs)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
