"""The plan and render helpers every demo cohort kind shares (cohorts.demo.base)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cohorts.demo.base import (
    KIND_CODES,
    Plan,
    present_draws,
    samples_frame,
    settle_missingness,
    write_raw,
)
from cohorts.demo.mimic import KIND as MIMIC
from cohorts.demo.signal import sample_rng


def test_samples_frame_ids_split_and_labels() -> None:
    pidx = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    labels = np.array([[i % 2, 1 - i % 2] for i in range(len(pidx))])
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    df = samples_frame(pidx, fractions, 3, labels[:, 0], labels, ("a", "b"), prefix="A")
    assert list(df.columns) == ["sample_id", "patient_id", "split", "label_a", "label_b"]
    assert df["sample_id"].tolist()[:3] == ["P0001-A1", "P0001-A2", "P0002-A1"]
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()  # split by patient
    assert df["label_a"].dtype == np.int8 and df["label_b"].tolist() == labels[:, 1].tolist()


def test_present_draws_skip_absent_modalities_and_keep_their_stream_index() -> None:
    plan = MIMIC.plan(12, seed=4)
    mods = list(MIMIC.modalities)
    for i in range(len(plan.samples)):
        drawn = list(present_draws(plan, i, mods))
        assert [m for m, *_ in drawn] == [m for m in mods if plan.present[m][i]]
        for mod, rng, evidence, quality in drawn:
            expected = sample_rng(plan.seed, KIND_CODES["mimic"], 1, i, mods.index(mod))
            assert rng.random() == expected.random()
            assert np.array_equal(evidence, plan.signal.evidence[mod][i])
            assert quality == float(plan.signal.quality[mod][i])


def test_settle_missingness_leaves_no_sample_without_a_modality() -> None:
    plan: Plan = MIMIC.plan(30, seed=1)
    present = {m: np.zeros(len(plan.samples), dtype=bool) for m in plan.present}
    rng = np.random.default_rng(0)
    settle_missingness(present, plan.signal, np.eye(3, 8), "mimic", 1, rng, "ehr")
    assert np.stack(list(present.values())).any(axis=0).all()
    assert present["ehr"].sum() > present["note"].sum()  # "ehr" is preferred


def test_write_raw_writes_under_root_and_returns_the_relative_path(tmp_path: Path) -> None:
    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    assert write_raw(tmp_path, "note/S1.txt", write, "hello") == "note/S1.txt"
    assert (tmp_path / "note" / "S1.txt").read_text() == "hello"
