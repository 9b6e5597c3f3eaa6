"""Ranking metrics for binary labels in plain numpy: ROC AUC, average precision, PR curve.

The same definitions and numbers as scikit-learn's ``roc_auc_score``,
``average_precision_score`` and ``precision_recall_curve`` (tests/fusion/test_fusion_metrics.py
compares them on tied and untied scores). They live here so that a training job, which
computes them once per seed and bootstrap replicate, does not import scikit-learn: that import
alone costs ~2 s of every one of the demo's ~150 fusion jobs.
"""

from __future__ import annotations

import numpy as np


def binary_clf_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, ...]:
    """(false positives, true positives, thresholds) at each distinct score, descending."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")[::-1]
    score, y = score[order], y[order]
    distinct = np.flatnonzero(np.diff(score))
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[idx]
    fps = 1.0 + idx - tps
    return fps, tps, score[idx]


def _check(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise ValueError("only one class present in y: the metric is undefined")
    return y


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), as ``roc_auc_score``."""
    fps, tps, _ = binary_clf_curve(_check(y), score)
    fpr = np.r_[0.0, fps] / fps[-1]
    tpr = np.r_[0.0, tps] / tps[-1]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)  # trapezoids


def precision_recall_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, ...]:
    """(precision, recall, thresholds) as scikit-learn returns them: increasing thresholds,
    precision 1 and recall 0 appended."""
    fps, tps, thr = binary_clf_curve(y, score)
    ps = tps + fps
    precision = np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0)
    recall = np.ones_like(tps) if tps[-1] == 0 else tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Σ (R_n − R_{n−1}) P_n over the thresholds, as ``average_precision_score``."""
    precision, recall, _ = precision_recall_curve(_check(y), score)
    return float(-np.sum(np.diff(recall) * precision[:-1]))
