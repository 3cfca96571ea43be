"""Distillation for the classifier: learn from finished classifiers' answers as well as labels.

``--distill-from`` names one or more classifier checkpoints (the teachers: an ensemble is
several). Before epoch 1 each teacher classifies every **clean** Train image once, in fp32;
their probabilities at temperature ``T`` are averaged and kept beside the images. Each training
step then adds to the (weighted) cross-entropy the Kullback-Leibler divergence between those
soft targets and the student's softened answer on the **augmented** image::

    loss = (1 - w) * CE(student(aug(x)), y) + w * T^2 * KL(teacher_T(x) || student_T(aug(x)))

so a teacher trained with mild augmentation (more accurate on clean films, fragile under other
hospitals' shifts) passes on what it knows while the student learns, under ``--augment
robust``, to give the same answer to the shifted film. Teachers are read once and never
written; their paths and sha256 are recorded in the checkpoints (``distill``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError

__all__ = ["TeacherTargets", "teacher_probabilities", "distill_loss", "check_distill_options"]


def check_distill_options(o: Dict[str, Any]) -> None:
    """Refuse a weight outside [0, 1], a temperature that is not positive, either one set
    without a teacher, and a teacher file that does not exist (before any image is decoded)."""
    from covidedge.train.options import ClassifierOptions as defaults

    teachers = list(o.get("distill_from") or ())
    w = o.get("distill_weight", defaults.distill_weight)
    t = o.get("distill_temperature", defaults.distill_temperature)
    if not (isinstance(w, (int, float)) and 0.0 <= w <= 1.0):
        raise BadInputError(f"distill-weight={w!r} is outside [0, 1]; expected e.g. 0.5")
    if not (isinstance(t, (int, float)) and 0.0 < t <= 100.0):
        raise BadInputError(f"distill-temperature={t!r} is not in (0, 100]; expected e.g. 2")
    if not teachers and (w != defaults.distill_weight or t != defaults.distill_temperature):
        raise BadInputError("--distill-weight and --distill-temperature need --distill-from",
                            hint="name the teacher checkpoint(s) with --distill-from, or drop them")
    for p in teachers:
        if not Path(p).is_file():
            raise BadInputError("teacher checkpoint not found", path=p,
                                hint="--distill-from takes a classifier's best.pt (repeat it for an ensemble)")


class TeacherTargets:
    """A Train dataset whose items carry the teachers' soft targets just before the label:
    ``(image, [masks,] targets (K,) float32, label)``. ``targets`` is filled by
    :func:`teacher_probabilities` once the device is known; other attributes are the wrapped
    dataset's."""

    def __init__(self, base):
        self.base = base
        self.targets = None  # (N, K) float32 numpy array

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def __getitem__(self, i: int):
        import torch

        if self.targets is None:
            raise RuntimeError("teacher targets have not been computed yet")
        item = self.base[i]
        return (*item[:-1], torch.from_numpy(self.targets[i]), item[-1])


def teacher_probabilities(paths: Sequence[str], dataset, image_size: int, temperature: float,
                          device: str, batch_size: int = 32) -> Dict[str, Any]:
    """Fill ``dataset.targets`` (a :class:`TeacherTargets`) with the teachers' mean softmax at
    ``temperature`` on its clean images, and return the record kept in the checkpoints: each
    teacher's path, sha256, epoch and accuracy on these Train images, and the mean's accuracy.
    A checkpoint that is not a 3-class classifier of the same input size is refused."""
    import torch

    from covidedge.formats.checkpoint import checkpoint_sha256
    from covidedge.models.loading import load_checkpoint
    from covidedge.spec import CLASS_LABELS

    labels = np.asarray(dataset.labels)
    total = np.zeros((len(dataset), len(CLASS_LABELS)), dtype=np.float64)
    record: List[Dict[str, Any]] = []
    for p in paths:
        model, spec, extra = load_checkpoint(p, device)
        if spec.task != "classifier" or tuple(spec.labels) != tuple(CLASS_LABELS):
            raise IncompatibleModelError(f"teacher is a {spec.task} with labels {list(spec.labels)}, "
                                         f"not a classifier of {list(CLASS_LABELS)}", path=p,
                                         hint="--distill-from takes classifier checkpoints")
        if tuple(spec.input_size) != (image_size, image_size):
            raise IncompatibleModelError(
                f"teacher input size {tuple(spec.input_size)} differs from the run's "
                f"{(image_size, image_size)}", path=p, hint="use a teacher trained at --image-size")
        model.eval()
        probs = []
        with torch.no_grad():
            for s in range(0, len(dataset), batch_size):
                # the cached images alone: a dataset with masks would unpack them for nothing
                x = torch.from_numpy(np.stack([dataset.images.get(i)
                                               for i in range(s, min(s + batch_size, len(dataset)))]))
                logits = model(x.to(device)).float()
                probs.append(torch.softmax(logits / temperature, 1).cpu().numpy())
        pr = np.concatenate(probs).astype(np.float64)
        total += pr
        record.append({"path": str(p), "sha256": checkpoint_sha256(p), "epoch": (extra or {}).get("epoch"),
                       "train_accuracy": float((pr.argmax(1) == labels).mean())})
        del model
    mean = total / max(1, len(paths))
    dataset.targets = mean.astype(np.float32)
    return {"teachers": record, "temperature": float(temperature),
            "mean_train_accuracy": float((mean.argmax(1) == labels).mean())}


def distill_loss(student_logits, targets, temperature: float):
    """``T^2 * KL(targets || softmax(student / T))`` averaged over the batch (fp32)."""
    import torch.nn.functional as F

    logp = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(logp, targets.float(), reduction="batchmean") * (temperature ** 2)
