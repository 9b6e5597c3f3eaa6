"""Bootstrap AUROC and average precision from resampling counts, without sorting replicates.

A bootstrap replicate of a split draws ``n`` sample indices with replacement. Its AUROC and
average precision depend only on how many times each original sample was drawn (its count)
and on the order of the original scores, so the scores are sorted ONCE per label
(:class:`RankedLabel`); a replicate's drawn positives and negatives per tie group are one
sum over its counts (:meth:`RankedLabel.group_counts`, shared by both metrics), and each
metric is a pass over the groups: O(n) per replicate instead of a sort, O(n log n). The results are the same numbers, bit for bit, as
sorting every resampled row (the definitions below; a test checks it against that reference):

* AUROC = (Σ over positive–negative pairs of 1[s⁺ > s⁻] + ½·1[s⁺ = s⁻]) / (n⁺·n⁻), the
  Mann–Whitney form of the rank-sum formula; numerator and denominator are exact integers or
  halves in float64, so the one division rounds the same way as the rank-sum computation;
* average precision as scikit-learn defines it (tied scores form one threshold): Σ over
  thresholds, highest first, of ΔTP · precision / n⁺. Each threshold's term is placed at the
  position its last sample takes in the sorted replicate, so the float sum runs over the same
  array as a sort-based computation would and rounds identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``idx (b, n)`` drawn indices -> ``(b, n)`` int64: how often each sample is drawn."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n)


class RankedLabel:
    """One label's known samples in ascending score order, with their tie groups."""

    def __init__(self, y: np.ndarray, p: np.ndarray, known: np.ndarray) -> None:
        k = np.flatnonzero(known)
        self.order = k[np.argsort(p[k], kind="stable")]
        v = p[self.order]
        self.starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if len(v) else v[:0]
        self.positive = (y[self.order] == 1).astype(np.int64)

    def group_counts(self, counts: np.ndarray) -> GroupCounts:
        """Per replicate and tie group (ascending): drawn positives and negatives."""
        if not len(self.order):
            empty = np.zeros((counts.shape[0], 0))
            return GroupCounts(empty, empty, counts.shape[1])
        c = counts[:, self.order]
        pos = np.add.reduceat(c * self.positive, self.starts, axis=1)
        neg = np.add.reduceat(c, self.starts, axis=1) - pos
        return GroupCounts(pos.astype(np.float64), neg.astype(np.float64), counts.shape[1])


@dataclass(frozen=True)
class GroupCounts:
    """Drawn positives and negatives per replicate (rows) and tie group (ascending score)."""

    pos: np.ndarray
    neg: np.ndarray
    n: int  # samples per replicate (known or not)


def boot_auroc(groups: GroupCounts) -> np.ndarray:
    """Per-replicate AUROC (NaN where a replicate holds one class only)."""
    pos, neg = groups.pos, groups.neg
    below = np.cumsum(neg, axis=1) - neg  # negatives with a lower score than each group
    n1, n0 = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def boot_average_precision(groups: GroupCounts) -> np.ndarray:
    """Per-replicate average precision (scikit-learn's definition; NaN with one class)."""
    pos, neg = groups.pos[:, ::-1], groups.neg[:, ::-1]  # highest score first
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    b, n = pos.shape[0], groups.n
    size = (pos + neg).astype(np.int64)
    # where each threshold's last sample sits in the sorted replicate; empty groups: column n
    at = np.where(size > 0, np.cumsum(size, axis=1) - 1, n)
    terms = np.zeros((b, n + 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        np.put_along_axis(terms, at, pos * (tp / np.maximum(tp + fp, 1.0)), axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        ap = terms[:, :n].sum(axis=1) / n_pos
    return np.where((n_pos > 0) & (n_neg > 0), ap, np.nan)


__all__ = ["GroupCounts", "RankedLabel", "boot_auroc", "boot_average_precision", "draw_counts"]
