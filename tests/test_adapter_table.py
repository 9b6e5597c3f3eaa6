"""Generic table adapter: column mappings, splits, survival labels, the MMIST-ccRCC mapping, errors."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cohorts.adapters import AdapterError, table
from cohorts.adapters.summary import write_summary
from cohorts.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"


def _cohort(tmp_path: Path) -> Path:
    """A user cohort: 12 patients with 2 visits each, a path column, a note, survival data."""
    root = tmp_path / "cohort"
    (root / "img").mkdir(parents=True)
    rows = []
    for p in range(12):
        for v in range(2):
            sid = f"s{p:02d}{v}"
            if (p + v) % 3:
                (root / "img" / f"{sid}.png").write_bytes(b"png")
            rows.append(
                {
                    "visit": sid,
                    "mrn": f"P{p:02d}",
                    "image": f"img/{sid}.png",
                    "report": None if p == 5 else f"visit {v} of patient {p}",
                    "os_days": [100, 400, 200, 1000][p % 4],
                    "dead": [1, 0, 0, 1][p % 4],
                    "grade": ["low", "high"][p % 2],
                }
            )
    pd.DataFrame(rows).to_parquet(root / "visits.parquet")
    return root


def _mapping(root: Path, **over) -> dict:
    m = {
        "dataset": "mine",
        "root": str(root),
        "table": "visits.parquet",
        "task_type": "binary",
        "id": "visit",
        "patient": "mrn",
        "split": {"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 7},
        "modalities": {
            "xray": {"kind": "image", "column": "image"},
            "note": {"kind": "text", "column": "report"},
        },
        "labels": {
            "death_1y": {"survival": {"time": "os_days", "event": "dead", "horizon": 365}},
            "high_grade": {"column": "grade", "map": {"low": 0, "high": 1}},
        },
    }
    m.update(over)
    return m


def test_generic_mapping(tmp_path: Path) -> None:
    root = _cohort(tmp_path)
    df, meta = read_manifest(table.run(_mapping(root), tmp_path / "out"))
    assert (
        meta.adapter == "table"
        and meta.labels == ["death_1y", "high_grade"]
        and Path(meta.root) == root.resolve()
    )
    assert (
        len(df) == 24
    )  # os 200 d without event -> censored before 1 y -> death_1y unknown, high_grade known: kept
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert df.groupby("split")["patient_id"].nunique().to_dict() == {
        "train": 6,
        "val": 3,
        "test": 3,
    }
    # absent image files -> modality missing, with a remark in the summary
    on_disk = df["sample_id"].map(lambda s: (root / "img" / f"{s}.png").exists())
    assert (df["xray"].notna() == on_disk).all()
    assert any("absent" in r for r in meta.extra["remarks"])
    assert df.loc[df["patient_id"] == "P05", "note"].isna().all()
    d = df.set_index("sample_id")
    # survival at 1 y: died at 100 d -> 1; alive at 400 d -> 0; censored at 200 d -> unknown; died at 1000 d -> 0
    assert [d.loc[f"s{p:02d}0", "label_death_1y"] for p in range(4)][:2] == [1, 0]
    assert pd.isna(d.loc["s020", "label_death_1y"]) and d.loc["s030", "label_death_1y"] == 0
    assert d.loc["s010", "label_high_grade"] == 1
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "## Label prevalence" in md and "## Remarks" in md
    # the same mapping from YAML, with a seed override: same patients, reshuffled splits
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({**_mapping(root), "root": "cohort"}))
    df2, meta2 = read_manifest(table.run(tmp_path / "m.yaml", tmp_path / "out2", seed=8))
    assert Path(meta2.root) == root.resolve() and set(df2["sample_id"]) == set(df["sample_id"])
    assert (df2["split"].to_numpy() != df["split"].to_numpy()).any()


def test_stratified_ratios_and_drop_unlabeled(tmp_path: Path) -> None:
    root = _cohort(tmp_path)
    m = _mapping(
        root,
        labels={"death_1y": {"survival": {"time": "os_days", "event": "dead", "horizon": 365}}},
    )
    m["split"] = {
        "ratios": {"train": 0.5, "val": 0.25, "test": 0.25},
        "seed": 1,
        "stratify": "death_1y",
    }
    df, meta, drops = table.build(m)
    assert drops.counts == {"label unknown": 6}  # the censored patients (3 x 2 visits)
    assert df["label_death_1y"].dtype == "int8"
    per_split = df.groupby("split")["label_death_1y"].sum()
    assert (per_split > 0).all()  # positives spread over every split


def test_mmist_ccrcc_mapping(tmp_path: Path) -> None:
    root = tmp_path / "mmist"
    shutil.copytree(FIX / "mmist_ccrcc", root)
    for case in ("TCGA-B0-4710", "TCGA-B0-4712", "C3L-00004"):
        (root / "CT").mkdir(exist_ok=True)
        (root / "CT" / f"{case}.nii.gz").write_bytes(b"nii")
    for case in ("TCGA-B0-4710", "C3L-00026"):
        (root / "WSI").mkdir(exist_ok=True)
        (root / "WSI" / f"{case}.svs").write_bytes(b"svs")
    mapping = table.load_mapping(REPO / "config" / "cohorts" / "mmist_ccrcc.yaml")
    df, meta, drops = table.build(mapping, root=root)
    assert (
        meta.dataset == "mmist-ccrcc"
        and meta.task_type == "binary"
        and meta.labels == ["vital_status_12m"]
    )
    assert meta.modalities == {"ct": "volume", "wsi": "slide", "note": "text"}
    assert drops.counts == {"label unknown": 1}  # C3L-00010
    d = df.set_index("sample_id")
    assert d["split"].to_dict() == {
        "TCGA-B0-4710": "train", "TCGA-B0-4712": "train", "C3L-00004": "val", "C3L-00011": "test", "C3L-00026": "test"
    }  # fmt: skip
    assert d["label_vital_status_12m"].to_dict() == {
        "TCGA-B0-4710": 0, "TCGA-B0-4712": 1, "C3L-00004": 0, "C3L-00011": 0, "C3L-00026": 1
    }  # fmt: skip
    assert d.loc["TCGA-B0-4710", "ct"] == "CT/TCGA-B0-4710.nii.gz" and pd.isna(
        d.loc["C3L-00011", "ct"]
    )
    assert d.loc["C3L-00026", "wsi"] == "WSI/C3L-00026.svs" and pd.isna(
        d.loc["TCGA-B0-4712", "wsi"]
    )
    assert (
        d.loc["TCGA-B0-4712", "note"]
        == "75 year old female patient. Pathologic stage Stage IV, tumour grade G4."
    )
    assert pd.isna(d.loc["C3L-00011", "note"])  # age missing
    write_summary(df, meta, tmp_path / "out", drops)  # summary of a mapping-built cohort


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"table": "nothing.csv"}, r"nothing\.csv: table not found"),
        (
            {"id": "visit_id"},
            r"visits\.parquet: column\(s\) \['visit_id'\] \(from mapping key 'id'\) not in the table",
        ),
        (
            {"modalities": {"xray": {"kind": "image", "template": "img/{visit}_{side}.png"}}},
            r"visits\.parquet: column\(s\) \['side'\] \(from mapping key 'modalities\.xray\.template'\)",
        ),
        (
            {"labels": {"g": {"column": "grade", "map": {"low": 0}}}},
            r"visits\.parquet: column 'grade' has values the mapping does not cover: \['high'\]",
        ),
        ({"labels": {"g": {"column": "grade"}}}, r"visits\.parquet: column 'grade' is not 0/1"),
        (
            {"split": {"column": "grade"}},
            r"visits\.parquet: column 'grade' has split values not in the mapping",
        ),
        (
            {"modalities": {"xray": {"kind": "picture", "column": "image"}}},
            r"modalities\.xray\.kind 'picture'",
        ),
        (
            {"modalities": {"xray": {"kind": "image", "template": "../{visit}.png"}}},
            r"paths outside the dataset root",
        ),
        ({"lables": {}}, r"unknown mapping key\(s\) \['lables'\]"),
    ],
)
def test_errors_name_file_and_column(tmp_path: Path, change: dict, pattern: str) -> None:
    root = _cohort(tmp_path)
    with pytest.raises(AdapterError, match=pattern):
        table.build(_mapping(root, **change))


def test_csv_table_and_missing_mapping(tmp_path: Path) -> None:
    root = _cohort(tmp_path)
    pd.read_parquet(root / "visits.parquet").to_csv(root / "visits.csv.gz", index=False)
    df, _, _ = table.build(_mapping(root, table="visits.csv.gz"))
    assert len(df) == 24
    with pytest.raises(AdapterError, match=r"nope\.yaml: mapping file not found"):
        table.load_mapping(tmp_path / "nope.yaml")


def test_cli_registers_subcommand() -> None:
    parser = argparse.ArgumentParser()
    table.add_cli(parser.add_subparsers(dest="adapter"))
    args = parser.parse_args(
        ["table", "--mapping", "config/cohorts/mmist_ccrcc.yaml", "--out", "o"]
    )
    assert args.mapping.endswith(".yaml") and args.seed is None and callable(args.func)
