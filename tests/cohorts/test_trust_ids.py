"""Patient ids that differ only in case or surrounding whitespace never leak across splits:
the adapters strip ids (``cohorts.manifest.clean_id``), the seeded split groups patients by
``id_key`` (strip + casefold), and the manifest validator refuses one such patient in two
splits. A symbolic-link loop under the dataset root is that sample's failure, not the cohort's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cohorts.adapters import AdapterError, table
from cohorts.manifest import (
    ManifestError,
    ManifestMeta,
    id_key,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from cohorts.splits import patient_split

REPO = Path(__file__).resolve().parents[2]
RATIOS = {"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 0}


def _variants(pid: str, i: int) -> list[str]:
    """The spellings a hand-kept table uses for one patient."""
    return [pid, f"{pid} ", pid.lower(), f" {pid}"][: 2 + i % 3]


def _table_cohort(tmp: Path, rows: list[dict], split: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(tmp / "clinical.csv", index=False)
    mapping = {
        "dataset": "ids",
        "table": "clinical.csv",
        "task_type": "binary",
        "id": "case_id",
        "patient": "patient_id",
        "split": split,
        "modalities": {"note": {"kind": "text", "column": "note"}},
        "labels": {"y": {"column": "y"}},
    }
    (tmp / "mapping.yaml").write_text(yaml.safe_dump(mapping))
    return tmp / "mapping.yaml"


def _spelled_rows(n_patients: int = 40) -> list[dict]:
    rows = []
    for i in range(n_patients):
        pid = f"P{i:03d}"
        for k, spelling in enumerate(_variants(pid, i)):
            rows.append({"case_id": f"c{i:03d}-{k}", "patient_id": spelling,
                         "note": f"note {i} {k}", "y": i % 2})  # fmt: skip
    return rows


def test_table_ratio_split_keeps_every_spelling_of_a_patient_in_one_split(tmp_path: Path) -> None:
    """The reported case: 40 patients, each spelled 2-4 ways (``P003``, ``"P003 "``,
    ``p003``, ``" P003"``), split by ratios: every patient in exactly one split."""
    rows = _spelled_rows(40)
    mapping = _table_cohort(tmp_path / "c", rows, RATIOS)
    out = table.run(mapping, tmp_path / "out")
    df, _ = read_manifest(out)
    assert len(df) == len(rows)
    assert (df["patient_id"] == df["patient_id"].str.strip()).all()  # stored stripped
    per_patient = df.groupby(df["patient_id"].map(id_key))["split"].nunique()
    assert len(per_patient) == 40 and per_patient.max() == 1
    assert set(df["split"]) == {"train", "val", "test"}
    # whitespace is gone; case differences are kept as written (but share the split)
    assert {"P002", "p002"} <= set(df["patient_id"]) and "P002 " not in set(df["patient_id"])


def test_cli_official_split_with_one_patient_spelled_two_ways_in_two_splits(
    tmp_path: Path,
) -> None:
    """An official split column that puts ``P003`` in train and ``p003`` in test: the manifest
    validator refuses it with one line naming both ids; no manifest is written."""
    rows = [
        {"case_id": "a", "patient_id": "P003", "split": "train", "note": "n", "y": 0},
        {"case_id": "b", "patient_id": "p003", "split": "test", "note": "n", "y": 1},
        {"case_id": "c", "patient_id": "P004", "split": "val", "note": "n", "y": 1},
    ]
    mapping = _table_cohort(tmp_path / "c", rows, {"column": "split"})
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cohorts", "table", "--mapping", str(mapping), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "'P003' (train)" in lines[0] and "'p003' (test)" in lines[0]
    assert "differ only in case or surrounding whitespace" in lines[0]
    assert not (out / "manifest.parquet").exists()


def test_table_padded_ids_are_one_id(tmp_path: Path) -> None:
    """``"s1"`` and ``"s1 "`` are the same sample id: a duplicate, refused (the default
    ``duplicate_ids: error``); a blank id cell is refused too."""
    rows = [
        {"case_id": "s1", "patient_id": "P1", "note": "n", "y": 0},
        {"case_id": "s1 ", "patient_id": "P1", "note": "n", "y": 0},
        {"case_id": "s2", "patient_id": "P2", "note": "n", "y": 1},
    ]
    mapping = _table_cohort(tmp_path / "dup", rows, RATIOS)
    with pytest.raises(AdapterError, match=r"column 'case_id' \(id\) has duplicate values.*'s1'"):
        table.run(mapping, tmp_path / "out-dup")
    rows[1]["case_id"] = "   "
    mapping = _table_cohort(tmp_path / "blank", rows, RATIOS)
    with pytest.raises(AdapterError, match=r"column 'case_id' \(id\) has empty values on 1 row"):
        table.run(mapping, tmp_path / "out-blank")
    assert not (tmp_path / "out-dup").exists() and not (tmp_path / "out-blank").exists()


def test_patient_split_groups_case_and_whitespace_variants() -> None:
    pids = np.array([s for i in range(60) for s in _variants(f"P{i:03d}", i)], dtype=object)
    for seed in range(5):
        split = patient_split(pids, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)
        frame = pd.DataFrame({"key": [id_key(p) for p in pids], "split": split})
        assert frame.groupby("key")["split"].nunique().max() == 1
    # ids without variants: the assignment is what it was (ordered by id, then shuffled)
    plain = np.array([f"P{i:03d}" for i in range(30)], dtype=object)
    a = patient_split(plain, (0.6, 0.2, 0.2), seed=3)
    b = patient_split(plain[::-1], (0.6, 0.2, 0.2), seed=3)[::-1]
    assert (a == b).all()


def _meta(root: Path | str = ".") -> ManifestMeta:
    return ManifestMeta(dataset="v", task_type="binary", modalities={"note": "text"},
                        labels=["y"], adapter="test", root=str(root))  # fmt: skip


def _frame(pids: list[str], splits: list[str], sids: list[str] | None = None) -> pd.DataFrame:
    n = len(pids)
    return pd.DataFrame({"sample_id": sids or [f"s{i}" for i in range(n)], "patient_id": pids,
                         "split": splits, "note": ["n"] * n, "label_y": [0, 1] * (n // 2) + [0] * (n % 2)})  # fmt: skip


@pytest.mark.parametrize(
    ("pids", "splits", "named"),
    [
        (["P003", "p003", "P004"], ["train", "test", "val"], ["'P003' (train)", "'p003' (test)"]),
        (["ab", "AB", "Ab"], ["train", "train", "val"], ["'ab' (train)", "'Ab' (val)"]),
        (["Straße", "STRASSE"], ["train", "test"], ["'Straße' (train)", "'STRASSE' (test)"]),
    ],
)
def test_validator_refuses_near_duplicate_patients_in_two_splits(
    pids: list[str], splits: list[str], named: list[str]
) -> None:
    with pytest.raises(ManifestError) as got:
        validate_manifest(_frame(pids, splits), _meta(), path="m.parquet")
    msg = str(got.value)
    assert msg.startswith("m.parquet: 1 patient(s) appear in more than one split under ids")
    assert "\n" not in msg and all(n in msg for n in named)


def test_validator_accepts_near_duplicates_in_one_split_and_refuses_padded_ids() -> None:
    validate_manifest(_frame(["P003", "p003", "P004"], ["train", "train", "val"]), _meta())
    with pytest.raises(
        ManifestError,
        match=r"m: column 'patient_id' has ids with surrounding whitespace \['P003 '\]",
    ):
        validate_manifest(_frame(["P003 ", "P004"], ["train", "val"]), _meta(), path="m")
    with pytest.raises(
        ManifestError, match=r"m: column 'sample_id' has ids with surrounding whitespace \[' s0'\]"
    ):
        validate_manifest(_frame(["P1", "P2"], ["train", "val"], [" s0", "s1"]), _meta(), path="m")
    with pytest.raises(ManifestError, match=r"m: column 'sample_id' has empty ids for ids"):
        validate_manifest(_frame(["P1", "P2"], ["train", "val"], ["", "s1"]), _meta(), path="m")
    # an exact leak keeps its own message
    with pytest.raises(
        ManifestError, match=r"1 patient\(s\) appear in more than one split \(first: \['P1'\]\)"
    ):
        validate_manifest(_frame(["P1", "P1"], ["train", "test"]), _meta(), path="m")


def _image_manifest(tmp: Path) -> tuple[Path, Path]:
    from PIL import Image

    root = tmp / "root"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(
            root / "img" / f"{i}.png"
        )
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i}", "split": ("train", "val", "test", "train")[i % 4],
                     "xray": f"img/{i}.png", "label_y": i % 2})  # fmt: skip
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    rows[3]["xray"] = "loop-a/x.png"
    rows[5]["xray"] = "loop-b"
    meta = ManifestMeta(dataset="t", task_type="binary", modalities={"xray": "image"},
                        labels=["y"], adapter="test", root=str(root))  # fmt: skip
    return write_manifest(pd.DataFrame(rows), tmp / "manifest.parquet", meta), root


def test_symlink_loop_fails_the_sample_not_the_cohort(tmp_path: Path) -> None:
    """A symbolic-link loop under the root: the validator passes (``write_manifest`` and the
    extraction both validate) and extraction records those two samples as failed."""
    from extractors.cache import read_cache
    from extractors.extract import extract
    from extractors.registry import create_expert

    manifest, root = _image_manifest(tmp_path)
    df, meta = read_manifest(manifest)
    validate_manifest(df, meta, path=manifest)
    out = tmp_path / "cache.parquet"
    summary = extract(manifest, "xray", create_expert("texture-glcm-lbp"), out,
                      progress=False, max_failed_fraction=0.5)  # fmt: skip
    assert (summary.ok, summary.failed, summary.missing) == (6, 2, 0)
    data = read_cache(out)
    assert set(data.sample_ids[data.status == "failed"]) == {"s3", "s5"}
    # a link that leaves the root is still refused for the cohort
    os.symlink(tmp_path, root / "outside")
    df.loc[0, "xray"] = "outside/manifest.parquet"
    with pytest.raises(
        ManifestError, match=r"column 'xray' has paths outside the dataset root .* for ids s0"
    ):
        validate_manifest(df, meta, path="m")
