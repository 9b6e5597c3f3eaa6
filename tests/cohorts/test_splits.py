"""Patient-level seeded splits (cohorts/splits.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohorts.splits import patient_split, split_counts

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def test_split_counts_sum_and_rounding() -> None:
    assert split_counts(10, [0.65, 0.15, 0.2]) == [7, 1, 2]
    assert split_counts(7, [1, 1, 1]) == [3, 2, 2]  # ties go to the earlier split
    assert split_counts(0, [0.5, 0.5]) == [0, 0]
    for n in range(0, 60):
        counts = split_counts(n, [0.72, 0.13, 0.15])
        assert sum(counts) == n
        assert all(abs(c - n * f) < 1.0 for c, f in zip(counts, [0.72, 0.13, 0.15], strict=True))


@pytest.mark.parametrize("bad", [[], [-0.1, 1.1], [0, 0]])
def test_split_counts_rejects_bad_fractions(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        split_counts(10, bad)


def _patients(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat([f"P{i:04d}" for i in range(n)], rng.integers(1, 4, n))


def test_no_patient_in_two_splits_and_fractions() -> None:
    pids = _patients()
    split = patient_split(pids, FRACTIONS, seed=3)
    per_patient = pd.Series(split).groupby(pids).nunique()
    assert (per_patient == 1).all()
    assert set(split) == set(FRACTIONS)
    counts = pd.Series(split).groupby(pids).first().value_counts()
    for name, frac in FRACTIONS.items():
        assert counts[name] == round(200 * frac)


def test_deterministic_and_order_independent() -> None:
    pids = _patients()
    a = patient_split(pids, FRACTIONS, seed=5)
    assert (a == patient_split(pids, FRACTIONS, seed=5)).all()
    assert (a != patient_split(pids, FRACTIONS, seed=6)).any()
    perm = np.random.default_rng(1).permutation(len(pids))
    shuffled = patient_split(pids[perm], FRACTIONS, seed=5)
    assert (shuffled == a[perm]).all()


def test_stratified_split_spreads_a_rare_stratum() -> None:
    pids = np.array([f"P{i:03d}" for i in range(100)])
    y = np.zeros(100, int)
    y[:10] = 1  # 10 % rare class
    split = patient_split(pids, FRACTIONS, seed=0, stratify=y)
    rare = pd.Series(split[y == 1]).value_counts()
    assert rare.to_dict() == {"train": 7, "val": 1, "test": 2}
    common = pd.Series(split[y == 0]).value_counts()
    assert common.to_dict() == {"train": 63, "val": 9, "test": 18}


def test_stratum_is_patient_max_and_sequence_fractions() -> None:
    pids = np.array(["A", "A", "B", "B", "C", "D"])
    y = np.array([0, 1, 0, 0, 0, 1])
    split = patient_split(pids, [0.5, 0.0, 0.5], seed=1, stratify=y)
    assert split[0] == split[1] and split[2] == split[3]
    assert set(split) <= {"train", "test"}
    # patients A and D are the positive stratum: one goes to train, one to test
    assert {split[0], split[5]} == {"train", "test"}


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        patient_split(["a", "b"], [0.5, 0.5], seed=0)  # a sequence needs three fractions
    with pytest.raises(ValueError):
        patient_split(["a", "b"], FRACTIONS, seed=0, stratify=[1])


def test_mimic_adapters_split_patients_072_013_015(tmp_path) -> None:
    """build_icu (MIMIC-IV and -III) splits 0.72 / 0.13 / 0.15 of the patients, not of the stays."""
    from cohorts.adapters import icu

    rng = np.random.default_rng(0)
    n = 1000
    subjects = np.arange(1, n + 1)
    stays_per = rng.integers(1, 4, n)  # 1-3 ICU stays per patient, one admission each
    sub = np.repeat(subjects, stays_per)
    t0 = pd.Timestamp("2150-01-01") + pd.to_timedelta(np.arange(len(sub)) * 40, unit="D")
    died = rng.random(len(sub)) < 0.15
    adm = pd.DataFrame(
        {
            "subject_id": sub,
            "hadm_id": np.arange(len(sub)) + 10_000,
            "admittime": t0,
            "dischtime": t0 + pd.Timedelta(days=6),
            "deathtime": pd.Series(t0 + pd.Timedelta(days=6)).where(died),
            "edregtime": pd.NaT,
            "hospital_expire_flag": died.astype(int),
        }
    )
    stays = pd.DataFrame(
        {
            "stay_id": np.arange(len(sub)) + 100_000,
            "subject_id": sub,
            "hadm_id": adm["hadm_id"],
            "intime": t0 + pd.Timedelta(hours=2),
            "outtime": t0 + pd.Timedelta(days=4),
            "age": 60.0,
        }
    )
    df, meta, drops = icu.build_icu(
        icu.IcuSources(admissions=adm, stays=stays),
        dataset="synthetic",
        adapter="test",
        adapter_version="1",
        modalities={"ehr": "timeseries"},
        root=tmp_path,
        ehr_dir=tmp_path / "ehr",
        seed=7,
    )
    assert drops.total() == 0 and len(df) == len(sub)
    assert meta.extra["fractions"] == icu.FRACTIONS == {"train": 0.72, "val": 0.13, "test": 0.15}
    per_patient = df.groupby("patient_id")["split"].agg(["nunique", "first"])
    assert (per_patient["nunique"] == 1).all()
    counts = per_patient["first"].value_counts()
    for split, frac in icu.FRACTIONS.items():  # 2 strata: within one patient of each
        assert abs(counts[split] - frac * n) <= 2, counts.to_dict()
