"""The count-based bootstrap kernels equal a sort-every-replicate computation, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.bootstrap_ranks import (
    RankedLabel,
    boot_auroc,
    boot_average_precision,
    draw_counts,
)
from fusion.ranking import average_precision, roc_auc

# -- the reference: sort each resampled row (the implementation these kernels replace) ------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Row-wise ranks (1-based, ties get their average rank) of a 2-D array."""
    b, n = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    new = np.ones((b, n), dtype=bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    gid = np.cumsum(new, axis=1) - 1 + (np.arange(b) * n)[:, None]
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (b, n))
    sums = np.bincount(gid.ravel(), weights=pos.ravel(), minlength=b * n)
    counts = np.bincount(gid.ravel(), minlength=b * n)
    avg = (sums / np.maximum(counts, 1))[gid]
    ranks = np.empty_like(avg)
    np.put_along_axis(ranks, order, avg, axis=1)
    return ranks


def _boot_auroc(y: np.ndarray, p: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per-row AUROC of 0/1 ``y`` vs ``p`` over the ``known`` entries (NaN: one class only)."""
    pk = np.where(known, p, np.inf)  # unknowns rank last and are never counted
    ranks = _average_ranks(pk)
    pos = known & (y == 1)
    n1 = pos.sum(axis=1).astype(np.float64)
    n0 = (known & (y == 0)).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def _boot_ap(y: np.ndarray, p: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per-row average precision (scikit-learn's definition, ties as one threshold)."""
    b, n = p.shape
    pk = np.where(known, p, -np.inf)
    order = np.argsort(-pk, axis=1, kind="stable")
    v = np.take_along_axis(pk, order, axis=1)
    k = np.take_along_axis(known, order, axis=1)
    pos = np.take_along_axis(known & (y == 1), order, axis=1)
    tp = np.cumsum(pos, axis=1).astype(np.float64)
    fp = np.cumsum(k & ~pos, axis=1).astype(np.float64)
    end = np.ones((b, n), dtype=bool)  # last entry of each tie group among known entries
    end[:, :-1] = v[:, :-1] != v[:, 1:]
    end &= k
    last_end_tp = np.maximum.accumulate(np.where(end, tp, 0.0), axis=1)
    prev_end_tp = np.zeros_like(tp)
    prev_end_tp[:, 1:] = last_end_tp[:, :-1]
    n_pos = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / np.maximum(tp + fp, 1.0)
        ap = (np.where(end, (tp - prev_end_tp) * precision, 0.0)).sum(axis=1) / n_pos
    n_neg = fp[:, -1]
    return np.where((n_pos > 0) & (n_neg > 0), ap, np.nan)


def _case(rng: np.random.Generator, n: int, ties: bool, unknown: float, pos_rate: float):
    p = rng.random(n)
    if ties:  # few distinct scores: many tie groups
        p = np.round(p * 7) / 7
    y = (rng.random(n) < pos_rate).astype(np.float64)
    known = rng.random(n) >= unknown
    return y, p, known


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("unknown", [0.0, 0.3])
@pytest.mark.parametrize("n,pos_rate", [(60, 0.1), (101, 0.5), (7, 0.4)])
def test_kernels_equal_sorting_every_replicate(ties, unknown, n, pos_rate) -> None:
    rng = np.random.default_rng(n + int(ties) + int(10 * unknown))
    y, p, known = _case(rng, n, ties, unknown, pos_rate)
    idx = rng.integers(0, n, size=(300, n))
    counts = draw_counts(idx, n)
    assert counts.shape == (300, n) and (counts.sum(axis=1) == n).all()
    label = RankedLabel(y, p, known)
    yb = np.where(known, y, 0).astype(np.int64)[idx]
    want_auc = _boot_auroc(yb, p[idx], known[idx])
    want_ap = _boot_ap(yb, p[idx], known[idx])
    groups = label.group_counts(counts)
    got_auc, got_ap = boot_auroc(groups), boot_average_precision(groups)
    # bit for bit, NaN (a replicate with one class) where the reference has NaN
    assert np.array_equal(got_auc, want_auc, equal_nan=True)
    assert np.array_equal(got_ap, want_ap, equal_nan=True)
    if n == 7:  # tiny splits: some replicates hold one class only
        assert np.isnan(got_auc).any()


def test_kernels_match_the_plain_metrics_on_one_replicate() -> None:
    rng = np.random.default_rng(3)
    y, p, known = _case(rng, 80, True, 0.2, 0.3)
    idx = rng.integers(0, 80, size=(1, 80))
    label = RankedLabel(y, p, known)
    counts = draw_counts(idx, 80)
    k = known[idx[0]]
    yr, pr = y[idx[0]][k], p[idx[0]][k]
    assert boot_auroc(label.group_counts(counts))[0] == pytest.approx(roc_auc(yr, pr), abs=1e-12)
    assert boot_average_precision(label.group_counts(counts))[0] == pytest.approx(
        average_precision(yr, pr), abs=1e-12
    )


def test_label_without_known_samples_is_nan() -> None:
    label = RankedLabel(np.zeros(5), np.linspace(0, 1, 5), np.zeros(5, dtype=bool))
    counts = draw_counts(np.zeros((4, 5), dtype=np.int64), 5)
    groups = label.group_counts(counts)
    assert np.isnan(boot_auroc(groups)).all()
    assert np.isnan(boot_average_precision(groups)).all()
