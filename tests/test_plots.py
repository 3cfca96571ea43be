"""Plots write real, non-blank PNG files and reject tables they cannot draw."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from covidedge.errors import BadInputError  # noqa: E402
from covidedge.plots import (  # noqa: E402
    plot_bars, plot_confusion_matrix, plot_latency_bars, plot_learning_curves)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"epoch": 1, "train_loss": 1.00, "val_loss": 0.95, "train_accuracy": 0.50, "val_accuracy": 0.55},
    {"epoch": 2, "train_loss": 0.70, "val_loss": 0.72, "train_accuracy": 0.68, "val_accuracy": 0.71},
    {"epoch": 3, "train_loss": 0.55, "val_loss": 0.66, "train_accuracy": 0.77, "val_accuracy": 0.78},
    {"epoch": 4, "train_loss": 0.45, "val_loss": 0.69, "train_accuracy": 0.83, "val_accuracy": 0.76},
]


def assert_png(path, min_bytes=8_000, min_size=(300, 200)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1]
        pixels = np.asarray(im.convert("L"), dtype=float)
    # not a blank canvas: plenty of non-white pixels and some variation
    assert pixels.std() > 5
    assert (pixels < 200).mean() > 0.01
    return pixels


def test_learning_curves(tmp_path):
    out = plot_learning_curves(HISTORY, tmp_path / "sub" / "curves.png", title="classifier")
    assert out == tmp_path / "sub" / "curves.png"
    px = assert_png(out, min_size=(900, 350))
    assert px.shape == (400, 1000)  # 10 x 4 in at 100 dpi


def test_learning_curves_nested_history_and_named_metric(tmp_path):
    nested = [{"epoch": i, "train": {"loss": 1 / i}, "val": {"loss": 1.2 / i, "dice": 0.2 * i}}
              for i in range(1, 4)]
    assert_png(plot_learning_curves(nested, tmp_path / "seg.png", metric="dice"))


def test_learning_curves_loss_only(tmp_path):
    rows = [{"train_loss": 0.9}, {"train_loss": 0.5}, {"train_loss": 0.4}]  # no epoch, no metric
    assert_png(plot_learning_curves(rows, tmp_path / "loss.png"))


def test_best_epoch_changes_the_picture(tmp_path):
    a = plot_learning_curves(HISTORY, tmp_path / "a.png")            # best = epoch 3 (val acc)
    b = plot_learning_curves(HISTORY, tmp_path / "b.png", best_epoch=1)
    assert a.read_bytes() != b.read_bytes()


def test_learning_curve_errors(tmp_path):
    with pytest.raises(BadInputError, match="history is empty"):
        plot_learning_curves([], tmp_path / "x.png")
    with pytest.raises(BadInputError, match="no 'train_loss' or 'val_loss'"):
        plot_learning_curves([{"epoch": 1, "val_accuracy": 0.5}], tmp_path / "x.png")
    with pytest.raises(BadInputError, match=r"no 'val_iou' or 'train_iou'.*val_accuracy"):
        plot_learning_curves(HISTORY, tmp_path / "x.png", metric="iou")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix(tmp_path, normalize):
    cm = np.array([[50, 3, 2], [4, 40, 6], [0, 5, 45]])
    out = plot_confusion_matrix(cm, ["COVID-19", "Non-COVID", "Normal"], tmp_path / "cm.png",
                                normalize=normalize)
    assert_png(out, min_size=(400, 350))


def test_confusion_matrix_label_mismatch(tmp_path):
    with pytest.raises(BadInputError, match=r"shape \(2, 2\), expected \(3, 3\)"):
        plot_confusion_matrix(np.eye(2), ["a", "b", "c"], tmp_path / "cm.png")


def test_grouped_bars(tmp_path):
    rows = [
        {"loss": "bce", "lung_dice": 0.95, "infection_dice": 0.71},
        {"loss": "dice", "lung_dice": 0.96, "infection_dice": 0.78},
        {"loss": "focal_tversky", "lung_dice": 0.95, "infection_dice": None},  # missing: a gap
    ]
    out = plot_bars(rows, "loss", ["lung_dice", "infection_dice"], tmp_path / "bars.png",
                    title="loss study")
    assert_png(out, min_bytes=5_000)
    single = plot_bars(rows, "loss", "lung_dice", tmp_path / "one.png", title="lungs")
    assert_png(single, min_bytes=5_000)


def test_bars_errors(tmp_path):
    with pytest.raises(BadInputError, match="no rows"):
        plot_bars([], "x", "y", tmp_path / "b.png", "t")
    with pytest.raises(BadInputError, match=r"no column\(s\) \['ms'\]; columns: \['backend', 'fps'\]"):
        plot_bars([{"backend": "ort", "fps": 10}], "backend", ["ms"], tmp_path / "b.png", "t")
    with pytest.raises(BadInputError, match="hold no numeric values"):
        plot_bars([{"backend": "ort", "ms": "n/a"}], "backend", "ms", tmp_path / "b.png", "t")


def test_importing_plots_does_not_load_matplotlib():
    code = "import sys, covidedge.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_latency_bars(tmp_path):
    labels = ["cls\nonnxruntime fp32 b1", "cls\nonnxruntime int8 b1", "cls\nopenvino fp32 b8"]
    out = plot_latency_bars(labels, [4.5, 1.8, float("nan")], [222.0, 555.0, 410.0],
                            tmp_path / "bench.png", title="bench")
    assert_png(out, min_bytes=5_000, min_size=(1000, 250))
    with pytest.raises(BadInputError, match="3 labels but 2 ms"):
        plot_latency_bars(labels, [1.0, 2.0], [1.0, 2.0, 3.0], tmp_path / "x.png")
    with pytest.raises(BadInputError, match="no measurements"):
        plot_latency_bars([], [], [], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_every_figure_is_drawn_in_covidedge_plots():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "covidedge"
    drawing = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "matplotlib" or n.startswith("matplotlib.") for n in names):
                drawing.append(path.relative_to(package).as_posix())
    assert sorted(set(drawing)) == ["plots.py"]
