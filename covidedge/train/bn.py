"""Sound eval-mode statistics: BatchNorm statistics re-estimated on clean Train images, and an
exponential moving average (EMA) of the weights.

Why: BatchNorm's running mean and variance are tracked on the batches the network trains on,
and those are augmented (zero-padded rotations, shifts and zooms, per-image contrast and
brightness). At 256 px their activation statistics drift away from those of real films, so a
model in eval mode normalises clean X-rays with the wrong numbers: Val accuracy swings between
epochs while the training loss falls. ``recompute_batchnorm`` replaces the running statistics
with exact averages over a fixed, seeded subset of *clean* Train images (no augmentation, fp32,
no gradients), the "precise BN" step, before every Val pass and so before every checkpoint.
Training itself is untouched: in train mode BatchNorm normalises with batch statistics.

``WeightAverage`` keeps an EMA of the weights (a smoother model than the last step's, the usual
gain on noisy small-batch training); its BatchNorm statistics come from ``recompute_batchnorm``
as well, since averaged weights need statistics of their own.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["recompute_batchnorm", "WeightAverage", "batchnorm_layers"]


def batchnorm_layers(model):
    """The BatchNorm modules of ``model`` (any dimensionality)."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def recompute_batchnorm(model, dataset, count: int, batch_size: int, device: str,
                        layout=None, seed: int = 0) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance of ``model`` as the exact
    average over ``count`` clean images of ``dataset`` (a seeded, fixed choice; item 0 of each
    dataset entry is the image). Runs in fp32 without gradients; returns the number of images
    used (0 when the model has no BatchNorm or ``count`` is 0). ``layout(x)`` puts a batch in
    the model's memory layout."""
    import torch

    bns = batchnorm_layers(model)
    n = min(int(count), len(dataset))
    if not bns or n <= 0:
        return 0
    order = np.random.default_rng(int(seed)).permutation(len(dataset))[:n]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts equally
    was_training = model.training
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for start in range(0, n, int(batch_size)):
                idx = order[start:start + int(batch_size)]
                if len(idx) < 2:  # one image has no batch variance
                    break
                x = torch.stack([dataset[int(i)][0] for i in idx]).to(device)
                model(layout(x) if layout is not None else x)
                used += len(idx)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return used


class WeightAverage:
    """EMA of a model's parameters: after each optimizer step ``update(model)`` moves the copy's
    parameters towards the model's by ``1 - d``, with ``d = min(decay, (1 + k) / (10 + k))`` at
    update ``k`` (so early averages do not remember the random initialisation). Buffers are
    copied as they are; BatchNorm statistics are re-estimated before use."""

    def __init__(self, model, decay: float):
        import torch

        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay {decay} is outside (0, 1)")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._torch = torch

    def update(self, model) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        with self._torch.no_grad():
            for ema_p, p in zip(self.module.parameters(), model.parameters()):
                ema_p.mul_(d).add_(p.detach(), alpha=1.0 - d)
            for ema_b, b in zip(self.module.buffers(), model.buffers()):
                ema_b.copy_(b)
        self.updates += 1

    def state(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, state_dict, state: Optional[Dict[str, Any]]) -> None:
        self.module.load_state_dict(state_dict)
        self.updates = int((state or {}).get("updates", 0))


def batchnorm_shift(checkpoint, data_root, *, count: int = 600, seed: int = 1,
                    split: str = "Val", batch_size: int = 16) -> dict:
    """Whether a classifier checkpoint's eval-mode statistics are sound: its ``split`` accuracy
    as saved and after its BatchNorm statistics are re-estimated on another draw of ``count``
    clean Train images (uniform over Train, as the trainer draws them, with another seed; a
    class-balanced draw would measure the class mix, not the statistics). A change of more than
    half a point means the saved statistics do not describe real films."""
    import tempfile
    from pathlib import Path

    from covidedge.data.covidqu import CovidQuDataset, select_samples
    from covidedge.evaluation import evaluate
    from covidedge.formats.checkpoint import read_checkpoint, save_checkpoint
    from covidedge.models.loading import load_checkpoint
    from covidedge.train.datasets import ClassificationDataset

    model, spec, _ = load_checkpoint(checkpoint)
    train = select_samples(CovidQuDataset(data_root).samples("Train"), None, seed)
    pick = np.random.default_rng(int(seed)).permutation(len(train))[:int(count)]
    data = ClassificationDataset([train[int(i)] for i in sorted(pick)], spec.input_size, progress=False)
    used = recompute_batchnorm(model, data, count, batch_size, "cpu", seed=seed)
    before = evaluate(checkpoint, data_root, split, batch_size=batch_size, progress=False)
    with tempfile.TemporaryDirectory(prefix="covidedge-bn-") as tmp:
        again = save_checkpoint(Path(tmp) / "bn.pt", model.eval(), spec,
                                (read_checkpoint(checkpoint).get("extra") or {}))
        after = evaluate(again, data_root, split, batch_size=batch_size, progress=False)
    a, b = before.metrics["accuracy"], after.metrics["accuracy"]
    return {"images": used, "seed": seed, "accuracy": a, "accuracy_reestimated": b,
            "delta_points": round(100 * (b - a), 2)}
