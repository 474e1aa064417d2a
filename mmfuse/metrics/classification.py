"""Classification metrics for the image + text classifier task.

Accuracy, per-class and macro precision / recall / F1, the confusion matrix (rows: true class,
columns: predicted class) and, for two classes, AUROC from the positive-class probability.
A class that is never predicted has precision 0 (and never present, recall 0), as scikit-learn
reports with ``zero_division=0``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) counts: ``m[t, p]`` = samples of true class t predicted as p."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
                          scores: Sequence[float] | None = None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """All classification metrics as a JSON-ready dict.

    Args:
        y_true, y_pred: class indices in ``[0, num_classes)``.
        num_classes: C.
        scores: for C = 2, the predicted probability of class 1 (enables AUROC).
        labels: class names (default: the indices as strings).
    """
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError("y_true and y_pred must be non-empty and of the same length")
    m = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(m).astype(float)
    predicted, actual = m.sum(0).astype(float), m.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    names = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
    report: dict[str, Any] = {
        "accuracy": float(tp.sum() / m.sum()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(names, precision, recall, f1, actual)},
        "confusion_matrix": m.tolist(),
    }
    if num_classes == 2 and scores is not None:
        report["auroc"] = auroc(y_true, scores)
    return report


def auroc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative
    (ties count one half), computed from average ranks (Mann-Whitney U)."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=float)
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both classes in y_true")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))
