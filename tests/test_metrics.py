"""Metrics against hand-computed confusion matrices, AUCs, Dice/IoU and accumulator summaries."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from covidedge.errors import BadInputError
from covidedge.metrics import (
    SegmentationAccumulator, classification_report, confusion_matrix, dice,
    format_classification_report, format_confusion_matrix, format_segmentation_report,
    infected_fraction, iou, lung_fraction, roc_auc_ovr,
)

LABELS = ["COVID-19", "Non-COVID", "Normal"]
# 10 samples: true 0,0,0,0 | 1,1,1 | 2,2,2
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
CM = [[2, 1, 1],   # true COVID-19: 2 right, 1 called Non-COVID, 1 called Normal
      [1, 2, 0],
      [0, 1, 2]]


# -- classification ---------------------------------------------------------------------------
def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == CM


def test_confusion_matrix_errors():
    with pytest.raises(BadInputError, match=r"class indices 0\.\.3, expected 0\.\.2"):
        confusion_matrix([0, 1, 3], [0, 1, 2], 3)
    with pytest.raises(BadInputError, match=r"y_true has 2 items but y_pred has 3"):
        confusion_matrix([0, 1], [0, 1, 2], 3)
    with pytest.raises(BadInputError, match=r"take argmax"):
        confusion_matrix([0, 1], [0.2, 0.7], 3)


def test_classification_report_by_hand():
    r = classification_report(Y_TRUE, Y_PRED, LABELS)
    assert r["accuracy"] == pytest.approx(6 / 10)
    assert r["confusion_matrix"] == CM
    # precision = diagonal / column sum (3, 4, 3); recall = diagonal / row sum (4, 3, 3)
    expected = {
        "COVID-19": (2 / 3, 2 / 4, 4 / 7, 4),   # f1 = 2*(2/3)*(1/2) / (2/3 + 1/2) = 4/7
        "Non-COVID": (2 / 4, 2 / 3, 4 / 7, 3),
        "Normal": (2 / 3, 2 / 3, 2 / 3, 3),
    }
    for name, (p, rc, f1, n) in expected.items():
        row = r["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, rc, f1))
        assert row["support"] == n
    assert r["macro_avg"]["precision"] == pytest.approx(11 / 18)
    assert r["macro_avg"]["recall"] == pytest.approx(11 / 18)
    assert r["macro_avg"]["f1"] == pytest.approx(38 / 63)
    assert r["weighted_avg"]["precision"] == pytest.approx(37 / 60)  # (4*2/3 + 3*1/2 + 3*2/3) / 10
    assert r["weighted_avg"]["recall"] == pytest.approx(0.6)
    assert r["weighted_avg"]["f1"] == pytest.approx(0.6)             # (4*4/7 + 3*4/7 + 3*2/3) / 10
    assert r["support"] == r["macro_avg"]["support"] == 10
    json.dumps(r)  # JSON-ready


def test_classification_report_accepts_label_names():
    names = [LABELS[i] for i in Y_TRUE]
    preds = [LABELS[i] for i in Y_PRED]
    assert classification_report(names, preds, LABELS) == classification_report(Y_TRUE, Y_PRED, LABELS)
    with pytest.raises(BadInputError, match=r"unknown labels \['Flu'\]"):
        classification_report(["Flu"], ["Normal"], LABELS)


def test_zero_division_is_zero():
    # "Normal" is never predicted (precision 0/0) and never true (recall 0/0).
    r = classification_report([0, 1, 1], [0, 1, 0], LABELS)
    assert r["per_class"]["Normal"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["per_class"]["COVID-19"]["precision"] == pytest.approx(0.5)
    assert r["macro_avg"]["recall"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_empty_report_is_an_error():
    with pytest.raises(BadInputError, match="y_true is empty"):
        classification_report([], [], LABELS)


def test_format_classification_report_layout():
    text = format_classification_report(classification_report(Y_TRUE, Y_PRED, LABELS))
    expected = (
        "              precision    recall  f1-score   support\n"
        "\n"
        "    COVID-19       0.67      0.50      0.57         4\n"
        "   Non-COVID       0.50      0.67      0.57         3\n"
        "      Normal       0.67      0.67      0.67         3\n"
        "\n"
        "    accuracy                           0.60        10\n"
        "   macro avg       0.61      0.61      0.60        10\n"
        "weighted avg       0.62      0.60      0.60        10\n"
    )
    assert text == expected


def test_format_confusion_matrix():
    text = format_confusion_matrix(np.array(CM), LABELS)
    assert text.splitlines() == [
        "true \\ pred   COVID-19  Non-COVID     Normal",
        "COVID-19             2          1          1",
        "Non-COVID            1          2          0",
        "Normal               0          1          2",
    ]
    with pytest.raises(BadInputError, match=r"shape \(3, 3\), expected \(2, 2\)"):
        format_confusion_matrix(np.array(CM), LABELS[:2])


# -- ROC AUC ----------------------------------------------------------------------------------
PROBS = np.array([
    [0.8, 0.1, 0.1],  # true 0
    [0.4, 0.5, 0.1],  # true 0
    [0.4, 0.4, 0.2],  # true 1
    [0.3, 0.3, 0.4],  # true 2
    [0.1, 0.6, 0.3],  # true 1
])
TRUE5 = [0, 0, 1, 2, 1]


def test_roc_auc_by_hand_with_ties():
    auc = roc_auc_ovr(TRUE5, PROBS, LABELS)
    # COVID-19: positives 0.8, 0.4; negatives 0.4, 0.3, 0.1.
    #   0.8 beats 3; 0.4 ties 0.4 (1/2) and beats 2 -> (3 + 2.5) / (2 * 3) = 11/12
    assert auc["COVID-19"] == pytest.approx(11 / 12)
    # Non-COVID: positives 0.4, 0.6; negatives 0.1, 0.5, 0.3 -> (2 + 3) / 6
    assert auc["Non-COVID"] == pytest.approx(5 / 6)
    # Normal: positive 0.4 beats 0.1, 0.1, 0.2, 0.3 -> 1
    assert auc["Normal"] == pytest.approx(1.0)
    assert auc["macro"] == pytest.approx((11 / 12 + 5 / 6 + 1) / 3)
    assert auc.notes == []


def test_roc_auc_extremes():
    y = [0, 0, 1, 1]
    labels = ["a", "b"]
    right = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    assert roc_auc_ovr(y, right, labels)["macro"] == pytest.approx(1.0)
    assert roc_auc_ovr(y, right[:, ::-1], labels)["macro"] == pytest.approx(0.0)
    assert roc_auc_ovr(y, np.full((4, 2), 0.5), labels)["macro"] == pytest.approx(0.5)


def test_roc_auc_class_without_positives_is_nan_with_a_note():
    auc = roc_auc_ovr([0, 0, 1, 1], PROBS[:4], LABELS)
    assert math.isnan(auc["Normal"])
    assert auc.notes == ["AUC for 'Normal' is undefined: no positive samples"]
    assert auc["macro"] == pytest.approx((auc["COVID-19"] + auc["Non-COVID"]) / 2)
    assert not math.isnan(auc["macro"])


def test_roc_auc_shape_errors():
    with pytest.raises(BadInputError, match=r"shape \(5, 2\), expected \(N, 3\)"):
        roc_auc_ovr(TRUE5, PROBS[:, :2], LABELS)
    with pytest.raises(BadInputError, match=r"y_true has 4 items but probabilities have 5 rows"):
        roc_auc_ovr(TRUE5[:4], PROBS, LABELS)


# -- Dice / IoU ---------------------------------------------------------------------------------
P = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
T = np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)
EMPTY = np.zeros((2, 3), dtype=bool)


def test_dice_iou_by_hand():
    # |P & T| = 1, |P| = 2, |T| = 2, |P | T| = 3
    assert dice(P, T) == pytest.approx(2 * 1 / (2 + 2))
    assert iou(P, T) == pytest.approx(1 / 3)
    assert dice(T, T) == 1.0 and iou(T, T) == 1.0


def test_dice_iou_empty_conventions():
    assert dice(EMPTY, EMPTY) is None
    assert iou(EMPTY, EMPTY) is None
    assert dice(P, EMPTY) == 0.0 and dice(EMPTY, T) == 0.0
    assert iou(P, EMPTY) == 0.0 and iou(EMPTY, T) == 0.0


def test_dice_accepts_0_1_arrays_and_rejects_probabilities():
    assert dice(P.astype(np.uint8), T.astype(np.float32)) == pytest.approx(0.5)
    with pytest.raises(BadInputError, match=r"predicted mask is not a binary mask.*threshold"):
        dice(np.full((2, 3), 0.7), T)
    with pytest.raises(BadInputError, match=r"predicted mask has shape \(2, 3\), true mask has \(3, 2\)"):
        dice(P, T.T)


def test_lung_and_infected_fraction():
    lungs = np.zeros((4, 4), dtype=bool)
    lungs[:, :2] = True                   # 8 of 16 px
    inf = np.zeros((4, 4), dtype=bool)
    inf[0, 0] = inf[1, 0] = True          # 2 px inside the lungs
    inf[3, 3] = True                      # 1 px outside: not counted
    assert lung_fraction(lungs) == pytest.approx(0.5)
    assert infected_fraction(inf, lungs) == pytest.approx(2 / 8)
    assert infected_fraction(inf, np.zeros_like(lungs)) == 0.0
    with pytest.raises(BadInputError, match=r"infection mask has shape \(4, 4\), lung mask has \(2, 2\)"):
        infected_fraction(inf, lungs[:2, :2])


# -- accumulator --------------------------------------------------------------------------------
def masks(*pixels, size=4):
    m = np.zeros((size, size), dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return m


LUNGS = masks(*[(r, c) for r in range(4) for c in range(2)])            # columns 0-1: 8 px
WIDE_LUNGS = masks(*[(r, c) for r in range(4) for c in range(3)])       # columns 0-2: 12 px
NONE = masks()


def crafted() -> SegmentationAccumulator:
    acc = SegmentationAccumulator()
    # 1 COVID-19: lungs exact; infection true 2 px, predicted 1 of them.
    acc.update(LUNGS, LUNGS, masks((0, 0)), masks((0, 0), (1, 0)), label="COVID-19", name="c1")
    # 2 COVID-19: predicted lungs too wide; infection true column 0, predicted that + (0, 2).
    col0 = [(r, 0) for r in range(4)]
    acc.update(WIDE_LUNGS, LUNGS, masks(*col0, (0, 2)), masks(*col0), label="COVID-19", name="c2")
    # 3 Normal: 3 false-positive pixels, 2 inside the lungs.
    acc.update(LUNGS, LUNGS, masks((0, 0), (0, 1), (3, 3)), NONE, label="Normal", name="n1")
    # 4 Non-COVID: clean.
    acc.update(LUNGS, LUNGS, NONE, NONE, label="Non-COVID", name="p1")
    return acc


def test_accumulator_by_hand():
    res = crafted().result()
    assert res["images"] == 4
    # lungs: dice 1, 2*8/(12+8) = 0.8, 1, 1; iou 1, 8/12, 1, 1
    assert res["lungs"]["dice"] == pytest.approx((1 + 0.8 + 1 + 1) / 4)
    assert res["lungs"]["iou"] == pytest.approx((1 + 2 / 3 + 1 + 1) / 4)
    assert (res["lungs"]["images"], res["lungs"]["both_empty"]) == (4, 0)
    # infection over COVID-19 only: dice 2*1/3 and 2*4/9; iou 1/2 and 4/5
    assert res["infection"]["dice"] == pytest.approx((2 / 3 + 8 / 9) / 2)
    assert res["infection"]["iou"] == pytest.approx((1 / 2 + 4 / 5) / 2)
    assert (res["infection"]["images"], res["infection"]["both_empty"]) == (2, 0)
    # infection-free: Normal has 3/16 of the image and 2/8 of the lungs; Non-COVID none
    free = res["infection_free"]
    assert free["images"] == 2
    assert free["fp_fraction_of_image"] == pytest.approx((3 / 16 + 0) / 2)
    assert free["fp_fraction_of_lungs"] == pytest.approx((2 / 8 + 0) / 2)
    assert free["images_with_fp"] == pytest.approx(0.5)
    # severity: true 2/8 vs predicted 1/8; true 4/8 vs predicted 5/12 (within the wide lungs)
    sev = res["severity"]
    assert sev["images"] == 2
    assert sev["mae"] == pytest.approx((1 / 8 + 1 / 12) / 2)
    assert sev["mean_true"] == pytest.approx((2 / 8 + 4 / 8) / 2)
    assert sev["mean_pred"] == pytest.approx((1 / 8 + 5 / 12) / 2)
    json.dumps(res)


def test_accumulator_counts_undefined_scores_apart():
    acc = SegmentationAccumulator()
    # a COVID-19 image with an empty true and predicted infection: Dice undefined, not 0 or 1
    acc.update(LUNGS, LUNGS, NONE, NONE, label="COVID-19")
    acc.update(LUNGS, LUNGS, masks((0, 0)), masks((0, 0)), label="COVID-19")
    acc.update(NONE, NONE)  # lung-only image, both lung masks empty
    res = acc.result()
    assert res["infection"] == {"dice": 1.0, "iou": 1.0, "images": 1, "both_empty": 1}
    assert res["lungs"]["both_empty"] == 1 and res["lungs"]["images"] == 2
    assert res["severity"]["images"] == 2 and res["severity"]["mae"] == 0.0


def test_accumulator_without_labels_uses_the_true_mask():
    acc = SegmentationAccumulator()
    acc.update(LUNGS, LUNGS, masks((0, 0)), masks((0, 0), (1, 0)))  # infected -> COVID-19 group
    acc.update(LUNGS, LUNGS, masks((0, 1)), NONE)                    # clean -> false positive
    res = acc.result()
    assert res["infection"]["images"] == 1
    assert res["infection"]["dice"] == pytest.approx(2 / 3)
    assert res["infection_free"]["images_with_fp"] == 1.0
    assert res["infection_free"]["fp_fraction_of_image"] == pytest.approx(1 / 16)


def test_accumulator_empty_gives_none_means():
    res = SegmentationAccumulator().result()
    assert res["lungs"]["dice"] is None and res["severity"]["mae"] is None
    assert "n/a" in format_segmentation_report(res)


def test_accumulator_errors():
    acc = SegmentationAccumulator()
    with pytest.raises(BadInputError, match="only one of pred_infection / true_infection"):
        acc.update(LUNGS, LUNGS, pred_infection=NONE)
    with pytest.raises(BadInputError, match=r"infection masks have shape \(2, 2\), lung masks \(4, 4\)"):
        acc.update(LUNGS, LUNGS, NONE[:2, :2], NONE[:2, :2])
    with pytest.raises(BadInputError, match="threshold probabilities first"):
        acc.update(LUNGS.astype(float) * 0.9, LUNGS)
    assert len(acc) == 0


def test_format_segmentation_report():
    text = crafted().format()
    assert "lungs        0.9500   0.9167       4           0" in text
    assert "infection    0.7778   0.6500       2           0" in text
    assert "fraction of lungs: 12.50%" in text
    assert "images with any false-positive pixel:        50.00%" in text
    assert "mean absolute error: 10.42%" in text  # 5/48


def test_metrics_import_no_torch():
    code = "import sys, covidedge.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
