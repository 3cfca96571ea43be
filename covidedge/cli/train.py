"""``covidedge train classifier|segmenter``: train a model on a COVID-QU-Ex folder."""

from __future__ import annotations

import json

import click

from covidedge.errors import BadInputError
from covidedge.models.registry import DEFAULT_VARIANTS, VARIANTS, list_variants
from covidedge.spec import AMP_MODES
from covidedge.train.options import ClassifierOptions, SegmenterOptions, TrainOptions


def variant_option(task: str):
    """``--variant``: a named model size from the registry; the help lists every one."""
    def words(name):
        v = VARIANTS[name]
        sizes = ", ".join(f"{k} {x:g}" for k, x in v.model_kwargs.items())
        return f"{name} ({v.input_size} px, {sizes})"

    names = "; ".join(words(n) for n in list_variants(task))
    explicit = "--image-size and --width-mult" if task == "classifier" else \
        "--image-size, --base-width and --depth"
    return click.option(
        "--variant", default=None, metavar="NAME",
        help=f"Named model size: {names}. {explicit}, when given, win over "
             f"its values. [default: {DEFAULT_VARIANTS[task]}]")


def _common_options(task: str):
    """Options shared by both models, in help order; ``--variant`` lists ``task``'s variants."""
    options = [
        click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="COVID-QU-Ex folder (the one holding Train/ and Val/, or a parent of it)."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="Run folder for best.pt, last.pt, history.json, learning_curves.png, metrics.json."),
        click.option("--epochs", default=TrainOptions.epochs, show_default=True, type=int, help="Maximum number of epochs."),
        click.option("--batch-size", default=TrainOptions.batch_size, show_default=True, type=int, help="Images per step."),
        click.option("--lr", default=TrainOptions.lr, show_default=True, type=float,
                     help="Peak learning rate (AdamW; linear warm-up, then cosine decay)."),
        click.option("--weight-decay", default=TrainOptions.weight_decay, show_default=True, type=float, help="AdamW weight decay."),
        variant_option(task),
        click.option("--image-size", default=None, type=int,
                     help="Square input size in px; recorded in the checkpoint's spec. "
                          "[default: the variant's]"),
        click.option("--device", default=TrainOptions.device, show_default=True,
                     help="auto (CUDA when available), cpu, cuda or cuda:N."),
        click.option("--amp", default=TrainOptions.amp, show_default=True,
                     type=click.Choice(AMP_MODES, case_sensitive=False),
                     help="Mixed precision: auto = fp16 on CUDA, bf16 + channels_last on CPUs with "
                          "native bf16 (AVX512-BF16/AMX), else fp32. Weights stay fp32; recorded in "
                          "the checkpoint."),
        click.option("--seed", default=TrainOptions.seed, show_default=True, type=int,
                     help="Seed for weights, image subset, shuffling and augmentation."),
        click.option("--patience", default=TrainOptions.patience, show_default=True, type=int,
                     help="Stop after this many epochs without a better Val score."),
        click.option("--limit-per-class", default=None, type=int,
                     help="Use at most N images per class of Train and of Val (quick runs)."),
        click.option("--num-workers", default=TrainOptions.num_workers, show_default=True, type=int,
                     help="DataLoader worker processes (images are cached in memory already)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--overwrite", is_flag=True, help="Replace an earlier run's files in --out."),
        click.option("--hflip", is_flag=True,
                     help="Also mirror images left-right (off by default: anatomy is lateralised)."),
        click.option("--allow-missing-classes", is_flag=True,
                     help="Train even when Train or Val has no images of some class (refused "
                          "otherwise); recorded in the checkpoint and the Val report."),
        click.option("--bn-images", default=TrainOptions.bn_images, show_default=True, type=int,
                     help="Before each Val pass, re-estimate BatchNorm statistics on this many "
                          "clean (unaugmented) Train images, so the saved model normalises real "
                          "films with their own statistics; 0 keeps the augmented-batch ones."),
        click.option("--ema-decay", default=TrainOptions.ema_decay, show_default=True, type=float,
                     help="Validate and save an exponential moving average of the weights with "
                          "this decay (e.g. 0.999); 0 saves the trained weights."),
        click.option("--augment", default=TrainOptions.augment, show_default=True,
                     type=click.Choice(["basic", "robust"]),
                     help="basic: geometry, brightness and contrast; robust: also gamma, "
                          "resampling and noise, as other scanners and exports bring."),
        click.option("--init-from", default=None, type=click.Path(dir_okay=False, path_type=str),
                     help="Start from this checkpoint's weights (best.pt or last.pt of the same "
                          "variant) instead of random ones, with a fresh schedule: fine-tune on "
                          "your own data, or train a finished run further. Recorded in the "
                          "checkpoints."),
        click.option("--time-budget", default=None, type=float, metavar="MINUTES",
                     help="Finish within this many minutes: after epoch 1 the run keeps the "
                          "epochs that fit (at most --epochs) and the cosine schedule follows "
                          "that count (planned again after epoch 2 from the faster epoch when 8 "
                          "or more fit); a later epoch that would overrun stops it."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
    ]

    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return apply


def _parse_loss_params(pairs):
    """``k=v`` strings -> dict; values are JSON when they parse (numbers, lists), else strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"--loss-param {pair!r} is not KEY=VALUE",
                                hint="e.g. --loss-param alpha=0.7 --loss-param channel_weights=[1,3]")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _report(result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    m = result.metrics.get("metrics", {})
    rows = [("task", result.task), ("best checkpoint", str(result.best_checkpoint)),
            ("best epoch", f"{result.best_epoch} of {result.epochs_run} run"
                           + (" (early stop)" if result.stopped_early else ""))]
    if result.task == "segmenter":  # the classifier's monitor is the Val accuracy listed below
        rows.append((result.monitor, f"{result.best_score:.4f}"))
    keys = (("accuracy", "Val accuracy"), ("macro_f1", "Val macro F1")) if result.task == "classifier" \
        else (("lung_dice", "Val lung Dice"), ("infection_dice", "Val infection Dice"),
              ("fp_infection_fraction", "Val FP infected area"))
    for k, label in keys:
        if isinstance(m.get(k), (int, float)):
            rows.append((label, f"{m[k]:.4f}"))
    rows.append(("seconds", f"{result.seconds:.1f}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


@click.group(name="train")
def command():
    """Train the Xception classifier (COVID-19 / Non-COVID / Normal) or the residual U-Net
    segmenter (lungs + infection) on a COVID-QU-Ex folder. Trains on Train, keeps the best Val
    epoch, and writes best.pt (weights + spec), last.pt (for --resume), history.json,
    learning_curves.png and metrics.json into --out.

    \b
    Example:
      covidedge train classifier --data COVID-QU-Ex --out runs/cls --epochs 30
      covidedge train segmenter --data COVID-QU-Ex --out runs/seg --loss focal_tversky
    """


@command.command(name="classifier")
@_common_options("classifier")
@click.option("--width-mult", default=None, type=float,
              help="Channel width multiplier of Xception (0.25 for a small, fast model). "
                   "[default: the variant's]")
@click.option("--drop-rate", default=ClassifierOptions.drop_rate, show_default=True, type=float, help="Dropout before the classifier head.")
@click.option("--aux-masks", default=ClassifierOptions.aux_masks, show_default=True, type=float,
              help="Weight of a training-only loss that predicts each Train image's lung and "
                   "infection masks from the classifier's features (0: off; 0.5 a usual value). "
                   "The mask head is never exported.")
@click.option("--distill-from", multiple=True, type=click.Path(dir_okay=False, path_type=str),
              metavar="CHECKPOINT",
              help="Also learn from this classifier's answers on the clean Train images (its "
                   "best.pt at the same --image-size; repeat for an ensemble, whose probabilities "
                   "are averaged) while this run sees them augmented. Recorded in the checkpoints.")
@click.option("--distill-weight", default=ClassifierOptions.distill_weight, show_default=True, type=float,
              help="Share of the teachers' soft-target loss in the classification loss "
                   "(the cross-entropy keeps the rest); used with --distill-from.")
@click.option("--distill-temperature", default=ClassifierOptions.distill_temperature, show_default=True,
              type=float, help="Softmax temperature of the teachers' and the student's answers in "
                               "the soft-target loss; used with --distill-from.")
def classifier(as_json, distill_from, **kw):
    """Train the Xception classifier; the best epoch is the one with the highest Val accuracy.
    Classes are balanced with a class-weighted cross-entropy.

    \b
    Example (a quick CPU run of the small 128-px model):
      covidedge train classifier --data COVID-QU-Ex --out runs/cls-small \\
          --variant xception128-small --limit-per-class 150 --epochs 8
    """
    from covidedge.train.loop import train_classifier

    data_root, out_dir = kw.pop("data_root"), kw.pop("out_dir")
    result = train_classifier(data_root, out_dir, ClassifierOptions(distill_from=tuple(distill_from) or None, **kw))
    _report(result, as_json)


@command.command(name="segmenter")
@_common_options("segmenter")
@click.option("--base-width", default=None, type=int,
              help="Channels of the first U-Net stage. [default: the variant's]")
@click.option("--depth", default=None, type=int,
              help="Down-sampling stages; --image-size must be divisible by 2**depth. "
                   "[default: the variant's]")
@click.option("--loss", default=SegmenterOptions.loss, show_default=True,
              help="bce, dice, bce_dice, focal, tversky, focal_tversky or jaccard.")
@click.option("--loss-param", "loss_param", multiple=True, metavar="KEY=VALUE",
              help="A loss option, repeatable (e.g. alpha=0.7, channel_weights=[1,3]).")
def segmenter(as_json, loss_param, **kw):
    """Train the residual U-Net; the best epoch has the highest mean of Val lung Dice (all
    images) and Val infection Dice (COVID-19 images).

    \b
    Example:
      covidedge train segmenter --data COVID-QU-Ex --out runs/seg-small \\
          --variant resunet128-small --epochs 8 --loss focal_tversky --loss-param alpha=0.7
    """
    from covidedge.train.loop import train_segmenter

    data_root, out_dir = kw.pop("data_root"), kw.pop("out_dir")
    result = train_segmenter(data_root, out_dir, SegmenterOptions(loss_params=_parse_loss_params(loss_param), **kw))
    _report(result, as_json)
