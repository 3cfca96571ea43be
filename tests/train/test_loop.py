"""Training loops end to end on a tiny synthetic dataset: files, metrics, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from covidedge.data.covidqu import CovidQuDataset, select_samples  # noqa: E402
from covidedge.data.preprocess import preprocess  # noqa: E402
from covidedge.errors import BadInputError  # noqa: E402
from covidedge.evaluation import evaluate  # noqa: E402
from covidedge.formats.checkpoint import read_checkpoint  # noqa: E402
from covidedge.models.loading import load_checkpoint
from covidedge.train.datasets import (  # noqa: E402
    ClassificationDataset, SegmentationDataset, class_weights)
from covidedge.train.loop import train_classifier, train_segmenter  # noqa: E402

CLS = dict(epochs=2, batch_size=4, image_size=64, width_mult=0.125, progress=False)
SEG = dict(epochs=2, batch_size=4, image_size=64, base_width=8, depth=3, progress=False)
FILES = {"best.pt", "last.pt", "history.json", "learning_curves.png", "metrics.json", "val_report"}



@pytest.fixture(scope="module")
def cls_run(data_root, tmp_path_factory):
    return train_classifier(data_root, tmp_path_factory.mktemp("runs") / "cls", **CLS)


@pytest.fixture(scope="module")
def seg_run(data_root, tmp_path_factory):
    return train_segmenter(data_root, tmp_path_factory.mktemp("runs") / "seg", loss="bce_dice", **SEG)


# -- datasets --------------------------------------------------------------------------------
def test_select_samples_is_seeded_and_per_class(data_root):
    all_val = CovidQuDataset(data_root).samples("Val")
    a = select_samples(all_val, 2, seed=0)
    assert [s.name for s in a] == [s.name for s in select_samples(list(reversed(all_val)), 2, seed=0)]
    assert [s.label for s in a] == ["COVID-19"] * 2 + ["Non-COVID"] * 2 + ["Normal"] * 2
    assert len(select_samples(all_val, None)) == 12
    with pytest.raises(BadInputError):
        select_samples(all_val, 0)


def test_class_weights_balance_the_loss():
    w = class_weights([0, 0, 0, 0, 1, 1, 2, 2], 3)
    np.testing.assert_allclose(w, [8 / 12, 8 / 6, 8 / 6])
    counts = np.array([4, 2, 2])
    assert np.allclose(w * counts, (w * counts)[0])  # every class weighs the same in total
    np.testing.assert_allclose(class_weights([0, 0, 1], 3), [0.75, 1.5, 0.0])


def test_datasets_cache_the_one_preprocessing(data_root):
    samples = select_samples(CovidQuDataset(data_root).samples("Train"), 1)
    exact = ClassificationDataset(samples, (64, 64), progress=False)
    x, y = exact[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 64, 64) and int(y) == 0
    np.testing.assert_array_equal(x.numpy(), preprocess(samples[0].image, (64, 64))[0])
    assert exact.images._data[0].dtype == np.uint8  # 8-bit at its own size: stored losslessly
    resized = SegmentationDataset(samples, (48, 48), progress=False)
    x, m, y = resized[0]
    np.testing.assert_allclose(x.numpy(), preprocess(samples[0].image, (48, 48))[0], atol=3e-4)
    assert tuple(m.shape) == (2, 48, 48) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[0].sum() > 0 and m[1].sum() > 0  # COVID-19 sample: lungs and infection


# -- classifier ------------------------------------------------------------------------------
def test_classifier_run_writes_every_file(cls_run):
    out = cls_run.out_dir
    assert FILES <= {p.name for p in out.iterdir()}
    hist = json.loads((out / "history.json").read_text())
    assert hist["task"] == "classifier" and hist["monitor"] == "val_accuracy"
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    for e in hist["epochs"]:
        assert {"train_loss", "val_loss", "val_accuracy", "lr", "seconds"} <= set(e)
        assert np.isfinite(e["train_loss"]) and 0.0 <= e["val_accuracy"] <= 1.0
    assert hist["epochs"][0]["lr"] > hist["epochs"][1]["lr"] > 0  # cosine decay after warm-up
    assert cls_run.best_epoch == hist["best_epoch"] and cls_run.epochs_run == 2
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "val_report" / "report.md").is_file()

    model, spec, meta = load_checkpoint(out / "best.pt")
    assert spec.task == "classifier" and spec.input_size == (64, 64)
    assert spec.model_kwargs == {"width_mult": 0.125, "drop_rate": 0.2}
    assert spec.preprocessing == "gray-unit-bilinear-v1"
    assert meta["epoch"] == cls_run.best_epoch and meta["train_options"]["lr"] == 1e-3
    assert meta["train_options"]["variant"] is None  # explicit sizes, no variant named
    assert meta["class_weights"] == [1.0, 1.0, 1.0] and "resume" not in meta
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 3)


def test_metrics_json_is_what_evaluate_gives_for_best_pt(cls_run, data_root):
    saved = json.loads((cls_run.out_dir / "metrics.json").read_text())
    again = evaluate(cls_run.best_checkpoint, data_root, "Val", batch_size=5, backend="torch",
                     progress=False).to_dict()
    assert again["metrics"]["confusion_matrix"] == saved["metrics"]["confusion_matrix"]
    assert again["metrics"]["accuracy"] == pytest.approx(saved["metrics"]["accuracy"])
    for label, row in saved["metrics"]["per_class"].items():
        assert again["metrics"]["per_class"][label] == pytest.approx(row)
    assert again["metrics"]["roc_auc"] == pytest.approx(saved["metrics"]["roc_auc"], abs=1e-6)
    # and it is the accuracy the loop measured at the best epoch
    best = cls_run.history[cls_run.best_epoch - 1]
    assert saved["metrics"]["accuracy"] == pytest.approx(best["val_accuracy"])
    assert cls_run.metrics["metrics"]["accuracy"] == saved["metrics"]["accuracy"]


def test_resume_repeats_the_uninterrupted_run_exactly(cls_run, data_root, tmp_path):
    out = tmp_path / "cls"
    part = train_classifier(data_root, out, on_epoch_end=lambda rec: rec["epoch"] == 1, **CLS)
    assert part.epochs_run == 1
    assert read_checkpoint(out / "last.pt")["extra"]["epoch"] == 1
    done = train_classifier(data_root, out, resume=True, **CLS)
    assert [e["epoch"] for e in done.history] == [1, 2]
    a = read_checkpoint(cls_run.last_checkpoint)["state_dict"]
    b = read_checkpoint(out / "last.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(cls_run.history, done.history):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}
    # a finished run resumed again trains nothing more
    again = train_classifier(data_root, out, resume=True, **CLS)
    assert again.epochs_run == 2


def test_out_dir_rules(cls_run, data_root, tmp_path):
    with pytest.raises(BadInputError, match="not empty.*--resume.*--overwrite"):
        train_classifier(data_root, cls_run.out_dir, **CLS)
    with pytest.raises(BadInputError, match="nothing to resume"):
        train_classifier(data_root, tmp_path / "fresh", resume=True, **CLS)
    with pytest.raises(BadInputError, match=r"changed options: width_mult=0\.25"):
        train_classifier(data_root, cls_run.out_dir, resume=True, **{**CLS, "width_mult": 0.25})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    (other / "history.json").write_text("{}")
    res = train_classifier(data_root, other, overwrite=True, **{**CLS, "epochs": 1})
    assert (other / "notes.txt").read_text() == "keep me"  # only the run's own files are replaced
    assert json.loads((other / "history.json").read_text())["epochs"][0]["epoch"] == 1
    assert res.epochs_run == 1


def test_init_from_starts_from_a_checkpoint_and_refuses_another_network(cls_run, data_root, tmp_path):
    from covidedge.errors import IncompatibleModelError
    from covidedge.formats.checkpoint import checkpoint_sha256

    start = read_checkpoint(cls_run.best_checkpoint)["state_dict"]
    seen = {}

    def first_weights(rec):  # the weights are loaded before any step: compare after epoch 1
        seen["state"] = read_checkpoint(tmp_path / "ft" / "last.pt")["state_dict"]
        return True
    res = train_classifier(data_root, tmp_path / "ft", init_from=str(cls_run.best_checkpoint),
                           on_epoch_end=first_weights, **{**CLS, "lr": 1e-9, "bn_images": 0})
    after = seen["state"]
    weights = [k for k in start if k.endswith("weight") and start[k].dtype == torch.float32]
    assert weights and all(torch.allclose(start[k], after[k], atol=1e-6) for k in weights)
    extra = read_checkpoint(res.best_checkpoint)["extra"]
    assert extra["init_from"]["sha256"] == checkpoint_sha256(cls_run.best_checkpoint)
    assert extra["train_options"]["init_from"] == str(cls_run.best_checkpoint)
    # random weights differ from the checkpoint's: the option did something
    fresh = train_classifier(data_root, tmp_path / "fresh", on_epoch_end=lambda rec: True,
                             **{**CLS, "lr": 1e-9, "bn_images": 0})
    other = read_checkpoint(fresh.last_checkpoint)["state_dict"]
    assert not all(torch.allclose(start[k], other[k], atol=1e-6) for k in weights)
    with pytest.raises(IncompatibleModelError, match="another network.*width_mult"):
        train_classifier(data_root, tmp_path / "wide", init_from=str(cls_run.best_checkpoint),
                         **{**CLS, "width_mult": 0.25})


# -- segmenter -------------------------------------------------------------------------------
def test_segmenter_run_writes_every_file_and_consistent_metrics(seg_run, data_root):
    out = seg_run.out_dir
    assert FILES <= {p.name for p in out.iterdir()}
    hist = json.loads((out / "history.json").read_text())
    assert hist["monitor"] == "val_dice_mean" and hist["options"]["loss"] == "bce_dice"
    for e in hist["epochs"]:
        assert {"train_loss", "val_loss", "val_dice_lungs", "val_dice_infection", "lr"} <= set(e)
    _, spec, meta = load_checkpoint(out / "best.pt")
    assert spec.task == "segmenter" and spec.labels == ("lungs", "infection")
    assert spec.model_kwargs == {"base_width": 8, "depth": 3} and spec.input_size == (64, 64)
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    best = seg_run.history[seg_run.best_epoch - 1]
    assert m["lung_dice"] == pytest.approx(best["val_dice_lungs"], abs=1e-4)
    assert m["infection_dice"] == pytest.approx(best["val_dice_infection"], abs=1e-4)
    assert m["summary"]["infection"]["images"] + m["summary"]["infection"]["both_empty"] == 4
    assert 0.0 <= m["fp_infection_fraction"] <= 1.0


def test_bad_options_fail_before_any_work(data_root, tmp_path):
    with pytest.raises(BadInputError, match="not divisible by 2\\*\\*depth=8"):
        train_segmenter(data_root, tmp_path / "a", **{**SEG, "image_size": 60})
    with pytest.raises(BadInputError, match="unknown loss"):
        train_segmenter(data_root, tmp_path / "b", loss="hinge", **SEG)
    with pytest.raises(BadInputError, match="epochs=0"):
        train_classifier(data_root, tmp_path / "c", **{**CLS, "epochs": 0})
    with pytest.raises(BadInputError, match="drop-rate"):
        train_classifier(data_root, tmp_path / "d", **{**CLS, "drop_rate": 1.0})
    for i, (key, value) in enumerate((("lr", float("nan")), ("lr", float("inf")), ("weight_decay", float("nan")))):
        with pytest.raises(BadInputError, match=f"{key.replace('_', '-')}=(nan|inf) is invalid"):
            train_classifier(data_root, tmp_path / f"e{i}", **{**CLS, key: value})
    with pytest.raises(BadInputError, match=r"unknown classifier variant 'xception999'; known: xception256"):
        train_classifier(data_root, tmp_path / "f", variant="xception999", **CLS)
    with pytest.raises(BadInputError, match=r"'resunet256' is a segmenter variant"):
        train_classifier(data_root, tmp_path / "g", variant="resunet256", **CLS)
    with pytest.raises(BadInputError, match="not divisible by 2\\*\\*depth=16"):  # resunet256: depth 4
        train_segmenter(data_root, tmp_path / "h", variant="resunet256", image_size=72, progress=False)
    assert not any((tmp_path / n).exists() for n in ["a", "b", "c", "d", "e0", "e1", "e2", "f", "g", "h"])


def test_variant_supplies_sizes_and_explicit_values_win():
    from covidedge.train.tasks import resolve_sizes

    assert resolve_sizes("classifier", None) == {"image_size": 256, "width_mult": 1.0}
    assert resolve_sizes("classifier", "xception128-small") == {"image_size": 128, "width_mult": 0.25}
    assert resolve_sizes("classifier", "xception128-small", image_size=96, width_mult=None) == \
        {"image_size": 96, "width_mult": 0.25}
    assert resolve_sizes("segmenter", "resunet256-b16", depth=3) == \
        {"image_size": 256, "base_width": 16, "depth": 3}
    assert resolve_sizes("segmenter", None, base_width=8) == {"image_size": 256, "base_width": 8, "depth": 4}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for torch (AMP path)")
def test_cuda_amp_run(data_root, tmp_path):
    res = train_segmenter(data_root, tmp_path / "gpu", device="cuda", **{**SEG, "epochs": 1})
    assert read_checkpoint(res.last_checkpoint)["extra"]["device"] == "cuda"
    assert np.isfinite(res.history[0]["train_loss"])
    assert res.metrics["model"]["device"].startswith("cuda")


# -- mixed precision -------------------------------------------------------------------------
def test_resolve_amp_picks_per_device_and_refuses_what_cannot_run(monkeypatch):
    from covidedge.train import amp

    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: True)
    plan = amp.resolve_amp("auto", "cpu")
    assert (plan.dtype, plan.channels_last, plan.grad_scaler) == ("bf16", True, False)
    assert plan.autocast().fast_dtype == torch.bfloat16
    cuda = amp.resolve_amp("auto", "cuda:0")
    assert (cuda.dtype, cuda.device_type, cuda.channels_last, cuda.grad_scaler) == ("fp16", "cuda", False, True)
    off = amp.resolve_amp("off", "cpu")
    assert (off.dtype, off.enabled, off.channels_last) == ("fp32", False, True)  # NHWC pays on a CPU in fp32 too
    assert amp.resolve_amp("bf16", "cpu").dtype == "bf16"

    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: False)
    assert amp.resolve_amp("auto", "cpu").dtype == "fp32"  # emulated bf16 is slower than fp32
    with pytest.raises(BadInputError, match="no native bf16"):
        amp.resolve_amp("bf16", "cpu")
    with pytest.raises(BadInputError, match="fp16 needs a CUDA device"):
        amp.resolve_amp("fp16", "cpu")
    with pytest.raises(BadInputError, match="not known"):
        amp.resolve_amp("int8", "cpu")


def test_run_records_its_precision_and_may_resume_with_another(data_root, tmp_path):
    from covidedge.train.amp import cpu_has_bf16, resolve_amp

    out = tmp_path / "amp"
    part = train_classifier(data_root, out, amp="off", on_epoch_end=lambda rec: rec["epoch"] == 1, **CLS)
    from covidedge.models.registry import build_from_spec
    from covidedge.spec import ModelSpec
    from covidedge.train.amp import plan_for_model

    ckpt = read_checkpoint(part.last_checkpoint)
    model = build_from_spec(ModelSpec.from_dict(ckpt["spec"]))
    # the plan for this model: fp32, and NCHW when the tiny model has narrow convolutions
    assert ckpt["extra"]["amp"] == plan_for_model(resolve_amp("off", "cpu"), model).to_dict()
    done = train_classifier(data_root, out, amp="auto", resume=True, **CLS)
    extra = read_checkpoint(done.last_checkpoint)["extra"]
    assert extra["amp"]["mode"] == "auto"
    assert extra["amp"]["dtype"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert all(np.isfinite(e["train_loss"]) for e in done.history)


@pytest.mark.skipif(not __import__("covidedge.train.amp", fromlist=["x"]).cpu_has_bf16(),
                    reason="this CPU has no native bf16 (AVX512-BF16 / AMX), so the bf16 path is refused here")
def test_bf16_segmenter_step_keeps_fp32_weights_and_losses(data_root, tmp_path):
    res = train_segmenter(data_root, tmp_path / "bf16", amp="bf16", loss="bce_dice", **{**SEG, "epochs": 1})
    state = read_checkpoint(res.last_checkpoint)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert np.isfinite(res.history[0]["train_loss"]) and 0.0 <= res.history[0]["val_dice_mean"] <= 1.0


def test_epochs_within_a_time_budget():
    from covidedge.train.loop import _epochs_within

    assert _epochs_within(600, 60, 50, 30) == 11  # the epoch done and 10 more of 50 s
    assert _epochs_within(600, 700, 50, 30) == 1  # already over: the one epoch done
    assert _epochs_within(6000, 10, 50, 30) == 30  # never more than --epochs
    assert _epochs_within(600, 120, 40, 30, done=2) == 14  # after epoch 2: 2 done, 12 more of 40 s
    assert _epochs_within(600, 900, 40, 30, done=2) == 2


def test_time_budget_plans_again_after_a_slow_first_epoch(data_root, tmp_path, monkeypatch):
    import covidedge.train.loop as loop

    seen, plans = [], iter([9, 3])
    monkeypatch.setattr(loop, "_epochs_within", lambda *a: seen.append(a) or next(plans))
    res = train_classifier(data_root, tmp_path / "r", time_budget=5.0, **{**CLS, "epochs": 12})
    assert [e["epoch"] for e in res.history] == [1, 2, 3] and len(seen) == 2
    (_, spent1, s1, most1, done1), (_, spent2, s2, most2, done2) = seen
    assert (most1, done1, most2, done2) == (12, 1, 12, 2) and spent2 > spent1
    assert s1 == res.history[0]["seconds"] and s2 == min(h["seconds"] for h in res.history[:2])
    assert read_checkpoint(res.last_checkpoint)["extra"]["resume"]["planned_epochs"] == 3


def test_time_budget_cuts_the_schedule_after_epoch_one(cls_run, data_root, tmp_path, monkeypatch):
    import covidedge.train.loop as loop

    seen = []
    monkeypatch.setattr(loop, "_epochs_within", lambda *a: seen.append(a) or 2)
    res = train_classifier(data_root, tmp_path / "b", time_budget=5.0, **{**CLS, "epochs": 6})
    assert [e["epoch"] for e in res.history] == [1, 2] and len(seen) == 1  # 2 planned: no second plan
    budget_s, spent_s, epoch_s, most, done = seen[0]
    assert budget_s == 300.0 and most == 6 and done == 1 and 0 < epoch_s <= spent_s
    # epoch 2 ends the cosine schedule as a plain 2-epoch run does, not half way down a 6-epoch one
    assert res.history[-1]["lr"] == pytest.approx(cls_run.history[-1]["lr"], rel=1e-9)
    assert read_checkpoint(res.last_checkpoint)["extra"]["resume"]["planned_epochs"] == 2
    again = train_classifier(data_root, tmp_path / "b", resume=True, time_budget=5.0, **{**CLS, "epochs": 6})
    assert again.epochs_run == 2  # a resumed budgeted run keeps its planned length
    with pytest.raises(BadInputError, match="time-budget"):
        train_classifier(data_root, tmp_path / "c", time_budget=0, **CLS)


def test_a_run_folder_in_use_is_refused_and_freed_after(cls_run, data_root, tmp_path):
    import subprocess
    import sys

    from covidedge.train.rundir import LOCK_FILE

    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 4242'); f.flush(); print('held', flush=True); time.sleep(60)"), str(out / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BadInputError, match=r"another training \(pid 4242\) is writing"):
            train_classifier(data_root, out, **{**CLS, "epochs": 1})
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock went with it, and the lock file alone is no earlier run
    res = train_classifier(data_root, out, **{**CLS, "epochs": 1})
    assert res.epochs_run == 1
    assert "pid" in (out / LOCK_FILE).read_text()
