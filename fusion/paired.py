"""Paired test-bootstrap intervals of a method's AUROC difference to a reference (Table 1).

The "±" of Table 1 is the spread over training seeds on one small test split; it says nothing
about how much a difference between two methods depends on *which* test samples were drawn.
This module answers that: for each dataset and method, the TEST samples are resampled with
replacement (``n_boot`` = 2,000 times, seeded), the *same* resample for the method and the
reference (paired), and the difference of the primary metric is recomputed on each resample.

The metric is Table 1's AUROC: the macro AUROC over labels / tasks (multiclass: one-vs-rest
over classes) of each seed, averaged over the method's seeds. A resample's difference is
therefore ``mean_s macroAUROC_A,s − mean_s macroAUROC_B,s``, and the point estimate (on the
test split as drawn) is exactly the difference of the two AUROC means printed in Table 1. We
average per-seed AUROCs rather than the seeds' probabilities: the seed-averaged probabilities
are an ensemble that no row of Table 1 reports (an ensemble of S seeds scores higher than the
mean of its members), so its difference would not be the difference a reader sees. The
interval holds the trained models fixed: it measures test-sample uncertainty only, not seed
(training) noise — that is the ± beside it.

The interval is the 95 % percentile interval of the resampled differences. A label that has
no positive or no negative among the known labels of the whole test split is left out (as
:func:`fusion.metrics.evaluate_split` does); a label with one class in a resample is left out
of that resample's macro average, for both methods alike (counted in ``skipped_label_draws``),
and a resample where every label has one class is dropped (``skipped_resamples``).

Speed. A resample is a vector of multiplicities ``w`` (how often each test sample was drawn);
the AUROC of the resample is the weighted Mann–Whitney statistic
``Σ_{pos i} w_i (W0(p < p_i) + ½ W0(p = p_i)) / (W1 · W0)`` — identical to scikit-learn's
``roc_auc_score`` on the resampled arrays (ties count one half). The samples are sorted by
score once per (seed, label); every resample then costs cumulative sums of its weights in that
order, for all resamples at once (numpy, O(n_boot · n) per seed and label, no per-resample
sort). On the demo sizes (60–102 test samples, ≤ 14 labels, 3–5 seeds) one comparison takes
milliseconds.

Inputs (a run folder as :mod:`fusion.train` writes it): ``{root}/runs/full/{method}/summary.json``
and ``seed{k}/predictions.parquet`` (``sample_id``, ``split``, ``prob_{output}``), the labels
from ``{root}/manifest.parquet`` (``label_{name}``), joined on ``sample_id``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohorts.manifest import read_manifest
from fusion.bootstrap_ranks import RankedLabel, boot_auroc, draw_counts

log = logging.getLogger("medmix.fusion.paired")

N_BOOT = 2000
SEED = 0
LEVEL = 0.95
REFERENCES = ("medmix", "linear-probe")  # Table 1 compares every method to these, if present
CHUNK_CELLS = 500_000  # resamples × test samples drawn and evaluated at once (memory)


@dataclass
class PairedDelta:
    """The paired bootstrap of ``macroAUROC(method) − macroAUROC(reference)`` on one split."""

    delta: float  # on the split as drawn: the difference of the seed-mean macro AUROCs
    lo: float
    hi: float
    level: float = LEVEL
    n_boot: int = N_BOOT
    seed: int = SEED
    n_test: int = 0
    labels: list[str] = field(default_factory=list)  # labels in the macro average
    skipped_labels: list[str] = field(default_factory=list)  # one class on the whole split
    skipped_label_draws: int = 0  # (resample, label) pairs left out: one class in the resample
    skipped_resamples: int = 0  # resamples with no label holding both classes
    seconds: float = 0.0

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return bool(np.isfinite(self.lo) and (self.lo > 0 or self.hi < 0))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


# -- the kernel -----------------------------------------------------------------------------


def resample_counts(n: int, n_boot: int, seed: int = SEED, chunk: int | None = None):
    """Yield ``(indices (b, n), counts (b, n))`` chunks of ``n_boot`` resamples of ``n`` samples.

    ``counts[r, i]`` is how often sample ``i`` was drawn in resample ``r``. The indices come
    from one seeded generator; numpy's stream does not depend on how it is chunked, so the
    resamples depend on ``seed`` (and ``n``) only.
    """
    chunk = chunk or max(1, CHUNK_CELLS // max(n, 1))
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        done += b
        yield idx, draw_counts(idx, n).astype(np.float64)


PAIR_LIMIT = 4_000_000  # scores × positives × negatives up to which pair matrices are kept


def weighted_auroc(counts: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of 0/1 labels ``y`` (n,) vs scores ``p`` (n,) under each row of sample
    multiplicities ``counts`` (b, n); NaN where a row has no positive or no negative.

    Equal to ``roc_auc_score(y[idx], p[idx])`` for the resample ``idx`` the row counts: the
    samples are sorted by score once (:mod:`fusion.bootstrap_ranks`), then each resample's
    negative weight below (and tied with) every score group is a cumulative sum in that
    order — O(b · n), any n.
    """
    y = np.asarray(y).astype(bool)
    label = RankedLabel(y, np.asarray(p, dtype=np.float64), np.ones(len(y), dtype=bool))
    return boot_auroc(label.group_counts(np.asarray(counts, dtype=np.float64)))


class _LabelAurocs:
    """One label's AUROC under every resample of a chunk, for several score vectors at once
    (each seed of both methods): prepared once, called per chunk of resamples.

    The positives and negatives of a label are the same for every seed and method, so small
    labels (scores × positives × negatives ≤ :data:`PAIR_LIMIT`) keep the pair matrices
    ``K_s[i, j] = 1[p_s,i > p_s,j] + ½ 1[p_s,i = p_s,j]`` (positive i, negative j) side by side:
    a chunk's numerators — the weighted Mann–Whitney U of every resample and score vector — are
    one matrix product, ``((W_pos @ [K_1 … K_S]) * W_neg).sum``. Larger labels fall back to
    :func:`weighted_auroc` per score vector.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray, scores: np.ndarray) -> None:
        self.pos, self.neg = np.flatnonzero(pos), np.flatnonzero(neg)  # scores: (S, n)
        self.known = np.flatnonzero(pos | neg)
        self.target, self.scores = pos[self.known], scores[:, self.known]
        self.n_scores, n0 = len(scores), len(self.neg)
        self.K = None
        if self.n_scores * len(self.pos) * n0 <= PAIR_LIMIT:
            sp, sn = scores[:, self.pos][:, :, None], scores[:, self.neg][:, None, :]
            k = (sp > sn) + 0.5 * (sp == sn)  # (S, n1, n0)
            self.K = k.transpose(1, 0, 2).reshape(len(self.pos), self.n_scores * n0)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """(b, S): the AUROC of each score vector under each resample (NaN: one class)."""
        if self.K is None:
            w = counts[:, self.known]
            return np.stack([weighted_auroc(w, self.target, s) for s in self.scores], axis=1)
        wp, wn = counts[:, self.pos], counts[:, self.neg]
        u = (wp @ self.K).reshape(len(counts), self.n_scores, len(self.neg))
        num = np.einsum("bsj,bj->bs", u, wn)
        n1, n0 = wp.sum(axis=1), wn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(((n1 > 0) & (n0 > 0))[:, None], num / (n1 * n0)[:, None], np.nan)


def binary_targets(y: np.ndarray, task_type: str, n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output column, 0/1 targets and a known mask, both (n, n_outputs).

    ``y``: (n, n_outputs) with NaN for unknown (binary / multilabel), or (n,) class ids with
    −1 (or NaN) for unknown (multiclass: one-vs-rest per class).
    """
    if task_type == "multiclass":
        v = np.asarray(y, dtype=np.float64).reshape(-1)
        known = np.isfinite(v) & (v >= 0)
        ids = np.where(known, v, -1).astype(np.int64)
        target = ids[:, None] == np.arange(n_outputs)[None, :]
        return target, np.repeat(known[:, None], n_outputs, axis=1)
    v = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if v.shape[1] != n_outputs:
        raise ValueError(f"{v.shape[1]} label columns for {n_outputs} outputs")
    known = np.isfinite(v)
    return np.where(known, v, 0) == 1, known


def paired_auroc_delta(
    y: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    task_type: str = "multilabel",
    names: list[str] | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
) -> PairedDelta:
    """Paired bootstrap interval of ``macroAUROC(A) − macroAUROC(B)`` on one test split.

    ``probs_a`` (S_a, n, C) and ``probs_b`` (S_b, n, C): each seed's probabilities for the
    same ``n`` test samples in the same order (a 2-D array is one seed); ``y`` as
    :func:`binary_targets` takes it. Each method's macro AUROC is averaged over its seeds.
    """
    import time

    t0 = time.perf_counter()
    pa = np.asarray(probs_a, dtype=np.float64)
    pb = np.asarray(probs_b, dtype=np.float64)
    pa, pb = (p[None] if p.ndim == 2 else p for p in (pa, pb))
    if pa.shape[1:] != pb.shape[1:]:
        raise ValueError(f"predictions of different shapes: {pa.shape[1:]} vs {pb.shape[1:]}")
    n, n_out = pa.shape[1], pa.shape[2]
    names = list(names) if names is not None else [str(j) for j in range(n_out)]
    target, known = binary_targets(y, task_type, n_out)
    used, skipped = [], []
    for j in range(n_out):
        t = target[known[:, j], j]
        (used if t.any() and not t.all() else skipped).append(j)
    out = PairedDelta(np.nan, np.nan, np.nan, level, int(n_boot), int(seed), int(n),
                      [names[j] for j in used], [names[j] for j in skipped])  # fmt: skip
    if not used or n == 0:
        out.seconds = time.perf_counter() - t0
        return out

    pos, neg = target & known, ~target & known  # unknown labels: neither
    both = np.concatenate([pa, pb])  # (S_a + S_b, n, C): every seed of A, then of B
    blocks = [_LabelAurocs(pos[:, j], neg[:, j], both[:, :, j]) for j in used]

    def seed_mean_diff(counts: np.ndarray) -> np.ndarray:
        """(b, len(used)): per label, mean_s AUROC_A − mean_s AUROC_B (NaN: one class)."""
        cols = []
        for block in blocks:
            auc = block(counts)
            cols.append(auc[:, : len(pa)].mean(axis=1) - auc[:, len(pa) :].mean(axis=1))
        return np.stack(cols, axis=1)

    point = seed_mean_diff(np.ones((1, n)))[0]
    out.delta = float(np.mean(point))
    draws = []
    for _, counts in resample_counts(n, n_boot, seed):
        d = seed_mean_diff(counts)
        out.skipped_label_draws += int(np.isnan(d).sum())
        valid = ~np.isnan(d).all(axis=1)
        out.skipped_resamples += int((~valid).sum())
        draws.append(np.nanmean(d[valid], axis=1) if valid.any() else np.zeros(0))
    diffs = np.concatenate(draws)
    if len(diffs):
        lo, hi = np.percentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
        out.lo, out.hi = float(lo), float(hi)
    out.seconds = time.perf_counter() - t0
    return out


# -- run folders ----------------------------------------------------------------------------


@dataclass
class SplitLabels:
    sample_ids: np.ndarray  # str, the test split's samples in manifest order
    y: np.ndarray  # (n, L) float with NaN, or (n,) class ids (multiclass)
    task_type: str
    labels: list[str]


def load_test_labels(manifest: str | Path) -> SplitLabels:
    """The test split's labels from a dataset manifest (``label_{name}`` columns)."""
    df, meta = read_manifest(manifest)
    test = df[df["split"].astype(str) == "test"]
    cols = meta.label_columns()
    y = test[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if meta.task_type == "multiclass":
        y = y[:, 0]
    return SplitLabels(test["sample_id"].astype(str).to_numpy(), y, meta.task_type,
                      list(meta.labels))  # fmt: skip


def run_status(run_dir: Path) -> tuple[str, str]:
    """("ok" | "unavailable" | "missing", the unavailable kind or why) of a run folder."""
    summary = run_dir / "summary.json"
    if not summary.exists():
        return "missing", "no predictions"
    s = json.loads(summary.read_text())
    if s.get("status") == "unavailable":
        return "unavailable", s.get("unavailable_kind") or "not run"
    return "ok", ""


def load_run_probs(run_dir: Path, sample_ids: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """(S, n, C) test probabilities of every seed of a finished run, rows in ``sample_ids``
    order, and the output names; None when a seed lacks predictions or a test sample."""
    files = sorted(f for f in run_dir.glob("seed*/predictions.parquet")
                   if not f.parent.name.startswith("."))  # fmt: skip
    if not files:
        return None
    probs, names = [], None
    for f in files:
        df = pd.read_parquet(f)
        cols = [c for c in df.columns if c.startswith("prob_")]
        if names is None:
            names = [c.removeprefix("prob_") for c in cols]
        elif [c.removeprefix("prob_") for c in cols] != names:
            log.warning("%s: outputs differ from the other seeds'", f)
            return None
        test = df[df["split"].astype(str) == "test"]
        test = test.set_index(test["sample_id"].astype(str))
        missing = pd.Index(sample_ids).difference(test.index)
        if len(missing):
            log.warning("%s: %d test sample(s) without predictions", f, len(missing))
            return None
        probs.append(test.loc[sample_ids, cols].to_numpy(dtype=np.float64))
    return np.stack(probs), names or []


def dataset_deltas(
    root: str | Path,
    methods: list[str],
    references: tuple[str, ...] = REFERENCES,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
    protocol: str = "full",
) -> dict[tuple[str, str], PairedDelta | str]:
    """``(method, reference) -> PairedDelta`` for every method of one dataset's Table 1 rows,
    or a short reason why it cannot be computed (shown in the cell). A reference whose run
    folder does not exist is left out (no key)."""
    root = Path(root)
    runs = root / "runs" / protocol
    refs = [r for r in references if (runs / r).exists()]
    if not refs:
        return {}
    manifest = root / "manifest.parquet"
    labels = load_test_labels(manifest) if manifest.exists() else None
    cache: dict[str, tuple[np.ndarray, list[str]] | str] = {}

    def probs(method: str) -> tuple[np.ndarray, list[str]] | str:
        if method not in cache:
            status, why = run_status(runs / method)
            if status != "ok":
                cache[method] = why
            elif labels is None:
                cache[method] = "no labels"
            else:
                got = load_run_probs(runs / method, labels.sample_ids)
                cache[method] = got if got is not None else "no predictions"
        return cache[method]

    out: dict[tuple[str, str], PairedDelta | str] = {}
    for ref in refs:
        ref_probs = probs(ref)
        for m in methods:
            if m == ref:
                continue
            mine = probs(m)
            if isinstance(mine, str):
                out[(m, ref)] = mine
            elif isinstance(ref_probs, str):
                out[(m, ref)] = "reference not run" if ref_probs != "no labels" else ref_probs
            elif mine[1] != ref_probs[1]:
                out[(m, ref)] = "outputs differ"
            else:
                out[(m, ref)] = paired_auroc_delta(
                    labels.y, mine[0], ref_probs[0], labels.task_type, mine[1],
                    n_boot=n_boot, seed=seed, level=level,
                )  # fmt: skip
    return out


__all__ = [
    "LEVEL",
    "N_BOOT",
    "REFERENCES",
    "SEED",
    "PairedDelta",
    "SplitLabels",
    "binary_targets",
    "dataset_deltas",
    "load_run_probs",
    "load_test_labels",
    "paired_auroc_delta",
    "resample_counts",
    "weighted_auroc",
]
