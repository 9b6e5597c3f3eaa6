"""Published split files (--split-file): R2Gen JSON and id,split CSV, for OpenI and MIMIC."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cohorts.adapters import AdapterError, mimic3, mimic4, openi
from cohorts.adapters.openi import study_id
from cohorts.manifest import read_manifest

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _r2gen_truth(path: Path) -> dict[str, str]:
    """The R2Gen file read independently of the adapter: CXR{uid} -> split."""
    data = json.loads(path.read_text())
    out = {}
    for split, entries in data.items():
        for e in entries:
            uid = re.match(r"^CXR(\d+)_(?:\d+_)?IM-", e["id"])[1]  # also CXR1_1_IM-0001
            out[f"CXR{int(uid)}"] = split
    return out


def _dropped(out: Path) -> dict[str, int]:
    s = pd.read_csv(out / "summary.csv")
    return dict(s.loc[s["section"] == "dropped", ["item", "count"]].itertuples(index=False))


def test_study_ids() -> None:
    assert study_id("CXR2384_IM-0942") == "CXR2384"
    assert study_id("CXR2372_IM-0933-0001") == "CXR2372"
    assert study_id("CXR0042") == study_id("42") == study_id(" 42 ") == "CXR42"
    assert study_id("PA-7") == "PA-7"  # unknown form: left as is (then refused as unknown)


def test_real_r2gen_split_is_reproduced(realdata: Path, tmp_path: Path) -> None:
    iu = realdata / "iu_xray"
    ann = iu / "r2gen_annotation.json"
    truth = _r2gen_truth(ann)
    assert len(truth) == 2955  # train 2069 / val 296 / test 590, one entry per study
    out = tmp_path / "r2gen"
    df, meta = read_manifest(
        openi.run(out, reports=iu / "indiana_reports.csv", split_file=ann, seed=5)
    )
    got = dict(zip(df["sample_id"], df["split"], strict=True))
    assert set(got) <= set(truth)  # studies not in the file are dropped
    assert all(got[k] == truth[k] for k in got)  # same split for every study in both
    raw = pd.read_csv(iu / "indiana_reports.csv")
    unindexed = {f"CXR{u}" for u in raw.loc[raw["Problems"] == "No Indexing", "uid"]}
    in_both = set(truth) - unindexed  # the adapter drops never-indexed studies (labels unknown)
    assert set(got) == in_both and len(got) == 2955 - 70
    assert (
        pd.Series(got).value_counts().to_dict()
        == pd.Series({k: truth[k] for k in in_both}).value_counts().to_dict()
    )
    assert _dropped(out)["not in the split file r2gen_annotation.json"] == 3851 - 92 - len(got)
    assert meta.extra["split_file"]["format"] == "r2gen" and "fractions" not in meta.extra
    assert any(
        r.startswith("70 id(s) of r2gen_annotation.json were excluded by the adapter")
        for r in meta.extra["remarks"]
    )
    assert "not in the split file r2gen_annotation.json" in (out / "summary.md").read_text()

    # the same split as a plain id,split CSV (ids CXR2384, 2384 or R2Gen's, mixed) and the CLI
    from cohorts.__main__ import main

    rows = [(k if i % 3 == 0 else k[3:], s) for i, (k, s) in enumerate(sorted(truth.items()))]
    csv = tmp_path / "split.csv"
    pd.DataFrame(rows, columns=["id", "split"]).to_csv(csv, index=False)
    out2 = tmp_path / "csv"
    argv = ["openi", "--reports", str(iu / "indiana_reports.csv"), "--split-file", str(csv)]
    assert main([*argv, "--out", str(out2)]) == 0
    df2, meta2 = read_manifest(out2 / "manifest.parquet")
    assert dict(zip(df2["sample_id"], df2["split"], strict=True)) == got
    assert meta2.extra["split_file"]["format"] == "csv"

    # studies not in the file refused instead of dropped
    with pytest.raises(AdapterError, match=r"split\.csv: 874 study\(s\) of the dataset are not"):
        openi.run(tmp_path / "x", reports=iu / "indiana_reports.csv", split_file=csv,
                  split_missing="error")  # fmt: skip


def _openi_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "iu"
    shutil.copytree(FIX / "openi_kaggle", root)
    return root / "indiana_reports.csv"


def test_openi_csv_split_exact_and_errors(tmp_path: Path) -> None:
    reports = _openi_fixture(tmp_path)
    csv = tmp_path / "published.csv"
    csv.write_text("id,split\nCXR1_IM-0001,test\n2,val\nCXR3,train\nCXR4,train\n")
    df, meta = read_manifest(openi.run(tmp_path / "out", reports=reports, split_file=csv))
    # study 3 is "No Indexing" (dropped by the adapter, remarked), the rest exactly as published
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == {
        "CXR1": "test",
        "CXR2": "val",
        "CXR4": "train",
    }
    assert any(
        r.startswith("1 id(s) of published.csv were excluded by the adapter, e.g. CXR3")
        or r.startswith("1 id(s) of published.csv were excluded by the adapter (see Dropped")
        for r in meta.extra["remarks"]
    )
    # a study the file does not list: dropped and counted, or refused
    csv.write_text("id,split\n1,train\n2,test\n")
    df, _ = read_manifest(openi.run(tmp_path / "out2", reports=reports, split_file=csv))
    assert sorted(df["sample_id"]) == ["CXR1", "CXR2"]
    assert _dropped(tmp_path / "out2") == {
        "MeSH 'No Indexing' (labels unknown)": 1,
        "not in the split file published.csv": 1,
    }
    with pytest.raises(AdapterError, match=r"published\.csv: 1 study\(s\) .* \(first: CXR4\)"):
        openi.run(tmp_path / "o", reports=reports, split_file=csv, split_missing="error")

    cases = {
        # ids that match no study: one line naming the file and the first unknown ids
        "id,split\n1,train\nCXR77_IM-0001,test\n78,val\n": r"published\.csv: 2 of 3 id\(s\) match no "
        r"study of the dataset: CXR77_IM-0001, 78$",
        "id,split\n1,train\n1,test\n": r"published\.csv: 1 id\(s\) listed in more than one split: CXR1",
        "id,split\n1,training\n": r"published\.csv: split values other than .*: training",
        "uid,fold\n1,train\n": r"published\.csv: a split file needs a 'split' column",
    }
    for text, pattern in cases.items():
        csv.write_text(text)
        with pytest.raises(AdapterError, match=pattern):
            openi.run(tmp_path / "o", reports=reports, split_file=csv)
    # the same id listed twice in the same split is fine
    csv.write_text("id,split\n1,train\nCXR1_IM-0001,train\n2,test\n4,val\n")
    df, _ = read_manifest(openi.run(tmp_path / "o3", reports=reports, split_file=csv))
    assert len(df) == 3

    bad = tmp_path / "annotation.json"
    bad.write_text(json.dumps({"train": [{"image_path": ["x.png"]}]}))
    with pytest.raises(AdapterError, match=r"annotation\.json: entry 0 of 'train' has no 'id'"):
        openi.run(tmp_path / "o", reports=reports, split_file=bad)
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(AdapterError, match=r"annotation\.json: not an R2Gen annotation file"):
        openi.run(tmp_path / "o", reports=reports, split_file=bad)
    good = tmp_path / "r2gen.json"
    good.write_text(
        json.dumps(
            {
                "train": [{"id": "CXR1_IM-0001", "split": "train"}],
                "val": [{"id": "CXR2_IM-0652", "split": "val"}],
                "test": [{"id": "CXR4_IM-2050", "split": "test"}],
            }
        )
    )
    df, _ = read_manifest(openi.run(tmp_path / "o4", reports=reports, split_file=good))
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == {
        "CXR1": "train",
        "CXR2": "val",
        "CXR4": "test",
    }


def test_mimic3_split_by_stay_or_patient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = FIX / "mimic3"
    csv = tmp_path / "split.csv"
    csv.write_text("stay_id,split\n240001,test\n240003,train\n")
    df, meta = read_manifest(mimic3.run(root, tmp_path / "a", split_file=csv))
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == {
        "240001": "test",
        "240003": "train",
    }
    assert meta.extra["split_file"]["key"] == "sample" and "seed" not in meta.extra
    # keyed by patient (subject_id): all stays of a patient follow it
    csv.write_text("subject_id,split\n40001,val\n40002,test\n")
    df, meta = read_manifest(mimic3.run(root, tmp_path / "b", split_file=csv, min_icu_hours=0))
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == {
        "240001": "val",
        "240002": "val",
        "240003": "test",
    }
    assert meta.extra["split_file"]["key"] == "patient"
    # a stay-level split with one patient in two splits: warned, then refused plainly
    csv.write_text("id,split\n240001,train\n240002,test\n240003,train\n")
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(
            AdapterError,
            match=r"split\.csv: the published split puts 1 patient\(s\) in more than one split "
            r"\(patient-level leakage\), e.g. patient 40001: 240001 in train, 240002 in test",
        ),
    ):
        mimic3.run(root, tmp_path / "c", split_file=csv, min_icu_hours=0)
    assert "patient-level leakage" in caplog.text
    # ...while with the default 48 h exclusion the 12 h stay 240002 is dropped: no leakage
    df, meta = read_manifest(mimic3.run(root, tmp_path / "d", split_file=csv))
    assert sorted(df["sample_id"]) == ["240001", "240003"]
    assert any(
        r.startswith("1 id(s) of split.csv were excluded by the adapter")
        for r in meta.extra["remarks"]
    )
    csv.write_text("id,split\n240001,train\n999999,test\n")
    with pytest.raises(
        AdapterError, match=r"split\.csv: 1 of 2 id\(s\) match no ICU stay .*: 999999"
    ):
        mimic3.run(root, tmp_path / "e", split_file=csv)
    with pytest.raises(AdapterError, match=r"--external .* and --split-file exclude each other"):
        mimic3.run(root, tmp_path / "f", split_file=csv, external=True)


def test_mimic4_split_by_stay(tmp_path: Path) -> None:
    root = tmp_path / "physionet"
    shutil.copytree(FIX / "mimic4", root)
    csv = tmp_path / "split.csv"
    csv.write_text("id,split\n30000001,train\n30000002,val\n")
    df, _ = read_manifest(mimic4.run(root / "mimic-iv", tmp_path / "out", split_file=csv))
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == {
        "30000001": "train",
        "30000002": "val",
    }
    assert _dropped(tmp_path / "out")["not in the split file split.csv"] == 1  # 30000007


def test_mimic3_real_demo_patient_split(realdata: Path, tmp_path: Path) -> None:
    demo = realdata / "mimic3_demo"
    seeded, _ = read_manifest(mimic3.run(demo, tmp_path / "seeded", seed=3))
    by_patient = seeded.groupby("patient_id")["split"].first()
    csv = tmp_path / "published.csv"
    by_patient.rename_axis("subject_id").reset_index().to_csv(csv, index=False)
    df, _ = read_manifest(mimic3.run(demo, tmp_path / "published", split_file=csv))
    assert dict(zip(df["sample_id"], df["split"], strict=True)) == dict(
        zip(seeded["sample_id"], seeded["split"], strict=True)
    )
