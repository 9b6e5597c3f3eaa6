"""Paired test-bootstrap intervals of AUROC differences (fusion.paired): exact zero against
itself, power and coverage on synthetic predictions, equality with a slow scikit-learn
reference on the same resamples, single-class resamples skipped and counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import fusion.paired as paired
from cohorts.manifest import ManifestMeta, write_manifest
from fusion.paired import dataset_deltas, paired_auroc_delta, weighted_auroc


def slow_reference(y, pa, pb, task_type, n_boot, seed, level=0.95):
    """Resample indices drawn as the module documents, then a loop with roc_auc_score: per
    resample and label, mean over seeds of A minus mean over seeds of B; labels with one class
    in the resample left out; the macro difference's percentile interval."""
    n, n_out = pa.shape[1], pa.shape[2]
    if task_type == "multiclass":
        known = np.repeat((y >= 0)[:, None], n_out, axis=1)
        target = y[:, None] == np.arange(n_out)[None, :]
    else:
        known, target = np.isfinite(y), np.nan_to_num(y) == 1
    idx_all = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    diffs, skipped = [], 0
    for idx in idx_all:
        per_label = []
        for j in range(n_out):
            t_full = target[known[:, j], j]
            if t_full.all() or not t_full.any():
                continue  # one class on the whole split: never used
            k = idx[known[idx, j]]
            t = target[k, j]
            if t.all() or not t.any():
                skipped += 1
                continue
            a = np.mean([roc_auc_score(t, pa[s, k, j]) for s in range(len(pa))])
            b = np.mean([roc_auc_score(t, pb[s, k, j]) for s in range(len(pb))])
            per_label.append(a - b)
        if per_label:
            diffs.append(np.mean(per_label))
    lo, hi = np.percentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi), skipped


def synthetic(n=80, n_labels=3, seeds=(3, 2), rng_seed=0, strength=(1.5, 0.5)):
    """Multilabel labels with unknowns, and two methods' per-seed probabilities (A stronger),
    rounded to create ties."""
    rng = np.random.default_rng(rng_seed)
    y = (rng.random((n, n_labels)) < 0.35).astype(float)
    y[rng.random((n, n_labels)) < 0.1] = np.nan
    signal = np.nan_to_num(y, nan=0.5)
    probs = []
    for s_count, st in zip(seeds, strength, strict=True):
        logits = st * signal[None] + rng.normal(size=(s_count, n, n_labels))
        probs.append(np.round(1 / (1 + np.exp(-logits)), 2))
    return y, probs[0], probs[1]


def test_a_method_against_itself_is_exactly_zero() -> None:
    y, pa, _ = synthetic()
    r = paired_auroc_delta(y, pa, pa.copy(), n_boot=500)
    assert (r.delta, r.lo, r.hi) == (0.0, 0.0, 0.0)
    assert not r.significant


def test_a_better_method_excludes_zero_and_noise_mostly_contains_it() -> None:
    y, pa, pb = synthetic(n=90, strength=(3.0, 0.0))
    r = paired_auroc_delta(y, pa, pb)
    assert r.delta > 0.2 and r.lo > 0 and r.significant
    rev = paired_auroc_delta(y, pb, pa)  # the sign flips with the order
    assert rev.hi < 0 and rev.significant and rev.delta == pytest.approx(-r.delta)
    contains = 0
    for k in range(20):  # both methods i.i.d. noise, independent of the labels
        y, pa, pb = synthetic(n=70, rng_seed=100 + k, strength=(0.0, 0.0))
        r = paired_auroc_delta(y, pa, pb, n_boot=1000, seed=k)
        contains += r.lo <= 0 <= r.hi
    assert contains >= 17, contains


def test_vectorised_equals_slow_reference(monkeypatch) -> None:
    y, pa, pb = synthetic(n=40, seeds=(3, 2), rng_seed=7)
    y[:, 2] = np.where(np.isfinite(y[:, 2]), 0.0, np.nan)
    y[:3, 2] = 1.0  # a rare label: some resamples hold no positive of it
    lo, hi, skipped = slow_reference(y, pa, pb, "multilabel", 80, 11)
    for pair_limit in (paired.PAIR_LIMIT, 0):  # pair matrices; sorted cumulative sums
        monkeypatch.setattr(paired, "PAIR_LIMIT", pair_limit)
        r = paired_auroc_delta(y, pa, pb, n_boot=80, seed=11)
        assert r.lo == pytest.approx(lo, abs=1e-12) and r.hi == pytest.approx(hi, abs=1e-12)
        assert r.skipped_label_draws == skipped > 0

    # the point estimate: difference of the seed-mean macro AUROCs on the split as drawn
    def macro(p):
        return np.mean([np.mean([roc_auc_score(y[np.isfinite(y[:, j]), j],
                                               p[s, np.isfinite(y[:, j]), j]) for j in range(3)])
                        for s in range(len(p))])  # fmt: skip

    assert r.delta == pytest.approx(macro(pa) - macro(pb), abs=1e-12)


def test_multiclass_one_vs_rest_equals_reference() -> None:
    rng = np.random.default_rng(3)
    n, k = 60, 3
    y = rng.integers(0, k, n).astype(float)
    y[:4] = -1  # unknown
    logits = rng.normal(size=(2, n, k)) + 1.5 * (np.arange(k) == y[:, None])
    pa = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    pb = np.round(rng.dirichlet(np.ones(k), size=(2, n)), 1)
    r = paired_auroc_delta(y, pa, pb, task_type="multiclass", n_boot=60, seed=5)
    lo, hi, _ = slow_reference(y.astype(int), pa, pb, "multiclass", 60, 5)
    assert r.lo == pytest.approx(lo, abs=1e-12) and r.hi == pytest.approx(hi, abs=1e-12)


def test_weighted_auroc_is_roc_auc_on_the_resample() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.random(50) < 0.4, np.round(rng.random(50), 1)
    idx = rng.integers(0, 50, size=(40, 50))
    counts = np.stack([np.bincount(i, minlength=50) for i in idx]).astype(float)
    got = weighted_auroc(counts, y, p)
    want = [roc_auc_score(y[i], p[i]) if 0 < y[i].sum() < 50 else np.nan for i in idx]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_single_class_resamples_are_skipped_and_counted() -> None:
    rng = np.random.default_rng(1)
    n = 25
    y = np.zeros((n, 3))
    y[0, 0] = 1.0  # label 0: one positive, absent from ~36 % of resamples
    y[:, 1] = rng.random(n) < 0.5
    y[:, 2] = 0.0  # label 2: one class on the whole split, never used
    pa, pb = rng.random((2, n, 3)), rng.random((1, n, 3))
    r = paired_auroc_delta(y, pa, pb, names=["rare", "common", "empty"], n_boot=200, seed=2)
    idx = np.random.default_rng(2).integers(0, n, size=(200, n))
    no_pos = int((~(idx == 0).any(axis=1)).sum())
    assert r.skipped_labels == ["empty"] and r.labels == ["rare", "common"]
    assert r.skipped_label_draws == no_pos > 0 and r.skipped_resamples == 0
    lo, hi, skipped = slow_reference(y, pa, pb, "multilabel", 200, 2)
    assert skipped == no_pos and (r.lo, r.hi) == pytest.approx((lo, hi), abs=1e-12)
    # only the rare label: a resample without its positive has no label left and is dropped
    only = paired_auroc_delta(y[:, :1], pa[:, :, :1], pb[:, :, :1], n_boot=200, seed=2)
    assert only.skipped_resamples == only.skipped_label_draws == no_pos
    assert np.isfinite(only.lo)


def test_demo_sized_comparison_is_fast() -> None:
    """The largest demo shape (102 test samples, 14 labels, 5 seeds each), 2,000 resamples."""
    rng = np.random.default_rng(0)
    y = (rng.random((102, 14)) < 0.2).astype(float)
    pa, pb = rng.random((5, 102, 14)), rng.random((5, 102, 14))
    t0 = time.perf_counter()
    r = paired_auroc_delta(y, pa, pb)
    assert time.perf_counter() - t0 < 2.0 and r.n_boot == 2000


# -- run folders -------------------------------------------------------------------------


def write_runs(root: Path, y: np.ndarray, runs: dict[str, np.ndarray | None]) -> None:
    """A manifest (train/test samples) and run folders as the trainer writes them; ``None``:
    a run marked unavailable."""
    n_test, n_labels = y.shape
    ids = [f"s{i}" for i in range(n_test + 10)]
    labels = [f"y{j}" for j in range(n_labels)]
    y_all = np.vstack([np.tile([[0.0] * n_labels, [1.0] * n_labels], (5, 1)), y])
    df = pd.DataFrame({"sample_id": ids, "patient_id": ids,
                       "split": ["train"] * 10 + ["test"] * n_test, "note": "text"})  # fmt: skip
    for j, name in enumerate(labels):
        df[f"label_{name}"] = y_all[:, j]
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(df, root / "manifest.parquet",
                   ManifestMeta("demo", "multilabel", {"note": "text"}, labels, "demo"))  # fmt: skip
    for method, probs in runs.items():
        run = root / "runs" / "full" / method
        run.mkdir(parents=True)
        if probs is None:
            (run / "summary.json").write_text(json.dumps(
                {"status": "unavailable", "reason": "no weights", "unavailable_kind": "weights absent"}))  # fmt: skip
            continue
        for s, p in enumerate(probs):
            (run / f"seed{s}").mkdir()
            # rows shuffled: predictions are joined on sample_id, not by position
            frame = pd.DataFrame({"sample_id": ids, "split": df["split"]})
            for j, name in enumerate(labels):
                frame[f"prob_{name}"] = np.r_[np.full(10, 0.5), p[:, j]].astype(np.float32)
            frame.sample(frac=1.0, random_state=s).to_parquet(
                run / f"seed{s}" / "predictions.parquet"
            )
        (run / "summary.json").write_text(
            json.dumps({"status": "ok", "seeds": list(range(len(probs)))})
        )


def test_dataset_deltas_from_run_folders(tmp_path: Path) -> None:
    y, good, bad = synthetic(n=60, strength=(3.0, 0.0), seeds=(2, 2))
    write_runs(tmp_path, y, {"medmix": good, "concat": bad, "twin": good, "onellm": None})
    got = dataset_deltas(tmp_path, ["concat", "twin", "onellm", "medmix"])
    assert set(got) == {("concat", "medmix"), ("twin", "medmix"), ("onellm", "medmix")}
    assert got[("onellm", "medmix")] == "weights absent"
    twin = got[("twin", "medmix")]
    assert (twin.lo, twin.hi) == (0.0, 0.0)  # identical predictions: exactly zero
    concat = got[("concat", "medmix")]
    want = paired_auroc_delta(y, bad.astype(np.float32), good.astype(np.float32))
    assert concat.hi < 0 and (concat.lo, concat.hi) == (want.lo, want.hi)
    assert dataset_deltas(tmp_path / "nowhere", ["concat"]) == {}  # no reference: no key
