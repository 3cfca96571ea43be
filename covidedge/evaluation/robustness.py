"""Accuracy under the shifts another hospital's films bring: the classifier on a split's images
as they are and after each shift (lower resolution, gamma, contrast, noise, JPEG compression,
a border with burnt-in text), with the change in points and the agreement with its own answers
on the clean images.

    python -m covidedge.evaluation.robustness MODEL --data COVID-QU-Ex [--split Val] [--json]

Every shift is applied to the decoded image at its own size, before covidedge's one
preprocessing, as a film from another site would arrive. Noise is seeded per image, so a run
repeats exactly.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["SHIFTS", "classifier_robustness", "format_robustness"]


def _resolution(g: np.ndarray, rng) -> np.ndarray:
    from PIL import Image

    h, w = g.shape
    small = Image.fromarray(g.astype(np.float32), mode="F").resize((max(8, w // 4), max(8, h // 4)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.float32)


def _jpeg(g: np.ndarray, rng) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(g * 255), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=30)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _border_text(g: np.ndarray, rng) -> np.ndarray:
    from PIL import Image, ImageDraw

    h, w = g.shape
    b = max(2, round(0.06 * min(h, w)))
    out = np.zeros_like(g)
    out[b:h - b, b:w - b] = g[b:h - b, b:w - b]
    im = Image.fromarray(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.text((b + 4, b + 4), "L", fill=255)
    draw.text((w // 2, h - b - 14), "PORTABLE AP 12/05", fill=255)
    return np.asarray(im, dtype=np.float32) / 255.0


#: The shifts, by name: each maps a gray [0, 1] image (and a seeded generator) to another.
SHIFTS: Dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "resolution 1/4, resampled back": _resolution,
    "gamma 0.7": lambda g, rng: g ** 0.7,
    "gamma 1.4": lambda g, rng: g ** 1.4,
    "contrast 0.7": lambda g, rng: np.clip(g.mean() + 0.7 * (g - g.mean()), 0, 1),
    "gaussian noise 0.03": lambda g, rng: np.clip(g + rng.normal(0, 0.03, g.shape), 0, 1),
    "JPEG quality 30": _jpeg,
    "border and burnt-in text": _border_text,
}


def classifier_robustness(model, data_root, split: str = "Val", *, backend: str = "auto",
                          limit_per_class: Optional[int] = None, batch_size: int = 16,
                          seed: int = 0) -> Dict[str, Any]:
    """Accuracy of the classifier ``model`` (path or Runner) on ``split`` clean and under each of
    ``SHIFTS``: rows of shift, accuracy, change in points against clean and agreement with the
    clean answers."""
    from covidedge.backends.base import infer_fitted
    from covidedge.data.covidqu import CovidQuDataset, select_samples
    from covidedge.data.imageio import read_gray
    from covidedge.data.preprocess import resize_gray
    from covidedge.evaluation.run import _open

    runner, _ = _open(model, backend)
    was_active = runner.is_active
    try:
        runner.activate()
        spec = runner.spec
        samples = select_samples(CovidQuDataset(data_root).samples(split), limit_per_class, seed)
        y = np.array([list(spec.labels).index(s.label) for s in samples])
        grays = [read_gray(s.image) for s in samples]

        def predict(images: List[np.ndarray]) -> np.ndarray:
            out = np.zeros(len(images), dtype=np.int64)
            for a in range(0, len(images), batch_size):
                x = np.stack([resize_gray(g, spec.input_size)[None] for g in images[a:a + batch_size]])
                p = infer_fitted(runner, x.astype(np.float32))[spec.output_names[1]]
                out[a:a + len(x)] = np.asarray(p).argmax(axis=1)
            return out

        clean = predict(grays)
        acc0 = float((clean == y).mean())
        rows = [{"shift": "none (clean)", "accuracy": acc0, "delta_points": 0.0, "agreement": 1.0}]
        for i, (name, fn) in enumerate(SHIFTS.items()):
            shifted = [np.asarray(fn(g, np.random.default_rng([seed, i, k])), dtype=np.float32)
                       for k, g in enumerate(grays)]
            pred = predict(shifted)
            acc = float((pred == y).mean())
            rows.append({"shift": name, "accuracy": acc, "delta_points": round(100 * (acc - acc0), 2),
                         "agreement": float((pred == clean).mean())})
    finally:
        if not was_active:
            runner.deactivate()
    worst = min(r["delta_points"] for r in rows)
    return {"model": str(getattr(runner, "source", model)), "split": split, "images": len(samples),
            "rows": rows, "worst_delta_points": worst}


def format_robustness(result: Dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [f"Accuracy under shifts, {result['split']} ({result['images']} images):", "",
             "| shift | accuracy | Δ vs clean (pts) | agreement with clean answers |",
             "|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['shift']} | {r['accuracy']:.4f} | {r['delta_points']:+.2f} | {r['agreement']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Classifier accuracy under shifts a hospital brings.")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="Val")
    p.add_argument("--backend", default="auto")
    p.add_argument("--limit-per-class", type=int, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = classifier_robustness(a.model, a.data, a.split, backend=a.backend,
                                limit_per_class=a.limit_per_class)
    print(json.dumps(res, indent=1) if a.json else format_robustness(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
