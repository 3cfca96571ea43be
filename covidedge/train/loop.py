"""The training loop shared by the Xception classifier and the residual U-Net segmenter: the
fit loop, its schedule, resume, checkpoints and history.

Both models train on the Train split and keep the epoch with the best Val score (what is scored
is the task's, see ``covidedge.train.tasks``). Optimisation: AdamW, a linear warm-up over the
first 5 % of steps (at most one epoch), then a cosine decay to 1 % of the peak learning rate;
early stopping after ``patience`` epochs without improvement; mixed precision as
``covidedge.train.amp`` plans it. Val runs in fp32, so the epoch kept as best is judged by what
the fp32 model gives.

Every epoch draws its shuffling, augmentation and dropout randomness from ``(seed, epoch)``
alone, so a CPU run is deterministic and a resumed run repeats exactly what the uninterrupted
run would have done. ``OUT_DIR`` receives ``best.pt``, ``last.pt`` (with the optimizer, schedule
and scaler state for ``resume=True``), ``history.json``, ``learning_curves.png`` and
``metrics.json`` (the Val evaluation of ``best.pt`` through ``covidedge.evaluation``).

The model's size comes from a named variant (``covidedge.models.registry.VARIANTS``) or from
explicit ``image_size`` / width options, which win over the variant's values.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from covidedge.errors import BadInputError, IncompatibleModelError, RuntimeFailure
from covidedge.fileio import write_atomic
from covidedge.progress import bar as progress_bar, note
from covidedge.train.amp import amp_words, plan_for_model, resolve_amp, resolve_device, to_layout
from covidedge.train.options import ClassifierOptions, SegmenterOptions
from covidedge.train.rundir import OUTPUT_FILES, lock_run_dir
from covidedge.train.startweights import load_start_weights, same_option
from covidedge.train.tasks import ClassifierTask, SegmenterTask, resolve_sizes

__all__ = ["TrainResult", "train_classifier", "train_segmenter", "OUTPUT_FILES", "write_json",
           "log", "same_option"]

#: Options that may change when resuming (they do not alter what is being trained).
_RESUMABLE_CHANGES = {"epochs", "patience", "device", "num_workers", "progress", "amp", "time_budget"}

WARMUP_FRACTION = 0.05
MIN_LR_FRACTION = 0.01

EpochCallback = Callable[[Dict[str, Any]], Optional[bool]]


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
def _epochs_within(budget_s: float, spent_s: float, epoch_s: float, most: int, done: int = 1) -> int:
    """Epochs a run fits into ``budget_s`` seconds: the ``done`` ones (``spent_s`` since the start)
    and as many more of ``epoch_s`` each as the rest holds; at least ``done``, at most ``most``."""
    more = int(max(0.0, budget_s - spent_s) // max(epoch_s, 1e-9))
    return max(done, min(int(most), done + more))


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
    if o.get("time_budget") is not None:
        positive("time_budget", float)
    if o["lr"] > 1.0:  # diverges at the first steps; refuse it before any data is read
        raise BadInputError(f"lr={o['lr']!r} is too large; expected a peak learning rate <= 1 "
                            "(AdamW: typically 1e-4 .. 3e-3)")
    if not (math.isfinite(o["weight_decay"]) and o["weight_decay"] >= 0):
        raise BadInputError(f"weight-decay={o['weight_decay']} is invalid; expected a finite number >= 0")
    if o["image_size"] < 32:
        raise BadInputError(f"image-size={o['image_size']} is too small; expected at least 32 px")
    if o["num_workers"] < 0:
        raise BadInputError(f"num-workers={o['num_workers']} is negative; expected >= 0")
    bn = o.get("bn_images", 0)
    if isinstance(bn, bool) or not isinstance(bn, int) or bn < 0:
        raise BadInputError(f"bn-images={bn!r} is invalid; expected an integer >= 0 (0 turns "
                            "the clean-image BatchNorm statistics off)")
    from covidedge.train.augment import augment_preset

    augment_preset(o.get("augment", "basic"))
    ema = o.get("ema_decay", 0.0)
    if not (isinstance(ema, (int, float)) and math.isfinite(ema) and (ema == 0 or 0.5 <= ema < 1)):
        raise BadInputError(f"ema-decay={ema!r} is invalid; expected 0 (off) or a value in "
                            "[0.5, 1), e.g. 0.999")


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON (numpy values and paths as plain values), atomically."""
    write_atomic(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode())


def log(progress: bool, text: str) -> None:
    """One line of the training log on stderr (above a progress bar), when ``progress``."""
    note(progress, text)


# -- the shared loop -------------------------------------------------------------------------
def _fit(task, o: Dict[str, Any], out_dir, *, resume: bool, overwrite: bool,
         on_epoch_end: Optional[EpochCallback]) -> TrainResult:
    t_start = time.perf_counter()
    _check_options(o)
    out = Path(out_dir)
    with lock_run_dir(out, resume, overwrite):
        return _train(task, o, out, t_start, resume, on_epoch_end)


def _train(task, o: Dict[str, Any], out: Path, t_start: float, resume: bool,
           on_epoch_end: Optional[EpochCallback]) -> TrainResult:
    import torch

    from covidedge.formats.checkpoint import read_checkpoint, save_checkpoint
    from covidedge.models.registry import build_from_spec
    from covidedge.plots import plot_learning_curves
    from covidedge.train.augment import BatchAugment, augment_preset
    from covidedge.train.bn import WeightAverage, recompute_batchnorm
    from covidedge.train.datasets import load_splits

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
                and not same_option(stored[k], o[k])]
        if diff:
            said = ", ".join(f"{k}={o[k]!r} (run used {stored[k]!r})" for k in diff)
            raise BadInputError(f"cannot resume with changed options: {said}", path=out,
                                hint="pass the run's original options, or start a new run")
        state = payload

    train_samples, val_samples = load_splits(o["data_root"], o["limit_per_class"], o["seed"], o)
    train_ds, val_ds = task.datasets(train_samples, val_samples, progress)
    spec = task.spec()
    torch.manual_seed(o["seed"])
    model = build_from_spec(spec).to(device)
    if state is None:
        init, init_resume = load_start_weights(model, spec, o.get("init_from"))
    else:  # a resumed run keeps the record of what it started from; its own state follows
        init, init_resume = (state.get("extra") or {}).get("init_from"), {}
    amp = plan_for_model(amp, model)
    if amp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = WeightAverage(model, o["ema_decay"]) if o.get("ema_decay") else None
    params = list(model.parameters()) + task.attach(model, device)  # hooks after the EMA copy
    if init_resume:
        task.load_resume_state(init_resume)  # e.g. the classifier's mask head
    opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp.grad_scaler)
    crit = task.criterion(device)
    aug = BatchAugment(augment_preset(o.get("augment", "basic")), hflip=bool(o["hflip"]))

    bs = int(o["batch_size"])
    # a last batch of one image would break BatchNorm's batch statistics: drop it (it is a
    # different image each epoch, as the order is reshuffled)
    drop_last = len(train_ds) > bs and len(train_ds) % bs == 1
    steps_per_epoch = len(train_ds) // bs if drop_last else max(1, math.ceil(len(train_ds) / bs))
    epochs = int(o["epochs"])  # the schedule's length; a --time-budget may shorten it after epoch 1
    total_steps = steps_per_epoch * epochs
    warmup = max(1, min(steps_per_epoch, int(WARMUP_FRACTION * total_steps)))
    loader_kw = dict(num_workers=int(o["num_workers"]), pin_memory=device.startswith("cuda"),
                     persistent_workers=False)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=bs, shuffle=False, **loader_kw)

    history: List[Dict[str, Any]] = []
    step, start_epoch, best_epoch, best_score, bad_epochs = 0, 1, 0, -math.inf, 0
    if state is not None:
        r = state["extra"]["resume"]
        if ema is not None:  # last.pt holds the averaged weights; the trained ones ride along
            model.load_state_dict(r["train_state_dict"])
            ema.load(state["state_dict"], r.get("ema"))
        else:
            model.load_state_dict(state["state_dict"])
        opt.load_state_dict(r["optimizer"])
        task.load_resume_state(r)
        if amp.grad_scaler and r.get("scaler"):
            scaler.load_state_dict(r["scaler"])
        step, start_epoch = int(r["step"]), int(r["epoch"]) + 1
        if o.get("time_budget") and r.get("planned_epochs"):
            epochs = min(epochs, int(r["planned_epochs"]))
            total_steps = steps_per_epoch * epochs
        best_epoch, best_score, bad_epochs = int(r["best_epoch"]), float(r["best_score"]), int(r["bad_epochs"])
        history = list(state["extra"].get("history") or [])
        log(progress, f"resuming {out} after epoch {start_epoch - 1} "
                       f"(best so far: epoch {best_epoch}, {task.monitor} {best_score:.4f})")
        if bad_epochs >= o["patience"] or start_epoch > epochs:
            log(progress, "that run had already finished; evaluating its best checkpoint")
            start_epoch = epochs + 1

    plain_options = {k: (str(v) if isinstance(v, Path) else v) for k, v in o.items()}
    base_extra = {"task": task.name, "train_options": plain_options,
                  "augmentation": aug.config.to_dict(), "monitor": task.monitor,
                  "train_images": len(train_ds), "val_images": len(val_ds),
                  "device": device, "amp": amp.to_dict(), **task.checkpoint_extra()}
    if init:
        base_extra["init_from"] = init

    log(progress, f"training {task.name} on {device} ({amp_words(amp)}): {len(train_ds)} Train / "
                   f"{len(val_ds)} Val images at {o['image_size']} px, {o['epochs']} epochs, batch {bs}")
    stopped_early = bool(history) and bad_epochs >= o["patience"] and len(history) < epochs
    budget_s = 60.0 * float(o["time_budget"]) if o.get("time_budget") else None
    epoch = start_epoch - 1
    while epoch < epochs:
        epoch += 1
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(o["seed"], epoch, 0))  # dropout
        shuffle_gen = torch.Generator().manual_seed(_epoch_seed(o["seed"], epoch, 1))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(o["seed"], epoch, 2))
        loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, shuffle=True,
                                             generator=shuffle_gen, drop_last=drop_last, **loader_kw)
        model.train()
        run_loss, seen = 0.0, 0
        bar = _bar(loader, epoch, epochs, progress)
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
            if ema is not None:
                ema.update(model)
            step += 1
            run_loss += float(loss.detach()) * n
            seen += n
            bar.set_postfix(loss=f"{run_loss / seen:.4f}", lr=f"{lr:.2e}")
        bar.close()
        # the model that is validated and saved: the weight average when there is one, with
        # BatchNorm statistics of clean Train images (covidedge.train.bn says why)
        kept = ema.module if ema is not None else model
        recompute_batchnorm(kept, train_ds, o.get("bn_images", 0), bs, device,
                            layout=lambda x: to_layout(x, amp), seed=o["seed"])
        kept.eval()
        # Val in fp32 (same layout): the epoch picked as best is judged by the numbers the
        # exported fp32 model gives, and metrics.json (an fp32 evaluation) repeats them
        val = task.validate(kept, val_loader, crit, device, replace(amp, dtype="fp32", grad_scaler=False))
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
        if budget_s is not None and (epoch == 1 or (epoch == 2 and epochs >= 8)):
            # fit the schedule to the budget after epoch 1; after epoch 2 again from the faster of
            # the two (a first epoch carries one-time costs: caches, kernel tuning, a busy machine),
            # while the cosine is still near its peak so the change barely moves the learning rate
            epoch_s = min(h["seconds"] for h in history)
            epochs = _epochs_within(budget_s, time.perf_counter() - t_start, epoch_s, o["epochs"], epoch)
            total_steps = steps_per_epoch * epochs
            log(progress, f"time budget {o['time_budget']:g} min: {epochs} epochs of "
                           f"{epoch_s:.0f} s (the cosine schedule follows that count)")
        if improved:
            save_checkpoint(out / "best.pt", kept, spec, {
                **base_extra, "epoch": epoch, "metrics": val, "history": history})
        resume_state = {"optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict() if amp.grad_scaler else None,
                        "step": step, "epoch": epoch, "best_epoch": best_epoch,
                        "best_score": best_score, "bad_epochs": bad_epochs, "planned_epochs": epochs,
                        "rng": {"scheme": "per-epoch seeds from (seed, epoch)", "seed": o["seed"]},
                        **task.resume_state()}
        if ema is not None:
            resume_state.update(train_state_dict=model.state_dict(), ema=ema.state())
        save_checkpoint(out / "last.pt", kept, spec, {
            **base_extra, "epoch": epoch, "metrics": val, "history": history,
            "resume": resume_state})
        _write_history(out, task, plain_options, history, best_epoch)
        log(progress, _summary(record, epochs, task.monitor))
        if on_epoch_end is not None and on_epoch_end(dict(record)):
            log(progress, f"stopped by the caller after epoch {epoch}")
            break
        if (budget_s is not None and epoch < epochs
                and time.perf_counter() - t_start + record["seconds"] > budget_s):
            stopped_early = True
            log(progress, f"time budget {o['time_budget']:g} min reached after epoch {epoch}")
            break
        if bad_epochs >= o["patience"]:
            stopped_early = epoch < epochs
            log(progress, f"early stop: no {task.monitor} gain for {bad_epochs} epochs "
                           f"(patience {o['patience']}); best epoch {best_epoch}")
            break

    if not (out / "best.pt").is_file():
        raise RuntimeFailure("no epoch finished, so there is no best.pt", path=out)
    _write_history(out, task, plain_options, history, best_epoch)
    plot_learning_curves(history, out / "learning_curves.png", metric=task.curve_metric,
                         best_epoch=best_epoch, title=f"{task.name}: learning curves")
    metrics = _final_metrics(out, o, device, progress)
    return TrainResult(task=task.name, out_dir=out, best_checkpoint=out / "best.pt",
                       last_checkpoint=out / "last.pt", best_epoch=best_epoch,
                       monitor=task.monitor, best_score=best_score,
                       epochs_run=len(history), stopped_early=stopped_early,
                       seconds=time.perf_counter() - t_start, history=history, metrics=metrics)


def _bar(loader, epoch, epochs, progress):
    return progress_bar(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", enabled=progress)


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
    write_json(out / "history.json", {"task": task.name, "monitor": task.monitor,
                                      "best_epoch": best_epoch, "options": options,
                                      "epochs": history})


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
    write_json(out / "metrics.json", metrics)
    report.save(out / "val_report", overwrite=True)  # the run's own report (a resumed run's again)
    log(progress, report.headline())
    return metrics



# -- public entry points ---------------------------------------------------------------------
def train_classifier(data_root, out_dir, options: Optional[ClassifierOptions] = None, *,
                     progress: bool = True, on_epoch_end: Optional[EpochCallback] = None,
                     **overrides: Any) -> TrainResult:
    """Train the Xception classifier (COVID-19 / Non-COVID / Normal) on ``data_root``'s Train split,
    keeping the epoch with the best Val accuracy, as ``options`` (a
    :class:`~covidedge.train.options.ClassifierOptions`, its fields also accepted as keywords)
    says. ``variant`` names the model size (default ``xception256``: 256 px, width 1.0);
    ``image_size`` (px, square) and ``width_mult``, when given, win over the variant's. ``lr`` is
    the peak learning rate. ``on_epoch_end(record)`` is called after each epoch with its history
    record; returning True stops training there (``last.pt`` can then be resumed). Before each
    Val pass the BatchNorm statistics are re-estimated on ``bn_images`` clean Train images (0:
    off), and with ``ema_decay`` > 0 the model validated and saved is an EMA of the weights (see
    ``covidedge.train.bn``)."""
    c = ClassifierOptions.of(options, **overrides)
    sizes = resolve_sizes("classifier", c.variant, image_size=c.image_size, width_mult=c.width_mult)
    o = dict(task="classifier", variant=c.variant, data_root=str(data_root), epochs=c.epochs,
             batch_size=c.batch_size, lr=float(c.lr), weight_decay=float(c.weight_decay),
             image_size=int(sizes["image_size"]), width_mult=float(sizes["width_mult"]),
             drop_rate=float(c.drop_rate), device=c.device, amp=str(c.amp), seed=int(c.seed),
             patience=c.patience, limit_per_class=c.limit_per_class, num_workers=int(c.num_workers),
             hflip=bool(c.hflip), progress=bool(progress),
             allow_missing_classes=bool(c.allow_missing_classes), bn_images=c.bn_images,
             ema_decay=c.ema_decay, augment=c.augment, aux_masks=float(c.aux_masks),
             distill_from=[str(t) for t in c.distill_from] if c.distill_from else None,
             distill_weight=c.distill_weight, distill_temperature=c.distill_temperature,
             init_from=str(c.init_from) if c.init_from else None, time_budget=c.time_budget)
    ClassifierTask.check_options(o)
    return _fit(ClassifierTask(o), o, out_dir, resume=c.resume, overwrite=c.overwrite,
                on_epoch_end=on_epoch_end)


def train_segmenter(data_root, out_dir, options: Optional[SegmenterOptions] = None, *,
                    progress: bool = True, on_epoch_end: Optional[EpochCallback] = None,
                    **overrides: Any) -> TrainResult:
    """Train the residual U-Net (lungs + infection masks) on ``data_root``'s Train split with the
    loss ``loss`` (see ``covidedge.train.losses.LOSSES``), keeping the epoch with the best mean
    of Val lung Dice and Val infection Dice (COVID-19 images), as ``options`` (a
    :class:`~covidedge.train.options.SegmenterOptions`, its fields also accepted as keywords)
    says. ``variant`` names the model size (default ``resunet256``: 256 px, base width 32, depth
    4); ``image_size`` (px, divisible by 2**depth), ``base_width`` and ``depth``, when given, win
    over the variant's."""
    c = SegmenterOptions.of(options, **overrides)
    sizes = resolve_sizes("segmenter", c.variant, image_size=c.image_size, base_width=c.base_width,
                          depth=c.depth)
    o = dict(task="segmenter", variant=c.variant, data_root=str(data_root), epochs=c.epochs,
             batch_size=c.batch_size, lr=float(c.lr), weight_decay=float(c.weight_decay),
             image_size=int(sizes["image_size"]), base_width=int(sizes["base_width"]),
             depth=int(sizes["depth"]), loss=str(c.loss), loss_params=dict(c.loss_params or {}),
             device=c.device, amp=str(c.amp), seed=int(c.seed), patience=c.patience,
             limit_per_class=c.limit_per_class, num_workers=int(c.num_workers), hflip=bool(c.hflip),
             progress=bool(progress), allow_missing_classes=bool(c.allow_missing_classes),
             bn_images=c.bn_images, ema_decay=c.ema_decay, augment=c.augment,
             init_from=str(c.init_from) if c.init_from else None, time_budget=c.time_budget)
    SegmenterTask.check_options(o)
    return _fit(SegmenterTask(o), o, out_dir, resume=c.resume, overwrite=c.overwrite,
                on_epoch_end=on_epoch_end)
