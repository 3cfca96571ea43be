"""Distillation: the classifier learns from teacher checkpoints' answers on clean Train images."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from covidedge.cli.main import cli  # noqa: E402
from covidedge.errors import BadInputError, IncompatibleModelError  # noqa: E402
from covidedge.formats.checkpoint import checkpoint_sha256, read_checkpoint  # noqa: E402
from covidedge.models.loading import load_checkpoint  # noqa: E402
from covidedge.train.datasets import ClassificationDataset, load_splits  # noqa: E402
from covidedge.train.distill import TeacherTargets, distill_loss, teacher_probabilities  # noqa: E402
from covidedge.train.loop import train_classifier, train_segmenter  # noqa: E402

CLS = dict(epochs=2, batch_size=4, image_size=64, width_mult=0.125, progress=False, bn_images=8)


@pytest.fixture(scope="module")
def teachers(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    a = train_classifier(data_root, root / "a", **{**CLS, "epochs": 1})
    b = train_classifier(data_root, root / "b", **{**CLS, "epochs": 1, "seed": 3})
    return str(a.best_checkpoint), str(b.best_checkpoint)


def test_loss_is_zero_when_the_student_matches_and_grows_with_the_gap():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    t = 2.0
    match = torch.softmax(logits / t, 1)
    assert float(distill_loss(logits, match, t)) == pytest.approx(0.0, abs=1e-6)
    other = torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    near = 0.5 * match + 0.5 * other
    assert 0 < float(distill_loss(logits, near, t)) < float(distill_loss(logits, other, t))


def test_targets_are_the_mean_of_the_teachers_on_clean_images(data_root, teachers):
    train, _ = load_splits(data_root, None, 0)
    ds = TeacherTargets(ClassificationDataset(train, (64, 64), False))
    rec = teacher_probabilities(teachers, ds, 64, 2.0, "cpu")
    x = torch.stack([ds.base[i][0] for i in range(len(ds))])
    want = []
    for p in teachers:
        model, _, _ = load_checkpoint(p)
        with torch.no_grad():
            want.append(torch.softmax(model(x) / 2.0, 1).numpy())
    np.testing.assert_allclose(ds.targets, np.mean(want, 0), atol=1e-5)
    np.testing.assert_allclose(ds.targets.sum(1), 1.0, atol=1e-5)
    assert [t["sha256"] for t in rec["teachers"]] == [checkpoint_sha256(p) for p in teachers]
    assert rec["temperature"] == 2.0 and 0.0 <= rec["mean_train_accuracy"] <= 1.0
    item = ds[0]
    assert len(item) == 3 and item[1].shape == (3,) and int(item[2]) == int(ds.labels[0])


def test_distilled_run_records_its_teachers_and_resumes_exactly(data_root, teachers, tmp_path):
    plain = train_classifier(data_root, tmp_path / "plain", **CLS)
    kw = dict(distill_from=teachers, distill_weight=0.7, distill_temperature=3.0, aux_masks=0.5)
    run = train_classifier(data_root, tmp_path / "d", **kw, **CLS)
    best = read_checkpoint(run.best_checkpoint)
    assert [t["path"] for t in best["extra"]["distill"]["teachers"]] == list(teachers)
    assert best["extra"]["distill"]["temperature"] == 3.0
    assert best["state_dict"].keys() == read_checkpoint(plain.best_checkpoint)["state_dict"].keys()
    assert [h["train_loss"] for h in plain.history] != [h["train_loss"] for h in run.history]

    out = tmp_path / "d-resumed"
    train_classifier(data_root, out, on_epoch_end=lambda rec: rec["epoch"] == 1, **kw, **CLS)
    done = train_classifier(data_root, out, resume=True, **kw, **CLS)
    assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in done.history]


def test_weight_zero_trains_exactly_as_without_a_teacher(data_root, teachers, tmp_path):
    plain = train_classifier(data_root, tmp_path / "plain", **CLS)
    zero = train_classifier(data_root, tmp_path / "zero", distill_from=teachers[:1], distill_weight=0.0, **CLS)
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in zero.history]


@pytest.mark.parametrize("kw, match", [
    (dict(distill_weight=1.5, distill_from=("T",)), "distill-weight"),
    (dict(distill_temperature=0.0, distill_from=("T",)), "distill-temperature"),
    (dict(distill_weight=0.3), "need --distill-from"),
    (dict(distill_from=("missing.pt",)), "teacher checkpoint not found"),
])
def test_bad_options_are_refused_before_any_work(data_root, teachers, tmp_path, kw, match):
    if kw.get("distill_from") == ("T",):
        kw = {**kw, "distill_from": teachers[:1]}
    with pytest.raises(BadInputError, match=match):
        train_classifier(data_root, tmp_path / "x", **kw, **CLS)
    assert not (tmp_path / "x").exists()


def test_a_teacher_of_another_kind_or_size_is_refused(data_root, teachers, tmp_path):
    seg = train_segmenter(data_root, tmp_path / "seg", epochs=1, batch_size=4, image_size=64,
                          base_width=4, depth=2, progress=False, bn_images=0)
    with pytest.raises(IncompatibleModelError, match="not a classifier"):
        train_classifier(data_root, tmp_path / "a", distill_from=[str(seg.best_checkpoint)], **CLS)
    with pytest.raises(IncompatibleModelError, match="input size"):
        train_classifier(data_root, tmp_path / "b", distill_from=teachers[:1], **{**CLS, "image_size": 32})


def test_cli_takes_several_teachers(data_root, teachers, tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["train", "classifier", "--data", str(data_root), "--out", str(out),
                                 "--epochs", "1", "--batch-size", "4", "--image-size", "64",
                                 "--width-mult", "0.125", "--distill-from", teachers[0],
                                 "--distill-from", teachers[1], "--distill-weight", "0.6", "--json"])
    assert r.exit_code == 0, r.output + str(r.exception)
    extra = read_checkpoint(out / "best.pt")["extra"]
    assert len(extra["distill"]["teachers"]) == 2
    assert extra["train_options"]["distill_weight"] == 0.6
    assert json.loads(r.stdout)["task"] == "classifier"
