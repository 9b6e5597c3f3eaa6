"""Seeded patient-level splits, shared by the demo generator and the real-cohort adapters.

Every sample of a patient lands in the same split (no patient in two splits, which the
manifest validator checks). Ids that differ only in case or surrounding whitespace
(``P003``, ``p003``, ``"P003 "``) are taken as one patient (:func:`cohorts.manifest.id_key`),
so a table that spells a patient two ways never splits it.
Patients are ordered by id before shuffling, so the assignment depends only on the set of
patient ids, the fractions and the seed, never on the row order of the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cohorts.manifest import id_key

DEFAULT_NAMES = ("train", "val", "test")


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts summing to ``n`` closest to ``n * fractions`` (largest remainder)."""
    frac = np.asarray(fractions, dtype=float)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if frac.ndim != 1 or len(frac) == 0 or (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(
            f"fractions must be a non-empty list of non-negative numbers, got {fractions!r}"
        )
    exact = n * frac / frac.sum()
    counts = np.floor(exact).astype(int)
    # ties broken by position so the result is deterministic
    order = sorted(range(len(frac)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


def patient_split(
    patient_ids: Sequence | pd.Series | np.ndarray,
    fractions: Mapping[str, float] | Sequence[float],
    seed: int,
    stratify: Sequence | pd.Series | np.ndarray | None = None,
) -> np.ndarray:
    """Assign each sample a split name so that all samples of a patient share one split.

    ``fractions`` maps split name -> fraction (or is a sequence for train/val/test), applied to
    patients, not samples. ``stratify`` is an optional per-sample value (e.g. a label);
    a patient's stratum is its maximum value, and each stratum is split separately so rare
    strata spread over all splits. Returns an object array of split names, one per sample.
    """
    if isinstance(fractions, Mapping):
        names, fracs = list(fractions), list(fractions.values())
    else:
        fracs = list(fractions)
        if len(fracs) != len(DEFAULT_NAMES):
            raise ValueError("a fraction sequence must have three entries (train, val, test)")
        names = list(DEFAULT_NAMES)
    raw = pd.Series(np.asarray(patient_ids, dtype=object))
    if raw.isna().any():
        raise ValueError("patient ids must not be null")
    pids = raw.astype(str).map(id_key)  # one patient however its id is cased or padded
    if stratify is None:
        strata = pd.Series(0, index=pids.index)
    else:
        strata = pd.Series(np.asarray(stratify)).reset_index(drop=True)
        if len(strata) != len(pids):
            raise ValueError("stratify must have one value per sample")
    per_patient = strata.groupby(pids.values).max()  # index sorted by patient id
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for stratum in sorted(per_patient.unique().tolist()):
        members = per_patient.index[per_patient.values == stratum].tolist()
        members = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for name, count in zip(names, split_counts(len(members), fracs), strict=True):
            for pid in members[start : start + count]:
                assignment[pid] = name
            start += count
    return pids.map(assignment).to_numpy(dtype=object)
