"""Peak memory (resident set) of decoding and classifying one large X-ray, each case in a fresh
process.

Edge devices have 4-8 GB shared between the CPU and the GPU, so one huge image must not take the
process down. Each case runs in its own subprocess and reports its peak RSS (``VmHWM`` from
``/proc/self/status``, Linux), next to the peak of a process that only imports the same modules (the
baseline), so ``delta`` is what the image itself cost. Cases, on generated ``--size`` x
``--size`` images (default 8000, the 64-megapixel decode limit):

* ``decode``: ``read_gray`` (full size, float32);
* ``classifier-input``: decode + resize to the model's input, as the runtime pipeline does;
* ``classifier-input-reduced``: the same with ``reduce_for`` (JPEG draft / Pillow reduce);
* ``pipeline``: ``Pipeline(classifier=MODEL).predict(IMAGE)``, the whole classifier path
  (needs ``--model`` or torch to export a small untrained Xception);
* ``bombs``: eight small-file decompression bombs (highly compressible PNGs at the limit),
  classified one after another by one pipeline;
* ``bombs-batch``: the same eight in one ``predict_many(batch_size=8)`` call (what a batch of
  the runtime holds at once);
* ``infer-out``: ``covidedge infer IMAGE --out DIR`` with the default models (classifier and
  segmenter): masks and overlay made and written at the image's own size; its baseline is the
  same command on a 64 x 64 image (issue 22 asks for at most 1 GB peak at 8000 x 8000).

Usage (from any folder; run it from outside the repository with PYTHONPATH=OTHER_CHECKOUT to
measure another version of covidedge):
    python benchmarks/memory.py                      # all cases at 8000 x 8000
    python benchmarks/memory.py --size 4000 --json   # smaller, machine-readable
    python benchmarks/memory.py --model build/cls.onnx --cases pipeline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASE_SCRIPT = r"""
import sys
kind, path, model = sys.argv[1], sys.argv[2], sys.argv[3]
from covidedge.data.preprocess import as_gray, resize_gray
from covidedge.data.imageio import read_gray
if kind.startswith(("pipeline", "bombs")):
    from covidedge import Pipeline
    pipe = Pipeline(classifier=model)
if kind.endswith("baseline"):
    pass
elif kind == "decode":
    g = read_gray(path)
elif kind == "classifier-input":
    x = resize_gray(as_gray(path), (256, 256))
elif kind == "classifier-input-reduced":
    x = resize_gray(as_gray(path, reduce_for=(256, 256)), (256, 256))
elif kind == "pipeline":
    r = pipe.predict(path)
elif kind == "bombs":
    for p in path.split(","):
        r = pipe.predict(p)
elif kind == "bombs-batch":
    r = list(pipe.predict_many(path.split(","), batch_size=8))
elif kind == "infer-out":
    import tempfile
    from covidedge.cli.main import main
    try:
        main(["infer", path, "--out", tempfile.mkdtemp(prefix="covidedge-memory-")])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
# the peak of this process since it started (VmHWM is reset at exec, unlike ru_maxrss)
with open("/proc/self/status") as fh:
    print([line.split()[1] for line in fh if line.startswith("VmHWM:")][0])
"""


def make_images(folder: Path, size: int) -> dict:
    """Write the test images (a gradient with noise, so that files are not trivially small)."""
    import numpy as np
    from PIL import Image

    out = {}
    rng = np.random.default_rng(0)
    rows = np.linspace(0, 200, size, dtype=np.float32)[:, None]
    cols = np.linspace(0, 55, size, dtype=np.float32)[None, :]
    gray = (rows + cols).astype(np.uint8)
    gray += rng.integers(0, 8, size=(size, size), dtype=np.uint8)
    out["gray8.png"] = folder / "gray8.png"
    Image.fromarray(gray).save(out["gray8.png"], compress_level=1)
    out["rgb.jpg"] = folder / "rgb.jpg"
    Image.fromarray(gray).convert("RGB").save(out["rgb.jpg"], quality=90)
    out["gray16.png"] = folder / "gray16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(out["gray16.png"], compress_level=1)
    try:
        out["gray12.dcm"] = write_dicom(folder / "gray12.dcm", (gray.astype(np.uint16) * 16))
    except ImportError:
        print("pydicom is not installed: no DICOM case", file=sys.stderr)
    del gray
    bomb = Image.new("L", (size, size), 0)
    for i in range(8):
        p = folder / f"bomb{i}.png"
        bomb.save(p, compress_level=9)
        out[f"bomb{i}.png"] = p
    return out


def write_dicom(path: Path, pixels) -> Path:
    """A 12-bit MONOCHROME2 radiograph with a rescale and a window (uncompressed)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def build_classifier(folder: Path) -> Path:
    """A small untrained Xception exported to ONNX (weights do not change memory use)."""
    import torch

    from covidedge.export import export_model
    from covidedge.models.registry import create_model
    from covidedge.spec import classifier_spec
    from covidedge.formats.checkpoint import save_checkpoint

    torch.manual_seed(0)
    spec = classifier_spec(input_size=(256, 256), model_kwargs={"width_mult": 0.25})
    model = create_model("xception", width_mult=0.25).eval()
    ckpt = save_checkpoint(folder / "cls.pt", model, spec)
    out = folder / "cls.onnx"
    export_model(ckpt, out, precision="fp32", overwrite=True)  # --work is this script's scratch folder
    return out


def peak_rss_mb(kind: str, image: str, model: str) -> float:
    """Run one case in a fresh interpreter; its peak resident set in MB (its own VmHWM: the
    kernel's ru_maxrss of a child would include the parent's size at fork)."""
    proc = subprocess.run([sys.executable, "-c", CASE_SCRIPT, kind, image, model],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"case {kind} on {image} failed: {' '.join(tail)}")
    return int(proc.stdout.split()[-1]) / 1024.0  # kB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8000, help="image side in px (default 8000)")
    ap.add_argument("--model", default=None, help="classifier ONNX for the pipeline cases")
    ap.add_argument("--work", default=None, help="folder for the generated files (default: temporary)")
    ap.add_argument("--cases", default="decode,classifier-input,classifier-input-reduced,pipeline,"
                                       "bombs,bombs-batch,infer-out")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    work_ctx = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(args.work or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    images = make_images(work, args.size)
    model = args.model
    pipeline_cases = ("pipeline", "bombs", "bombs-batch")
    if model is None and any(c in pipeline_cases for c in cases):
        try:
            model = str(build_classifier(work))
        except ImportError:
            print("torch is not installed: skipping the pipeline cases (pass --model)", file=sys.stderr)
            cases = [c for c in cases if c not in pipeline_cases]
    rows = []
    base_plain = peak_rss_mb("baseline", "", model or "")
    base_pipe = peak_rss_mb("pipeline-baseline", "", model) if model and any(
        c in pipeline_cases for c in cases) else None
    for case in cases:
        if case.startswith("bombs"):
            targets = {"8 bombs": ",".join(str(images[f"bomb{i}.png"]) for i in range(8))}
        else:
            targets = {n: str(images[n]) for n in ("gray8.png", "rgb.jpg", "gray16.png", "gray12.dcm")
                       if n in images}
        base = base_pipe if case in pipeline_cases else base_plain
        if case == "infer-out":
            from PIL import Image

            small = work / "small.png"
            Image.new("L", (64, 64), 128).save(small)
            base = peak_rss_mb("infer-out", str(small), "")
        for name, path in targets.items():
            peak = peak_rss_mb(case, path, model or "")
            rows.append({"case": case, "image": name, "size": args.size, "peak_mb": round(peak, 1),
                         "baseline_mb": round(base, 1), "delta_mb": round(peak - base, 1)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'case':<26} {'image':<11} {'peak MB':>8} {'baseline':>9} {'delta':>8}")
        for r in rows:
            print(f"{r['case']:<26} {r['image']:<11} {r['peak_mb']:>8.0f} {r['baseline_mb']:>9.0f} "
                  f"{r['delta_mb']:>8.0f}")
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
