"""Classification metrics against confusion matrices and values computed by hand."""

from __future__ import annotations

import pytest

from mmfuse.metrics.classification import auroc, classification_report, confusion_matrix


def test_three_class_report_by_hand() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    # true\pred   0  1  2
    #   0         2  1  0
    #   1         0  1  1
    #   2         1  0  3
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    r = classification_report(y_true, y_pred, 3, labels=["cat", "dog", "bird"])
    assert r["accuracy"] == pytest.approx(6 / 9)
    cat, dog, bird = (r["per_class"][k] for k in ("cat", "dog", "bird"))
    assert (cat["precision"], cat["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert (dog["precision"], dog["recall"]) == pytest.approx((1 / 2, 1 / 2))
    assert (bird["precision"], bird["recall"]) == pytest.approx((3 / 4, 3 / 4))
    assert bird["f1"] == pytest.approx(0.75) and bird["support"] == 4
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)


def test_class_never_predicted_has_zero_precision() -> None:
    r = classification_report([0, 1, 1], [0, 0, 0], 2)
    assert r["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["per_class"]["0"]["precision"] == pytest.approx(1 / 3)
    assert "auroc" not in r


def test_auroc_by_hand() -> None:
    # positives score 0.9, 0.4; negatives 0.5, 0.1: pairs won 3 of 4
    assert auroc([1, 0, 1, 0], [0.9, 0.5, 0.4, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    r = classification_report([1, 0, 1, 0], [1, 1, 0, 0], 2, scores=[0.9, 0.5, 0.4, 0.1])
    assert r["auroc"] == pytest.approx(0.75) and r["accuracy"] == 0.5
    with pytest.raises(ValueError):
        auroc([1, 1], [0.2, 0.3])
