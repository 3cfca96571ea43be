"""Training loops for the Xception classifier and the residual U-Net segmenter, and the loss study.

Both loops train on the Train split and select the best epoch on Val: by accuracy for the
classifier, and by the mean of the lung Dice (all images) and the infection Dice (COVID-19
images) for the segmenter, since those are the numbers the model is judged by (val loss is
recorded too, but a loss value is not comparable across loss functions). Optimisation: AdamW,
a linear warm-up over the first 5 % of steps (at most one epoch), then a cosine decay to 1 % of
the peak learning rate; early stopping after ``patience`` epochs without improvement; automatic
mixed precision: fp16 autocast with a gradient scaler on CUDA, bf16 autocast on CPUs with native
bf16 (AVX512-BF16 / AMX), fp32 elsewhere (``amp="auto"``); on a CPU, weights and batches use
channels_last memory whatever the precision. Weights stay
fp32 (autocast only lowers the matmuls and convolutions), losses are computed in fp32, and Val runs
in fp32, so the epoch kept as best is judged by what the fp32 model gives.

Every epoch draws its shuffling, augmentation and dropout randomness from ``(seed, epoch)``
alone, so a CPU run is deterministic and a resumed run repeats exactly what the uninterrupted
run would have done. ``OUT_DIR`` receives ``best.pt``, ``last.pt`` (with the optimizer, schedule
and scaler state for ``resume=True``), ``history.json``, ``learning_curves.png`` and
``metrics.json`` (the Val evaluation of ``best.pt`` through ``covidedge.evaluation``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from covidedge.errors import BadInputError, DatasetError, IncompatibleModelError, RuntimeFailure
from covidedge.spec import AMP_MODES

__all__ = ["TrainResult", "train_classifier", "train_segmenter", "LossStudyResult", "study_losses",
           "OUTPUT_FILES", "resolve_device", "AmpPlan", "resolve_amp", "AMP_MODES"]

#: Files a training run writes into its output folder (``--overwrite`` removes only these).
OUTPUT_FILES = ("best.pt", "last.pt", "history.json", "learning_curves.png", "metrics.json",
                "val_report")

#: Options that may change when resuming (they do not alter what is being trained).
_RESUMABLE_CHANGES = {"epochs", "patience", "device", "num_workers", "progress", "amp"}

#: Mixed-precision modes of ``--amp``.

WARMUP_FRACTION = 0.05
MIN_LR_FRACTION = 0.01


@dataclass
class TrainResult:
    """What a training run produced: where the files are and how the best epoch scored."""

    task: str
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    monitor: str
    best_score: float
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: List[Dict[str, Any]] = field(default_factory=list)
    metrics: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"task": self.task, "out_dir": str(self.out_dir),
                "best_checkpoint": str(self.best_checkpoint),
                "last_checkpoint": str(self.last_checkpoint), "best_epoch": self.best_epoch,
                "monitor": self.monitor, "best_score": self.best_score,
                "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
                "seconds": round(self.seconds, 2), "history": self.history,
                "metrics": self.metrics}


# -- small helpers ---------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; an explicit CUDA request without a
    GPU is an error rather than a silent CPU run."""
    import torch

    dev = str(device or "auto").lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeFailure(f"device {device!r} was asked for, but torch sees no CUDA GPU",
                             hint="use --device cpu or --device auto")
    if not (dev == "cpu" or dev.startswith("cuda") or dev == "mps"):
        raise BadInputError(f"device {device!r} is not known; expected auto, cpu, cuda or cuda:N")
    return dev


@dataclass(frozen=True)
class AmpPlan:
    """How a training step computes: ``dtype`` is "fp32", "bf16" or "fp16"; autocast runs on
    ``device_type``; ``channels_last`` puts weights and batches in NHWC (oneDNN's fast layout on
    CPUs, for fp32 and bf16 alike); ``grad_scaler`` guards fp16 gradients against underflow."""

    mode: str
    dtype: str
    device_type: str
    channels_last: bool
    grad_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.dtype != "fp32"

    def autocast(self):
        import torch

        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype, torch.float32)
        return torch.autocast(device_type=self.device_type, dtype=dt, enabled=self.enabled)

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "dtype": self.dtype, "device_type": self.device_type,
                "channels_last": self.channels_last, "grad_scaler": self.grad_scaler}


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (oneDNN reports AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(mode: str, device: str) -> AmpPlan:
    """Pick the mixed precision for ``device``: "auto" gives fp16 on CUDA, bf16 on CPUs with
    native bf16 and fp32 otherwise; an explicit mode the device cannot run is an error."""
    m = str(mode or "auto").lower()
    if m not in AMP_MODES:
        raise BadInputError(f"amp={mode!r} is not known; expected one of {', '.join(AMP_MODES)}")
    dev_type = "cuda" if device.startswith("cuda") else ("mps" if device == "mps" else "cpu")
    if m == "auto":
        m_eff = "fp16" if dev_type == "cuda" else ("bf16" if dev_type == "cpu" and cpu_has_bf16() else "off")
    else:
        m_eff = m
    if m_eff == "fp16" and dev_type != "cuda":
        raise BadInputError(f"amp=fp16 needs a CUDA device, not {device!r}",
                            hint="use --amp bf16 on a CPU with bf16 support, or --amp off")
    if m_eff == "bf16" and dev_type == "cpu" and not cpu_has_bf16():
        raise BadInputError("amp=bf16 was asked for, but this CPU has no native bf16 (AVX512-BF16 / AMX); "
                            "emulated bf16 is slower than fp32", hint="use --amp off or --amp auto")
    dtype = {"off": "fp32"}.get(m_eff, m_eff)
    return AmpPlan(mode=m, dtype=dtype, device_type=dev_type,
                   channels_last=dev_type == "cpu",
                   grad_scaler=dtype == "fp16")


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine decay."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    floor = base * MIN_LR_FRACTION
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 101 + stream) % (2 ** 63 - 1)


def _check_options(o: Dict[str, Any]) -> None:
    def positive(name, kind=int):
        v = o[name]
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0
                or (kind is int and int(v) != v)):
            what = "a positive integer" if kind is int else "a positive finite number"
            raise BadInputError(f"{name.replace('_', '-')}={v!r} is invalid; expected {what}")

    for name in ("epochs", "batch_size", "image_size", "patience"):
        positive(name)
    positive("lr", float)
    if not (math.isfinite(o["weight_decay"]) and o["weight_decay"] >= 0):
        raise BadInputError(f"weight-decay={o['weight_decay']} is invalid; expected a finite number >= 0")
    if o["image_size"] < 32:
        raise BadInputError(f"image-size={o['image_size']} is too small; expected at least 32 px")
    if o["num_workers"] < 0:
        raise BadInputError(f"num-workers={o['num_workers']} is negative; expected >= 0")


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise BadInputError("resume and overwrite were both requested; pick one", path=out)
    if out.exists() and not out.is_dir():
        raise BadInputError("output path exists and is not a folder", path=out)
    if resume:
        if not (out / "last.pt").is_file():
            raise BadInputError("nothing to resume: no last.pt in the output folder", path=out,
                                hint="start a new run without --resume")
        return
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BadInputError(
                "output folder is not empty", path=out,
                hint="pass --resume to continue that run, --overwrite to replace it, or another --out")
        import shutil

        for name in OUTPUT_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _log(progress: bool, text: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)


def _load_splits(data_root, limit_per_class, seed, options=None):
    from covidedge.data.covidqu import CovidQuDataset
    from covidedge.data.covidqu import select_samples

    ds = CovidQuDataset(data_root)
    for split in ("Train", "Val"):
        if split not in ds.splits:
            raise DatasetError(f"dataset has no {split} split (found: {', '.join(ds.splits) or 'none'})",
                               path=data_root, hint="training needs Train and Val folders")
    allow = bool((options or {}).get("allow_missing_classes", False))
    missing = {split: ds.check_classes(split, allow_missing=allow) for split in ("Train", "Val")}
    if options is not None and any(missing.values()):  # recorded in the checkpoint's options
        options["missing_classes"] = {k: v for k, v in missing.items() if v}
    train = select_samples(ds.samples("Train"), limit_per_class, seed)
    val = select_samples(ds.samples("Val"), limit_per_class, seed)
    return train, val


# -- per-task behaviour ----------------------------------------------------------------------
class _ClassifierTask:
    name = "classifier"
    monitor = "val_accuracy"

    def __init__(self, o):
        self.o = o

    def spec(self):
        from covidedge.spec import classifier_spec

        s = self.o["image_size"]
        return classifier_spec("xception", input_size=(s, s),
                               model_kwargs={"width_mult": float(self.o["width_mult"]),
                                             "drop_rate": float(self.o["drop_rate"])})

    def datasets(self, train, val, progress):
        from covidedge.train.datasets import ClassificationDataset, class_weights

        size = (self.o["image_size"],) * 2
        tr = ClassificationDataset(train, size, progress)
        va = ClassificationDataset(val, size, progress)
        from covidedge.spec import CLASS_LABELS

        self.weights = class_weights(tr.labels, len(CLASS_LABELS))
        return tr, va

    def criterion(self, device):
        import torch

        return torch.nn.CrossEntropyLoss(weight=torch.as_tensor(self.weights, device=device))

    def augment_and_loss(self, model, batch, aug, gen, crit, device, amp):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        x, _ = aug(x, None, generator=gen)
        with amp.autocast():
            logits = model(_layout(x, amp))
        return crit(logits.float(), y), x.shape[0]

    def validate(self, model, loader, crit, device, amp):
        import torch

        total, n, correct = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                with amp.autocast():
                    logits = model(_layout(x, amp))
                total += float(crit(logits.float(), y)) * x.shape[0]
                correct += int((logits.argmax(1) == y).sum())
                n += x.shape[0]
        return {"val_loss": total / n, "val_accuracy": correct / n}


class _SegmenterTask:
    name = "segmenter"
    monitor = "val_dice_mean"

    def __init__(self, o):
        self.o = o

    def spec(self):
        from covidedge.spec import segmenter_spec

        s = self.o["image_size"]
        return segmenter_spec("resunet", input_size=(s, s),
                              model_kwargs={"base_width": int(self.o["base_width"]),
                                            "depth": int(self.o["depth"])})

    def datasets(self, train, val, progress):
        from covidedge.train.datasets import SegmentationDataset

        size = (self.o["image_size"],) * 2
        return SegmentationDataset(train, size, progress), SegmentationDataset(val, size, progress)

    def criterion(self, device):
        from covidedge.train.losses import get_loss

        return get_loss(self.o["loss"], **(self.o["loss_params"] or {})).to(device)

    def augment_and_loss(self, model, batch, aug, gen, crit, device, amp):
        x = batch[0].to(device, non_blocking=True)
        m = batch[1].to(device, non_blocking=True)
        x, m = aug(x, m, generator=gen)
        with amp.autocast():
            logits = model(_layout(x, amp))
        return crit(logits.float(), m), x.shape[0]

    def validate(self, model, loader, crit, device, amp):
        import torch

        from covidedge.spec import CLASS_LABELS

        covid = CLASS_LABELS.index("COVID-19")
        total, n = 0.0, 0
        lung_d: List[float] = []
        inf_d: List[float] = []
        with torch.no_grad():
            for x, m, y in loader:
                x, m = x.to(device), m.to(device)
                with amp.autocast():
                    logits = model(_layout(x, amp))
                logits = logits.float()
                total += float(crit(logits, m)) * x.shape[0]
                n += x.shape[0]
                pred = logits > 0  # sigmoid(logit) > 0.5
                d = _dice_per_image(pred, m > 0.5)  # (N, 2)
                lung_d.extend(d[:, 0].tolist())
                inf_d.extend(d[(y == covid).to(d.device), 1].tolist())
        lung = _nanmean(lung_d)
        inf = _nanmean(inf_d)
        mean = lung if math.isnan(inf) else 0.5 * (lung + inf)
        return {"val_loss": total / n, "val_dice_lungs": lung, "val_dice_infection": inf,
                "val_dice_mean": mean}


def _layout(x, amp: AmpPlan):
    import torch

    return x.contiguous(memory_format=torch.channels_last) if amp.channels_last else x


def _nanmean(values: List[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _dice_per_image(pred, target):
    """Dice per image and channel of boolean (N, C, H, W) tensors; NaN where both masks are
    empty (undefined, and left out of the mean, as covidedge.metrics.dice does)."""
    import torch

    pred, target = pred.flatten(2).float(), target.flatten(2).float()
    inter = (pred * target).sum(-1)
    denom = pred.sum(-1) + target.sum(-1)
    return torch.where(denom > 0, 2.0 * inter / denom.clamp(min=1.0),
                       torch.full_like(denom, float("nan")))


# -- the shared loop -------------------------------------------------------------------------
def _fit(task, o: Dict[str, Any], out_dir, *, resume: bool, overwrite: bool,
         on_epoch_end: Optional[Callable[[Dict[str, Any]], Optional[bool]]]) -> TrainResult:
    import torch

    from covidedge.train.augment import BatchAugment
    from covidedge.formats.checkpoint import read_checkpoint, save_checkpoint

    t_start = time.perf_counter()
    _check_options(o)
    out = Path(out_dir)
    _prepare_out_dir(out, resume, overwrite)
    progress = bool(o["progress"])
    device = resolve_device(o["device"])
    amp = resolve_amp(o.get("amp", "auto"), device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True

    # the resumed run's options (besides those allowed to change) must be the stored ones
    state = None
    if resume:
        payload = read_checkpoint(out / "last.pt")
        extra = payload.get("extra") or {}
        stored = extra.get("train_options") or {}
        if extra.get("task") != task.name or "resume" not in extra:
            raise IncompatibleModelError(
                f"last.pt is not a resumable {task.name} run", path=out / "last.pt",
                hint="start a new run with another --out")
        diff = [k for k in o if k not in _RESUMABLE_CHANGES and k in stored
                and _norm(stored[k]) != _norm(o[k])]
        if diff:
            said = ", ".join(f"{k}={o[k]!r} (run used {stored[k]!r})" for k in diff)
            raise BadInputError(f"cannot resume with changed options: {said}", path=out,
                                hint="pass the run's original options, or start a new run")
        state = payload

    train_samples, val_samples = _load_splits(o["data_root"], o["limit_per_class"], o["seed"], o)
    train_ds, val_ds = task.datasets(train_samples, val_samples, progress)
    spec = task.spec()

    from covidedge.models.registry import build_from_spec

    torch.manual_seed(o["seed"])
    model = build_from_spec(spec).to(device)
    if amp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp.grad_scaler)
    crit = task.criterion(device)
    aug = BatchAugment(hflip=bool(o["hflip"]))

    bs = int(o["batch_size"])
    # a last batch of one image would break BatchNorm's batch statistics: drop it (it is a
    # different image each epoch, as the order is reshuffled)
    drop_last = len(train_ds) > bs and len(train_ds) % bs == 1
    steps_per_epoch = len(train_ds) // bs if drop_last else max(1, math.ceil(len(train_ds) / bs))
    total_steps = steps_per_epoch * int(o["epochs"])
    warmup = max(1, min(steps_per_epoch, int(WARMUP_FRACTION * total_steps)))
    loader_kw = dict(num_workers=int(o["num_workers"]), pin_memory=device.startswith("cuda"),
                     persistent_workers=False)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=bs, shuffle=False, **loader_kw)

    history: List[Dict[str, Any]] = []
    step, start_epoch, best_epoch, best_score, bad_epochs = 0, 1, 0, -math.inf, 0
    if state is not None:
        r = state["extra"]["resume"]
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(r["optimizer"])
        if amp.grad_scaler and r.get("scaler"):
            scaler.load_state_dict(r["scaler"])
        step, start_epoch = int(r["step"]), int(r["epoch"]) + 1
        best_epoch, best_score, bad_epochs = int(r["best_epoch"]), float(r["best_score"]), int(r["bad_epochs"])
        history = list(state["extra"].get("history") or [])
        _log(progress, f"resuming {out} after epoch {start_epoch - 1} "
                       f"(best so far: epoch {best_epoch}, {task.monitor} {best_score:.4f})")
        if bad_epochs >= o["patience"] or start_epoch > o["epochs"]:
            _log(progress, "that run had already finished; evaluating its best checkpoint")
            start_epoch = o["epochs"] + 1

    plain_options = {k: (str(v) if isinstance(v, Path) else v) for k, v in o.items()}
    base_extra = {"task": task.name, "train_options": plain_options,
                  "augmentation": aug.config.to_dict(), "monitor": task.monitor,
                  "train_images": len(train_ds), "val_images": len(val_ds),
                  "device": device, "amp": amp.to_dict()}
    if task.name == "classifier":
        base_extra["class_weights"] = [float(w) for w in task.weights]

    _log(progress, f"training {task.name} on {device} ({_amp_words(amp)}): {len(train_ds)} Train / "
                   f"{len(val_ds)} Val images at {o['image_size']} px, {o['epochs']} epochs, batch {bs}")
    stopped_early = bool(history) and bad_epochs >= o["patience"] and len(history) < o["epochs"]
    epoch = start_epoch - 1
    for epoch in range(start_epoch, int(o["epochs"]) + 1):
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(o["seed"], epoch, 0))  # dropout
        shuffle_gen = torch.Generator().manual_seed(_epoch_seed(o["seed"], epoch, 1))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(o["seed"], epoch, 2))
        loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, shuffle=True,
                                             generator=shuffle_gen, drop_last=drop_last, **loader_kw)
        model.train()
        run_loss, seen = 0.0, 0
        bar = _bar(loader, epoch, o["epochs"], progress)
        for batch in bar:
            lr = _lr_at(step, total_steps, warmup, o["lr"])
            for g in opt.param_groups:
                g["lr"] = lr
            loss, n = task.augment_and_loss(model, batch, aug, aug_gen, crit, device, amp)
            if not torch.isfinite(loss.detach()):
                raise RuntimeFailure(f"training loss became {float(loss.detach())} at epoch {epoch}",
                                     hint="lower --lr, or check the data")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            run_loss += float(loss.detach()) * n
            seen += n
            bar.set_postfix(loss=f"{run_loss / seen:.4f}", lr=f"{lr:.2e}")
        bar.close()
        model.eval()
        # Val in fp32 (same layout): the epoch picked as best is judged by the numbers the
        # exported fp32 model gives, and metrics.json (an fp32 evaluation) repeats them
        val = task.validate(model, val_loader, crit, device, replace(amp, dtype="fp32", grad_scaler=False))
        score = val[task.monitor]
        if not math.isfinite(score):  # e.g. no image with a lung mask: never "best" over a real score
            score = -1.0
        record = {"epoch": epoch, "train_loss": run_loss / max(1, seen), **val,
                  "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
        improved = score > best_score
        if improved:
            best_epoch, best_score, bad_epochs = epoch, score, 0
        else:
            bad_epochs += 1
        record["best"] = improved
        history.append(record)
        if improved:
            save_checkpoint(out / "best.pt", model, spec, {
                **base_extra, "epoch": epoch, "metrics": val, "history": history})
        resume_state = {"optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict() if amp.grad_scaler else None,
                        "step": step, "epoch": epoch, "best_epoch": best_epoch,
                        "best_score": best_score, "bad_epochs": bad_epochs,
                        "rng": {"scheme": "per-epoch seeds from (seed, epoch)", "seed": o["seed"]}}
        save_checkpoint(out / "last.pt", model, spec, {
            **base_extra, "epoch": epoch, "metrics": val, "history": history,
            "resume": resume_state})
        _write_history(out, task, plain_options, history, best_epoch)
        _log(progress, _summary(record, o["epochs"], task.monitor))
        if on_epoch_end is not None and on_epoch_end(dict(record)):
            _log(progress, f"stopped by the caller after epoch {epoch}")
            break
        if bad_epochs >= o["patience"]:
            stopped_early = epoch < o["epochs"]
            _log(progress, f"early stop: no {task.monitor} gain for {bad_epochs} epochs "
                           f"(patience {o['patience']}); best epoch {best_epoch}")
            break

    if not (out / "best.pt").is_file():
        raise RuntimeFailure("no epoch finished, so there is no best.pt", path=out)
    _write_history(out, task, plain_options, history, best_epoch)
    _plot_curves(out, history, task, best_epoch)
    metrics = _final_metrics(out, o, device, progress)
    return TrainResult(task=task.name, out_dir=out, best_checkpoint=out / "best.pt",
                       last_checkpoint=out / "last.pt", best_epoch=best_epoch,
                       monitor=task.monitor, best_score=best_score,
                       epochs_run=len(history), stopped_early=stopped_early,
                       seconds=time.perf_counter() - t_start, history=history, metrics=metrics)


def _amp_words(amp: AmpPlan) -> str:
    words = "fp32" if not amp.enabled else f"{amp.dtype} autocast"
    return words + (", channels_last" if amp.channels_last else "") + (", grad scaler" if amp.grad_scaler else "")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _bar(loader, epoch, epochs, progress):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                file=sys.stderr, disable=not (progress and sys.stderr.isatty()))


def _summary(r: Dict[str, Any], epochs: int, monitor: str) -> str:
    parts = [f"epoch {r['epoch']:>3}/{epochs}", f"train_loss {r['train_loss']:.4f}",
             f"val_loss {r['val_loss']:.4f}"]
    for k in ("val_accuracy", "val_dice_lungs", "val_dice_infection"):
        if k in r:
            parts.append(f"{k} {r[k]:.4f}")
    parts += [f"lr {r['lr']:.2e}", f"{r['seconds']:.1f} s"]
    if r.get("best"):
        parts.append(f"* best {monitor}")
    return "  ".join(parts)


def _write_history(out: Path, task, options, history, best_epoch) -> None:
    _write_json(out / "history.json", {"task": task.name, "monitor": task.monitor,
                                       "best_epoch": best_epoch, "options": options,
                                       "epochs": history})


def _plot_curves(out: Path, history, task, best_epoch: int) -> None:
    from covidedge.plots import plot_learning_curves

    metric = "accuracy" if task.name == "classifier" else "dice_mean"
    plot_learning_curves(history, out / "learning_curves.png", metric=metric,
                         best_epoch=best_epoch, title=f"{task.name}: learning curves")


def _final_metrics(out: Path, o: Dict[str, Any], device: str, progress: bool) -> Dict[str, Any]:
    """Evaluate best.pt on the Val images the run validated on; write metrics.json and val_report/."""
    from covidedge.evaluation import evaluate
    from covidedge.backends.torch import TorchRunner

    runner = TorchRunner(out / "best.pt", device=device)
    with runner:
        report = evaluate(runner, o["data_root"], split="Val", batch_size=o["batch_size"],
                          limit_per_class=o["limit_per_class"], seed=o["seed"], progress=progress,
                          allow_missing_classes=bool(o.get("allow_missing_classes", False)))
    metrics = report.to_dict()
    _write_json(out / "metrics.json", metrics)
    report.save(out / "val_report")
    _log(progress, report.headline())
    return metrics


# -- public entry points ---------------------------------------------------------------------
def train_classifier(data_root, out_dir, *, epochs: int = 30, batch_size: int = 16, lr: float = 1e-3,
                     weight_decay: float = 1e-4, image_size: int = 256, width_mult: float = 1.0,
                     drop_rate: float = 0.2, device: str = "auto", amp: str = "auto",
                     seed: int = 0, patience: int = 8,
                     limit_per_class: Optional[int] = None, num_workers: int = 0,
                     resume: bool = False, hflip: bool = False, progress: bool = True,
                     overwrite: bool = False, allow_missing_classes: bool = False,
                     on_epoch_end: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
                     ) -> TrainResult:
    """Train the Xception classifier (COVID-19 / Non-COVID / Normal) on ``data_root``'s Train split,
    keeping the epoch with the best Val accuracy. ``image_size`` in px (square); ``lr`` is the
    peak learning rate. ``on_epoch_end(record)`` is called after each epoch with its history
    record; returning True stops training there (``last.pt`` can then be resumed)."""
    o = dict(task="classifier", data_root=str(data_root), epochs=epochs, batch_size=batch_size,
             lr=float(lr), weight_decay=float(weight_decay), image_size=int(image_size),
             width_mult=float(width_mult), drop_rate=float(drop_rate), device=device,
             amp=str(amp), seed=int(seed), patience=patience, limit_per_class=limit_per_class,
             num_workers=int(num_workers), hflip=bool(hflip), progress=bool(progress),
             allow_missing_classes=bool(allow_missing_classes))
    if not 0.0 <= o["drop_rate"] < 1.0:
        raise BadInputError(f"drop-rate={drop_rate} is outside [0, 1)")
    if o["width_mult"] <= 0:
        raise BadInputError(f"width-mult={width_mult} is not positive; expected e.g. 0.25 .. 1.0")
    return _fit(_ClassifierTask(o), o, out_dir, resume=resume, overwrite=overwrite,
                on_epoch_end=on_epoch_end)


def train_segmenter(data_root, out_dir, *, epochs: int = 30, batch_size: int = 16, lr: float = 1e-3,
                    weight_decay: float = 1e-4, image_size: int = 256, base_width: int = 32,
                    depth: int = 4, loss: str = "bce_dice",
                    loss_params: Optional[Dict[str, Any]] = None, device: str = "auto",
                    amp: str = "auto", seed: int = 0, patience: int = 8, limit_per_class: Optional[int] = None,
                    num_workers: int = 0, resume: bool = False, hflip: bool = False,
                    progress: bool = True, overwrite: bool = False, allow_missing_classes: bool = False,
                    on_epoch_end: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
                    ) -> TrainResult:
    """Train the residual U-Net (lungs + infection masks) on ``data_root``'s Train split with the
    loss ``loss`` (see ``covidedge.train.losses.LOSSES``), keeping the epoch with the best mean
    of Val lung Dice and Val infection Dice (COVID-19 images). ``image_size`` in px must be
    divisible by 2**depth."""
    from covidedge.train.losses import get_loss

    o = dict(task="segmenter", data_root=str(data_root), epochs=epochs, batch_size=batch_size,
             lr=float(lr), weight_decay=float(weight_decay), image_size=int(image_size),
             base_width=int(base_width), depth=int(depth), loss=str(loss),
             loss_params=dict(loss_params or {}), device=device, amp=str(amp), seed=int(seed),
             patience=patience, limit_per_class=limit_per_class, num_workers=int(num_workers),
             hflip=bool(hflip), progress=bool(progress),
             allow_missing_classes=bool(allow_missing_classes))
    get_loss(o["loss"], **o["loss_params"])  # unknown loss or option: fail before decoding data
    if o["base_width"] < 1 or o["depth"] < 1:
        raise BadInputError(f"base-width={base_width} and depth={depth} must be positive")
    if int(image_size) % (2 ** o["depth"]):
        raise BadInputError(f"image-size={image_size} is not divisible by 2**depth={2 ** o['depth']}",
                            hint="pick an image size that the U-Net can halve depth times, e.g. 128 or 256")
    return _fit(_SegmenterTask(o), o, out_dir, resume=resume, overwrite=overwrite,
                on_epoch_end=on_epoch_end)


# -- the loss study --------------------------------------------------------------------------
#: Bars of comparison.png: (metrics key, label).
STUDY_BARS = (("lung_dice", "lung Dice"), ("infection_dice", "infection Dice"),
              ("infection_iou", "infection IoU"), ("fp_infection_fraction", "FP infected area"))


@dataclass
class LossStudyResult:
    """One row per loss: Val metrics of each loss's best epoch under the same seed and budget."""

    out_dir: Path
    rows: List[Dict[str, Any]]
    settings: Dict[str, Any]

    def verdict(self) -> Dict[str, Any]:
        """The loss with the highest Val infection Dice, its margin over the runner-up (in Dice
        points), and whether every loss had converged (see ``CONVERGED_DELTA``)."""
        ranked = sorted((r for r in self.rows if _finite(r["infection_dice"])),
                        key=lambda r: r["infection_dice"], reverse=True)
        if not ranked:
            return {"winner": None, "runner_up": None, "margin": None,
                    "all_converged": False, "not_converged": [r["loss"] for r in self.rows]}
        runner = ranked[1] if len(ranked) > 1 else None
        by_severity = sorted((r for r in self.rows if _finite(r.get("severity_mae"))),
                             key=lambda r: r["severity_mae"])
        return {"winner": ranked[0]["loss"], "runner_up": runner["loss"] if runner else None,
                "margin": (ranked[0]["infection_dice"] - runner["infection_dice"]) if runner else None,
                "best_severity": by_severity[0]["loss"] if by_severity else None,
                "severity_margin": (by_severity[1]["severity_mae"] - by_severity[0]["severity_mae"])
                if len(by_severity) > 1 else None,
                "all_converged": all(r.get("converged") for r in self.rows),
                "not_converged": [r["loss"] for r in self.rows if not r.get("converged")]}

    def to_dict(self) -> Dict[str, Any]:
        return {"out_dir": str(self.out_dir), "settings": self.settings, "rows": self.rows,
                **self.verdict()}

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            "# Segmentation loss comparison (residual U-Net)",
            "",
            f"Same seed ({s['seed']}), data and budget ({s['epochs']} epochs, no early stopping) for "
            f"every loss; image {s['image_size']} px, base width {s['base_width']}, depth {s['depth']}, "
            f"limit per class {s['limit_per_class']}. Metrics on the Val split at the best epoch; "
            "infection Dice / IoU over COVID-19 images, lung Dice over all images, FP infected "
            "area = mean fraction of the image predicted infected on Non-COVID / Normal images.",
            "",
            "| loss | lung Dice | infection Dice | infection IoU | FP infected area (% of image) | "
            "severity MAE (% of lungs) | best epoch | last-epoch change | converged | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        best = max((r["infection_dice"] for r in self.rows if _finite(r["infection_dice"])),
                   default=None)
        for r in self.rows:
            mark = " **best**" if best is not None and r["infection_dice"] == best else ""
            lines.append(
                f"| {r['loss']}{mark} | {_fmt(r['lung_dice'])} | {_fmt(r['infection_dice'])} | "
                f"{_fmt(r['infection_iou'])} | {_fmt(_times100(r['fp_infection_fraction']), 2)} | "
                f"{_fmt(_times100(r['severity_mae']), 2)} | {r['best_epoch']} | "
                f"{_fmt(r.get('last_change'))} | {'yes' if r.get('converged') else 'no'} | "
                f"{r['seconds']:.0f} |")
        v = self.verdict()
        lines.append("")
        if v["winner"] is None:
            lines.append("**Verdict:** none - no loss produced a finite infection Dice.")
        else:
            margin = (f", {100 * v['margin']:.2f} Dice points ahead of {v['runner_up']}"
                      if v["runner_up"] else "")
            lines.append(f"**Verdict:** {v['winner']} has the highest Val infection Dice{margin}.")
            if v["best_severity"] is not None:
                rows = {r["loss"]: r for r in self.rows}
                b = rows[v["best_severity"]]
                extra = (f", {100 * v['severity_margin']:.2f} points below the next" if v["severity_margin"] is not None
                         else "")
                lines.append(f"{v['best_severity']} has the lowest severity error ({_fmt(_times100(b['severity_mae']), 2)} "
                             f"% of the lungs{extra}), the number that counts infection on COVID-19 images and "
                             f"false positives on infection-free ones alike (FP infected area "
                             f"{_fmt(_times100(b['fp_infection_fraction']), 2)} % of the image, against "
                             f"{_fmt(_times100(rows[v['winner']]['fp_infection_fraction']), 2)} % for {v['winner']}).")
        lines.append(
            "Every loss converged (mean Val Dice changed by less than "
            f"{CONVERGED_DELTA:.2f} over the last epoch)." if v["all_converged"] else
            f"Not converged within the budget: {', '.join(v['not_converged'])} (mean Val Dice still "
            f"moved by {CONVERGED_DELTA:.2f} or more over the last epoch) - train longer before "
            "trusting the ranking.")
        return "\n".join(lines) + "\n"


#: A run has converged when its monitored Val score moved by less than this over its last epoch.
CONVERGED_DELTA = 0.01


def _convergence(epochs: List[Dict[str, Any]]) -> Dict[str, Any]:
    scores = [e.get("val_dice_mean") for e in epochs]
    if len(scores) < 2 or not all(_finite(x) for x in scores[-2:]):
        return {"last_change": None, "converged": False}
    change = float(scores[-1] - scores[-2])
    return {"last_change": change, "converged": abs(change) < CONVERGED_DELTA}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _times100(v):
    return 100.0 * v if _finite(v) else v


def _fmt(v, nd=3) -> str:
    return f"{v:.{nd}f}" if _finite(v) else "n/a"


def study_losses(data_root, out_dir, *, losses: Optional[Sequence[str]] = None, epochs: int = 10,
                 image_size: int = 256, base_width: int = 32, depth: int = 4,
                 batch_size: int = 16, lr: float = 1e-3, limit_per_class: Optional[int] = None,
                 seed: int = 0, device: str = "auto", amp: str = "auto", num_workers: int = 0,
                 progress: bool = True, overwrite: bool = False) -> LossStudyResult:
    """Train the segmenter once per loss (all of ``LOSSES`` by default) with the same seed, data and
    epoch budget (early stopping off), into ``out_dir/<loss>/``, and write comparison.md,
    comparison.json and comparison.png. A loss whose run folder already holds a finished run
    with the same settings is reused rather than retrained."""
    from covidedge.train.losses import LOSSES

    names = list(LOSSES) if not losses else [str(n).strip().lower().replace("-", "_") for n in losses]
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise BadInputError(f"unknown loss(es) {', '.join(unknown)}; expected some of "
                            f"{', '.join(LOSSES)} or 'all'")
    if len(set(names)) != len(names):
        raise BadInputError(f"loss list {','.join(names)} names a loss twice")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(epochs=int(epochs), image_size=int(image_size), base_width=int(base_width),
                    depth=int(depth), batch_size=int(batch_size), lr=float(lr),
                    limit_per_class=limit_per_class, seed=int(seed), data_root=str(data_root))
    rows = []
    for i, name in enumerate(names, 1):
        run_dir = out / name
        _log(progress, f"[{i}/{len(names)}] loss {name}")
        reused = _reusable_run(run_dir, name, settings) if not overwrite else None
        if reused is not None:
            _log(progress, f"reusing the finished run in {run_dir}")
            metrics, hist = reused
            best_epoch, seconds = hist["best_epoch"], sum(e["seconds"] for e in hist["epochs"])
        else:
            res = train_segmenter(data_root, run_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                                  image_size=image_size, base_width=base_width, depth=depth,
                                  loss=name, device=device, amp=amp, seed=seed,
                                  patience=int(epochs),
                                  limit_per_class=limit_per_class, num_workers=num_workers,
                                  progress=progress, overwrite=True)
            metrics, best_epoch, seconds = res.metrics, res.best_epoch, res.seconds
            hist = json.loads((run_dir / "history.json").read_text())
        m = metrics["metrics"]
        conv = _convergence(hist.get("epochs") or [])
        rows.append({"loss": name, "lung_dice": m["lung_dice"], "lung_iou": m["lung_iou"],
                     "infection_dice": m["infection_dice"], "infection_iou": m["infection_iou"],
                     "fp_infection_fraction": m["fp_infection_fraction"],
                     "severity_mae": m["severity_mae"], "best_epoch": best_epoch,
                     "seconds": round(float(seconds), 1), "run_dir": str(run_dir), **conv})
    result = LossStudyResult(out_dir=out, rows=rows, settings=settings)
    _write_json(out / "comparison.json", result.to_dict())
    (out / "comparison.md").write_text(result.to_markdown())
    _plot_study(out / "comparison.png", rows)
    return result


def _reusable_run(run_dir: Path, loss: str, settings: Dict[str, Any]):
    try:
        hist = json.loads((run_dir / "history.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not (run_dir / "best.pt").is_file():
        return None
    o = hist.get("options") or {}
    want = {**settings, "loss": loss, "loss_params": {}}
    if any(_norm(o.get(k)) != _norm(v) for k, v in want.items()):
        return None
    if len(hist.get("epochs") or []) != settings["epochs"]:
        return None
    return metrics, hist


def _plot_study(path: Path, rows: List[Dict[str, Any]]) -> None:
    from covidedge.errors import require

    require("matplotlib", extra="plots", purpose="comparison.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(STUDY_BARS) + 0.5 * n), 4.2))
    xs = np.arange(len(STUDY_BARS))
    for i, r in enumerate(rows):
        vals = [r[k] if _finite(r[k]) else 0.0 for k, _ in STUDY_BARS]
        bars = ax.bar(xs + (i - (n - 1) / 2) * width, vals, width, label=r["loss"])
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(xs, [label for _, label in STUDY_BARS])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("Val score (FP area: fraction of image)")
    ax.set_title("Segmentation losses, same seed and budget")
    ax.legend(fontsize=8, ncol=min(4, n), loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
