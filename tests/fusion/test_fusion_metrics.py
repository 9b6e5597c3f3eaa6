"""Metrics: thresholds from validation, skipped labels, agreement with scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from fusion.metrics import best_f1_threshold, choose_thresholds, evaluate_split


def test_threshold_is_chosen_on_validation_and_applied_to_test() -> None:
    # On val, positives score 0.7-0.9 and negatives 0.1-0.6: best F1 threshold is 0.7.
    y_val = np.array([[1], [1], [1], [0], [0], [0], [0]], dtype=float)
    p_val = np.array([[0.9], [0.8], [0.7], [0.6], [0.3], [0.2], [0.1]])
    thr = choose_thresholds(y_val, p_val, ["a"])
    assert thr == {"a": pytest.approx(0.7)}
    # On test, a 0.5 threshold would be perfect, but the val threshold must be used.
    y_test = np.array([[1], [1], [0], [0]], dtype=float)
    p_test = np.array([[0.65], [0.95], [0.3], [0.2]])
    m = evaluate_split(y_test, p_test, "binary", ["a"], thr)
    pred = p_test[:, 0] >= thr["a"]
    assert m.per_label["a"]["f1"] == pytest.approx(f1_score(y_test[:, 0], pred))
    assert m.per_label["a"]["f1"] == pytest.approx(2 / 3)
    assert m.per_label["a"]["accuracy"] == pytest.approx(0.75)
    assert m.per_label["a"]["auroc"] == 1.0


def test_best_threshold_maximises_f1() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    p = np.clip(0.3 * y + rng.random(200) * 0.8, 0, 1)
    t = best_f1_threshold(y, p)

    def f1(pred: np.ndarray) -> float:
        tp = np.sum(pred & y)
        return 2 * tp / (2 * tp + np.sum(pred & ~y) + np.sum(~pred & y))

    best = max(f1(p >= c) for c in np.unique(p))
    assert f1_score(y, p >= t) == pytest.approx(best)
    assert best_f1_threshold(np.zeros(5, bool), rng.random(5)) == 0.5


def test_skipped_labels_are_named_and_not_averaged() -> None:
    rng = np.random.default_rng(1)
    n = 60
    y = np.stack(
        [rng.random(n) < 0.4, np.zeros(n, bool), rng.random(n) < 0.5, np.ones(n, bool)], axis=1
    ).astype(float)
    p = rng.random((n, 4))
    m = evaluate_split(y, p, "multilabel", ["a", "none_pos", "b", "none_neg"], n_no_modality=3)
    assert m.skipped_labels == ["none_pos", "none_neg"]
    assert set(m.per_label["none_pos"]) == {"n", "n_pos"}
    for key in ("auroc", "auprc", "f1", "accuracy"):
        assert np.isfinite(m.macro[key])
        assert m.macro[key] == pytest.approx((m.per_label["a"][key] + m.per_label["b"][key]) / 2)
    assert m.macro["macro_f1"] == m.macro["f1"]
    assert m.n == n and m.n_no_modality == 3
    json.dumps(m.to_dict(), allow_nan=False)  # never NaN


def test_auroc_auprc_match_sklearn_and_unknown_labels_ignored() -> None:
    rng = np.random.default_rng(2)
    n = 300
    y = (rng.random((n, 3)) < [0.2, 0.5, 0.7]).astype(float)
    p = np.clip(y * 0.3 + rng.random((n, 3)) * 0.7, 0, 1)
    y[:20, 1] = np.nan  # unknown
    m = evaluate_split(y, p, "binary", ["x", "y", "z"], {"x": 0.5, "y": 0.4, "z": 0.6})
    for j, name in enumerate(["x", "y", "z"]):
        k = np.isfinite(y[:, j])
        assert m.per_label[name]["auroc"] == pytest.approx(roc_auc_score(y[k, j], p[k, j]))
        assert m.per_label[name]["auprc"] == pytest.approx(
            average_precision_score(y[k, j], p[k, j])
        )
    assert m.per_label["y"]["n"] == n - 20
    assert m.macro["auroc"] == pytest.approx(np.mean([m.per_label[c]["auroc"] for c in "xyz"]))
    assert m.skipped_labels == []
    # macro_f1 is sklearn's macro F1 of the thresholded label matrix
    k = np.isfinite(y).all(1)
    pred = p >= np.array([0.5, 0.4, 0.6])
    assert m.macro["macro_f1"] == pytest.approx(m.macro["f1"])
    m_known = evaluate_split(y[k], p[k], "binary", ["x", "y", "z"], {"x": 0.5, "y": 0.4, "z": 0.6})
    assert m_known.macro["macro_f1"] == pytest.approx(f1_score(y[k], pred[k], average="macro"))


def test_single_binary_task_macro_f1_is_over_both_classes() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(200) < 0.85).astype(float)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    m = evaluate_split(y[:, None], p[:, None], "binary", ["alive"], {"alive": 0.4})
    pred = p >= 0.4
    assert m.macro["f1"] == pytest.approx(f1_score(y, pred))
    assert m.macro["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m.macro["macro_f1"] < m.macro["f1"]


def test_multiclass_metrics() -> None:
    rng = np.random.default_rng(3)
    n = 200
    y = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y[:5] = -1  # unknown
    m = evaluate_split(y, p, "multiclass", ["g_a", "g_b", "g_c"])
    k = y >= 0
    assert m.macro["auroc"] == pytest.approx(
        roc_auc_score(y[k], p[k], multi_class="ovr", average="macro")
    )
    assert m.macro["f1"] == pytest.approx(f1_score(y[k], p[k].argmax(1), average="macro"))
    assert m.macro["macro_f1"] == m.macro["f1"]
    assert m.macro["accuracy"] == pytest.approx(np.mean(p[k].argmax(1) == y[k]))
    # a class absent from the split is skipped, not NaN-averaged
    y2 = np.where(y == 2, 0, y)
    m2 = evaluate_split(y2, p, "multiclass", ["g_a", "g_b", "g_c"])
    assert m2.skipped_labels == ["g_c"]
    assert np.isfinite(list(m2.macro.values())).all()


def test_brier_and_ece_by_hand() -> None:
    from fusion.metrics import (
        brier_score,
        expected_calibration_error,
        multiclass_brier,
        top_label_ece,
    )

    y = np.array([1, 0, 1, 1, 0])
    p = np.array([0.9, 0.2, 0.55, 0.61, 0.58])
    assert brier_score(y, p) == pytest.approx((0.01 + 0.04 + 0.2025 + 0.1521 + 0.3364) / 5)
    # 15 bins of width 1/15: 0.9 -> bin 13; 0.2 -> bin 3; 0.55, 0.58 -> bin 8; 0.61 -> bin 9
    ece = (abs(1 - 0.9) + abs(0 - 0.2) + abs((1 - 0.55) + (0 - 0.58)) + abs(1 - 0.61)) / 5
    assert expected_calibration_error(y, p) == pytest.approx(ece)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
    yc = np.array([0, 2, 1])
    pc = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    assert multiclass_brier(yc, pc) == pytest.approx(
        ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.3**2 + 0.4**2) + (0.5**2 + 0.6**2 + 0.1**2)) / 3
    )
    # confidences 0.7 (right, bin 10), 0.6 (right, bin 9), 0.5 (wrong, bin 7)
    assert top_label_ece(yc, pc) == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    m = evaluate_split(y[:, None].astype(float), p[:, None], "binary", ["a"], {"a": 0.5})
    assert m.macro["brier"] == pytest.approx(brier_score(y, p))
    assert m.macro["ece"] == pytest.approx(ece)


def _loop_bootstrap(y, p, thr, n_boot, seed):
    """The same replicates with scikit-learn, one at a time."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(n_boot, len(p)))
    out = {"auroc": [], "auprc": [], "f1": [], "brier": []}
    for r in idx:
        yr, pr = y[r], p[r]
        if yr.all() or not yr.any():
            continue
        out["auroc"].append(roc_auc_score(yr, pr))
        out["auprc"].append(average_precision_score(yr, pr))
        out["f1"].append(f1_score(yr, pr >= thr, zero_division=0))
        out["brier"].append(np.mean((pr - yr) ** 2))
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in out.items()}


def test_bootstrap_ci_matches_a_replicate_by_replicate_computation() -> None:
    from fusion.metrics import bootstrap_ci

    rng = np.random.default_rng(5)
    n = 60
    y = (rng.random(n) < 0.3).astype(int)
    p = np.round(np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1), 2)  # with ties
    ci = bootstrap_ci(y[:, None].astype(float), p[:, None], "multilabel", ["a"], {"a": 0.45},
                      n_boot=300, seed=3, chunk=300)  # fmt: skip
    ref = _loop_bootstrap(y, p, 0.45, 300, 3)
    for key in ("auroc", "auprc", "f1", "brier"):
        np.testing.assert_allclose(ci["per_label"]["a"][key], ref[key], rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(ci["macro"][key], ref[key], rtol=1e-9, err_msg=key)
    point = evaluate_split(y[:, None].astype(float), p[:, None], "multilabel", ["a"], {"a": 0.45})
    for key in ("auroc", "auprc", "brier", "ece"):
        lo, hi = ci["macro"][key]
        assert lo <= point.macro[key] <= hi
    again = bootstrap_ci(y[:, None].astype(float), p[:, None], "multilabel", ["a"], {"a": 0.45},
                         n_boot=300, seed=3, chunk=300)  # fmt: skip
    assert again == ci


def test_bootstrap_skips_labels_without_positives_and_handles_multiclass() -> None:
    from fusion.metrics import bootstrap_ci

    rng = np.random.default_rng(6)
    n = 80
    y = np.stack([rng.random(n) < 0.4, np.zeros(n, bool)], axis=1).astype(float)
    y[:5, 0] = np.nan
    p = rng.random((n, 2))
    m = evaluate_split(y, p, "multilabel", ["a", "never"])
    ci = bootstrap_ci(y, p, "multilabel", ["a", "never"], n_boot=100, skip=m.skipped_labels)
    assert set(ci["per_label"]) == {"a"} and "auroc" in ci["macro"]
    json.dumps(ci, allow_nan=False)
    yc = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2 * np.eye(3)[yc]
    pc = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cic = bootstrap_ci(yc, pc, "multiclass", ["x", "y", "z"], n_boot=200)
    point = evaluate_split(yc, pc, "multiclass", ["x", "y", "z"])
    for key in ("auroc", "accuracy", "brier", "ece", "macro_f1"):
        lo, hi = cic["macro"][key]
        assert lo <= point.macro[key] <= hi, key


@pytest.mark.parametrize("ties", [False, True])
def test_numpy_ranking_metrics_equal_scikit_learn(ties: bool) -> None:
    from sklearn import metrics as skm

    from fusion.ranking import average_precision, precision_recall_curve, roc_auc

    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(5, 300))
        y = rng.random(n) < rng.uniform(0.05, 0.9)
        if y.all() or not y.any():
            y[0] = not y[0]
        p = rng.random(n) + 0.8 * y * rng.random()
        if ties:
            p = np.round(p, 1)
        assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12), trial
        assert average_precision(y, p) == pytest.approx(
            skm.average_precision_score(y, p), abs=1e-12
        ), trial
        for ours, theirs in zip(
            precision_recall_curve(y, p), skm.precision_recall_curve(y, p), strict=True
        ):
            np.testing.assert_allclose(ours, theirs, atol=1e-12)
    with pytest.raises(ValueError, match="one class"):
        roc_auc(np.ones(4), np.arange(4.0))
