"""Dataset checks: a split without images of a class is refused unless explicitly allowed (and
then recorded), and a mask whose size differs from its image is refused, naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from covidedge.data.covidqu import CovidQuDataset
from covidedge.data.imageio import write_png
from covidedge.data.synth import make_synthetic_dataset
from covidedge.errors import EXIT_DATASET, DatasetError
from covidedge.backends.base import Runner
from covidedge.spec import classifier_spec

SIZE = 32


@pytest.fixture(scope="module")
def full_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("full"), per_class=2, size=SIZE,
                                  splits=("Train", "Val"))


def _without(full_root: Path, tmp_path: Path, split: str, label: str, how: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(full_root, root)
    images = next(root.rglob(f"{split}/{label}/images"))
    if how == "missing":
        shutil.rmtree(images.parent)
    else:  # an empty images folder
        for f in images.iterdir():
            f.unlink()
    return root


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_split_without_a_class_is_refused_unless_allowed(full_root, tmp_path, how):
    root = _without(full_root, tmp_path, "Val", "Normal", how)
    ds = CovidQuDataset(root)
    assert ds.check_classes("Train") == []
    with pytest.raises(DatasetError) as info:
        ds.check_classes("Val")
    text = str(info.value)
    assert "\n" not in text and info.value.exit_code == EXIT_DATASET
    assert "Val" in text and "Normal" in text and "--allow-missing-classes" in text
    assert ds.check_classes("Val", allow_missing=True) == ["Normal"]


class ConstantClassifier(Runner):
    """Says COVID-19 with probability 0.6 for every image."""

    backend = "constant"

    def __init__(self):
        super().__init__(classifier_spec(input_size=(SIZE, SIZE)), "constant-model")

    def _activate(self):
        pass

    def _infer(self, x):
        p = np.tile(np.array([[0.6, 0.3, 0.1]], np.float32), (x.shape[0], 1))
        return {"logits": np.log(p), "probabilities": p}


def test_evaluate_refuses_a_missing_class_and_records_it_when_allowed(full_root, tmp_path):
    from covidedge.evaluation import evaluate

    root = _without(full_root, tmp_path, "Val", "Non-COVID", "missing")
    with pytest.raises(DatasetError, match="Non-COVID"):
        evaluate(ConstantClassifier(), root, "Val", progress=False)
    report = evaluate(ConstantClassifier(), root, "Val", progress=False, allow_missing_classes=True)
    assert report.settings["missing_classes"] == ["Non-COVID"]
    assert report.to_dict()["settings"]["missing_classes"] == ["Non-COVID"]
    assert "classes without images (allowed): Non-COVID" in report.to_text()
    assert "classes without images (allowed): Non-COVID" in report.to_markdown()


def test_evaluate_cli_exit_code_for_a_missing_class(full_root, tmp_path):
    from covidedge.cli.main import main

    root = _without(full_root, tmp_path, "Val", "Normal", "empty")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path / "absent-model.onnx"), "--data", str(root)])
    assert exit_.value.code == 2  # the model path is checked by click first
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the dataset is refused first")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(model), "--data", str(root)])
    assert exit_.value.code == EXIT_DATASET


def test_training_refuses_a_missing_class_and_records_it_when_allowed(full_root, tmp_path):
    pytest.importorskip("torch")
    from covidedge.formats.checkpoint import read_checkpoint
    from covidedge.train.loop import train_classifier

    root = _without(full_root, tmp_path, "Train", "Normal", "missing")
    opts = dict(epochs=1, batch_size=4, image_size=SIZE, width_mult=0.125, progress=False)
    with pytest.raises(DatasetError, match="Train has no images of the class Normal"):
        train_classifier(root, tmp_path / "refused", **opts)
    run = train_classifier(root, tmp_path / "allowed", allow_missing_classes=True, **opts)
    extra = read_checkpoint(run.best_checkpoint)["extra"]
    assert extra["train_options"]["allow_missing_classes"] is True
    assert extra["train_options"]["missing_classes"] == {"Train": ["Normal"]}


# ---------------------------------------------------------------------------------------------
# Masks of another size than their image
# ---------------------------------------------------------------------------------------------
def _with_bad_mask(full_root: Path, tmp_path: Path, kind: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(full_root, root)
    mask = sorted(next(root.rglob(f"Val/COVID-19/{kind}")).iterdir())[0]
    write_png(mask, np.ones((SIZE + 8, SIZE), bool))
    return mask


@pytest.mark.parametrize("kind", ["lung masks", "infection masks"])
def test_segmentation_dataset_refuses_a_mask_of_another_size(full_root, tmp_path, kind):
    from covidedge.train.datasets import SegmentationDataset

    mask = _with_bad_mask(full_root, tmp_path, kind)
    samples = CovidQuDataset(mask.parents[3]).samples("Val")
    with pytest.raises(DatasetError) as info:
        SegmentationDataset(samples, size=(16, 16), progress=False)
    text = str(info.value)
    assert text.startswith(str(mask)) and "\n" not in text
    assert f"{SIZE}x{SIZE + 8} px" in text and f"is {SIZE}x{SIZE} px" in text
    assert info.value.exit_code == EXIT_DATASET


def test_segmenter_evaluation_refuses_a_mask_of_another_size(full_root, tmp_path):
    from covidedge.evaluation import evaluate
    from covidedge.spec import segmenter_spec

    class EmptySegmenter(Runner):
        backend = "constant"

        def __init__(self):
            super().__init__(segmenter_spec(input_size=(SIZE, SIZE)), "constant-seg")

        def _activate(self):
            pass

        def _infer(self, x):
            p = np.zeros((x.shape[0], 2, SIZE, SIZE), np.float32)
            return {"logits": p - 5.0, "probabilities": p}

    mask = _with_bad_mask(full_root, tmp_path, "lung masks")
    with pytest.raises(DatasetError) as info:
        evaluate(EmptySegmenter(), mask.parents[4], "Val", progress=False)
    assert str(info.value).startswith(str(mask))


def test_train_cli_exit_code_for_a_missing_class(full_root, tmp_path):
    pytest.importorskip("torch")
    from covidedge.cli.main import main

    root = _without(full_root, tmp_path, "Val", "COVID-19", "missing")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "classifier", "--data", str(root), "--out", str(tmp_path / "run"),
              "--epochs", "1", "--image-size", str(SIZE), "--width-mult", "0.125"])
    assert exit_.value.code == EXIT_DATASET
    assert not (tmp_path / "run" / "best.pt").exists()
