"""Datasets that would silently give wrong numbers (issue 22, items 21 and 22): splits or classes
that are one folder or share files through links are refused; ground-truth masks that are empty,
full or lossy are scored with a warning in the report."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from covidedge.data.covidqu import CovidQuDataset
from covidedge.data.quality import check_ground_truth_mask
from covidedge.data.synth import make_synthetic_dataset
from covidedge.errors import DatasetError


@pytest.fixture()
def data(tmp_path):
    return make_synthetic_dataset(tmp_path / "data", per_class=2, size=32, splits=("Train", "Val"))


def _split(root, name):
    return CovidQuDataset(root)._split_paths[name]


def test_a_split_linked_to_another_is_refused(data):
    val = _split(data, "Val")
    shutil.rmtree(val)
    val.symlink_to(_split(data, "Train"), target_is_directory=True)
    with pytest.raises(DatasetError, match="split folder Val and the split folder Train are the same folder"):
        CovidQuDataset(data)


def test_a_class_linked_to_another_is_refused(data):
    train = _split(data, "Train")
    shutil.rmtree(train / "Normal")
    (train / "Normal").symlink_to(train / "COVID-19", target_is_directory=True)
    with pytest.raises(DatasetError, match="class folder Train/Normal and the class folder Train/COVID-19"):
        CovidQuDataset(data)


def test_one_file_linked_into_another_class_or_split_is_refused(data):
    train = _split(data, "Train")
    src = sorted((train / "COVID-19" / "images").iterdir())[0]
    dst = _split(data, "Val") / "Normal" / "images" / "zz_linked.png"
    dst.symlink_to(src)
    with pytest.raises(DatasetError, match="is the same file as"):
        CovidQuDataset(data)
    dst.unlink()
    os.link(src, dst)  # a hard link is the same file too
    with pytest.raises(DatasetError, match="is the same file as"):
        CovidQuDataset(data)
    dst.unlink()
    CovidQuDataset(data)  # a clean dataset is accepted


def test_ground_truth_mask_checks():
    m = np.zeros((8, 8), np.float32)
    assert [p.split(":")[0] for p in check_ground_truth_mask(m)] == ["empty"]
    assert check_ground_truth_mask(m, may_be_empty=True) == []
    assert [p.split(":")[0] for p in check_ground_truth_mask(np.ones((8, 8)))] == ["full"]
    m[2:6, 2:6] = 1.0
    assert check_ground_truth_mask(m) == []
    m[1, 1] = 0.5
    assert [p.split(":")[0] for p in check_ground_truth_mask(m)] == ["lossy"]


def test_evaluate_warns_about_empty_full_and_lossy_masks(data, tmp_path):
    from covidedge.evaluation import evaluate
    from tests.graphs import tiny_segmenter_onnx

    seg = tmp_path / "seg.onnx"
    tiny_segmenter_onnx(seg, size=32)
    val = _split(data, "Val")
    masks = sorted((val / "COVID-19" / "lung masks").iterdir())
    h, w = np.asarray(Image.open(masks[0])).shape[:2]
    Image.fromarray(np.zeros((h, w), np.uint8)).save(masks[0])  # empty lung mask
    lossy = np.asarray(Image.open(masks[1]).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(lossy).save(buf, format="JPEG", quality=70)
    masks[1].write_bytes(buf.getvalue())  # JPEG bytes under .png
    full = sorted((val / "Normal" / "lung masks").iterdir())[0]
    Image.fromarray(np.full((h, w), 255, np.uint8)).save(full)
    report = evaluate(seg, data, split="Val", progress=False)
    warned = report.settings["mask_warnings"]
    assert any(str(masks[0]) in w and "empty" in w for w in warned)
    assert any(str(masks[1]) in w and "JPEG bytes under .png" in w for w in warned)
    assert any(str(full) in w and "full" in w for w in warned)
    assert "warning: 3 ground-truth mask problems" in report.to_text()
    assert "warning: 3 ground-truth mask problems" in report.to_markdown()
