"""Generic table adapter: column mappings, splits, survival labels, the MMIST-ccRCC mapping, errors."""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cohorts.adapters import AdapterError, table
from cohorts.adapters.summary import write_summary
from cohorts.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
FIX = Path(__file__).resolve().parents[1] / "fixtures"


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
    for case in ("TCGA-B0-4710", "C3L-00011"):
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
    assert drops.counts == {
        "repeated id in column 'case_id' (first row kept)": 1,  # C3L-00004's second slide row
        "label unknown": 1,  # C3L-00010
    }
    d = df.set_index("sample_id")
    # 1 = alive at 12 months, 0 = died (MMIST's vital_status_12 coding, kept as is)
    assert d["label_vital_status_12m"].to_dict() == {
        "TCGA-B0-4710": 1, "TCGA-B0-4712": 0, "C3L-00004": 1, "C3L-00026": 1, "C3N-00242": 1,
        "C3L-00011": 0, "C3L-00359": 1,
    }  # fmt: skip
    # the official train/test split, with 15 % of the training patients (stratified) in val
    assert d.loc[["C3L-00011", "C3L-00359"], "split"].tolist() == ["test", "test"]
    official_train = ["TCGA-B0-4710", "TCGA-B0-4712", "C3L-00004", "C3L-00026", "C3N-00242"]
    assert d.loc[official_train, "split"].value_counts().to_dict() == {"train": 4, "val": 1}
    assert d.loc["TCGA-B0-4712", "split"] == "train"  # the only death: its stratum keeps it
    assert d.loc["TCGA-B0-4710", "ct"] == "CT/TCGA-B0-4710.nii.gz" and pd.isna(
        d.loc["C3L-00026", "ct"]
    )
    assert d.loc["C3L-00011", "wsi"] == "WSI/C3L-00011.svs" and pd.isna(
        d.loc["TCGA-B0-4712", "wsi"]
    )
    assert d.loc["TCGA-B0-4712", "note"] == (
        "Gender: 0. Age at diagnosis: 7. Tumour grade: 4. "
        "AJCC pathologic stage: 4 (pT 8, pN 1, pM 1)."
    )
    assert pd.isna(d.loc["C3L-00026", "note"])  # age missing
    write_summary(df, meta, tmp_path / "out", drops)  # summary of a mapping-built cohort


def test_val_fraction_and_duplicate_ids(tmp_path: Path) -> None:
    root = _cohort(tmp_path)
    rows = pd.read_parquet(root / "visits.parquet")
    rows["official"] = rows["mrn"].map(lambda p: "test" if p in ("P10", "P11") else "train")
    rows.to_parquet(root / "visits.parquet")
    m = _mapping(root, split={"column": "official", "val_fraction": 0.2, "seed": 3})
    df, meta, _ = table.build(m)
    per_patient = df.groupby("patient_id")["split"].first()
    assert per_patient.value_counts().to_dict() == {"train": 8, "val": 2, "test": 2}
    assert set(per_patient[per_patient == "test"].index) == {"P10", "P11"}
    assert meta.extra["seed"] == 3
    other, _, _ = table.build(m, seed=4)  # the CLI seed re-draws the validation patients
    assert set(other.loc[other["split"] == "test", "patient_id"]) == {"P10", "P11"}
    assert (other["split"].to_numpy() != df["split"].to_numpy()).any()
    with pytest.raises(AdapterError, match=r"val_fraction must be a number in \(0, 1\)"):
        table.build(_mapping(root, split={"column": "official", "val_fraction": 1.5}))
    with pytest.raises(AdapterError, match=r"unknown split key\(s\) \['val_frac'\]"):
        table.build(_mapping(root, split={"column": "official", "val_frac": 0.2}))
    # one row per visit, keyed by patient: an error unless duplicate_ids: first
    with pytest.raises(AdapterError, match=r"\(id\) has duplicate values \(set duplicate_ids"):
        table.build(_mapping(root, id="mrn"))
    df, _, drops = table.build(_mapping(root, id="mrn", duplicate_ids="first"))
    assert len(df) == 12 and drops.counts == {"repeated id in column 'mrn' (first row kept)": 12}
    assert df.set_index("sample_id").loc["P03", "note"] == "visit 0 of patient 3"


def test_multiclass_mapping(tmp_path: Path) -> None:
    root = _cohort(tmp_path)
    rows = pd.read_parquet(root / "visits.parquet")
    rows["stage"] = [["I", "II", "III", "IV"][i % 4] for i in range(len(rows))]
    rows.loc[3, "stage"] = None
    rows.to_parquet(root / "visits.parquet")
    m = _mapping(
        root,
        task_type="multiclass",
        labels={"stage": {"column": "stage", "classes": ["I", "II", "III", "IV"]}},
    )
    out = tmp_path / "out"
    df, meta = read_manifest(table.run(m, out))
    assert meta.task_type == "multiclass" and meta.extra["n_classes"] == 4
    assert meta.extra["classes"] == ["I", "II", "III", "IV"]
    d = df.set_index("sample_id")["label_stage"]
    assert len(df) == 23  # the row without a stage: label unknown, dropped
    assert d.loc["s000"] == 0 and d.loc["s001"] == 1 and d.loc["s010"] == 2 and d.loc["s031"] == 3
    summary = pd.read_csv(out / "summary.csv")
    items = set(summary.loc[summary["section"] == "label", "item"])
    assert items == {"stage=0", "stage=1", "stage=2", "stage=3"}
    all_counts = summary[(summary["section"] == "label") & (summary["split"] == "all")]
    assert all_counts["count"].sum() == 23
    rows.loc[5, "stage"] = "V"
    rows.to_parquet(root / "visits.parquet")
    with pytest.raises(AdapterError, match=r"column 'stage' has values not in classes .*\['V'\]"):
        table.build(m)
    with pytest.raises(AdapterError, match=r"labels\.stage: a multiclass label needs 'classes'"):
        table.build(_mapping(root, task_type="multiclass", labels={"stage": {"column": "stage"}}))


def test_multilabel_mapping(tmp_path: Path) -> None:
    root = _cohort(tmp_path)
    rows = pd.read_parquet(root / "visits.parquet")
    rows["effusion"] = ["yes", "no"] * 12
    rows["edema"] = [0, 0, 1] * 8
    rows.loc[0, "edema"] = None
    rows.to_parquet(root / "visits.parquet")
    m = _mapping(
        root,
        task_type="multilabel",
        labels={
            "effusion": {"column": "effusion", "map": {"yes": 1, "no": 0}},
            "edema": {"column": "edema"},
        },
    )
    out = tmp_path / "out"
    df, meta = read_manifest(table.run(m, out))
    assert meta.task_type == "multilabel" and meta.labels == ["effusion", "edema"]
    assert len(df) == 24  # one label unknown is not all labels unknown: kept
    d = df.set_index("sample_id")
    assert d.loc["s000", "label_effusion"] == 1 and pd.isna(d.loc["s000", "label_edema"])
    assert d.loc["s010", "label_edema"] == 1 and d.loc["s011", "label_effusion"] == 0
    summary = pd.read_csv(out / "summary.csv")
    lab = summary[(summary["section"] == "label") & (summary["split"] == "all")]
    counts = dict(lab[["item", "count"]].itertuples(index=False))
    assert counts == {"effusion": 12, "edema": 8}
    frac = dict(lab[["item", "fraction"]].itertuples(index=False))
    assert frac["edema"] == pytest.approx(8 / 23)  # prevalence among known labels


def test_csv_not_utf8_is_read(tmp_path: Path) -> None:
    """A latin-1 byte in a user table's text column is decoded (cp1252), counted, never fatal."""
    root = _cohort(tmp_path)
    rows = pd.read_parquet(root / "visits.parquet")
    text = rows.drop(columns=["report"]).to_csv(index=False).encode("utf-8")
    lines = text.splitlines()
    header, body = lines[0] + b",report", lines[1:]
    body = [
        line + (b",T 38\xb0C caf\xe9" if i in (0, 5) else b",na\xc3\xafve ok")
        for i, line in enumerate(body)
    ]
    for name in ("visits.csv", "visits.csv.gz"):
        data = b"\n".join([header, *body]) + b"\n"
        if name.endswith(".gz"):
            data = gzip.compress(data)
        (root / name).write_bytes(data)
        df, meta, _ = table.build(_mapping(root, table=name))
        d = df.set_index("sample_id")
        assert len(df) == 24 and d.loc["s000", "note"] == "T 38°C café"
        assert d.loc["s001", "note"] == "naïve ok"  # valid UTF-8 stays as it was
        assert meta.extra["redecoded"] == {name: 2}
        assert f"{name}: 2 row(s) with text that is not valid UTF-8" in meta.extra["remarks"][0]


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
    with pytest.raises(AdapterError, match=r"table: --mapping .*nope\.yaml: file not found"):
        table.load_mapping(tmp_path / "nope.yaml")


def test_cli_registers_subcommand() -> None:
    parser = argparse.ArgumentParser()
    table.add_cli(parser.add_subparsers(dest="adapter"))
    args = parser.parse_args(
        ["table", "--mapping", "config/cohorts/mmist_ccrcc.yaml", "--out", "o"]
    )
    assert args.mapping.endswith(".yaml") and args.seed is None and callable(args.func)


@pytest.mark.parametrize("option", ["--mapping", "--root"])
def test_every_named_path_must_exist(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--mapping or --root that does not exist: one line naming the option and the path,
    exit code 2 (AdapterError from the Python API)."""
    from cohorts.__main__ import main

    root = _cohort(tmp_path)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(_mapping(root)))
    wrong = tmp_path / "no-such-place"
    given = {"--mapping": str(mapping), "--root": str(root), option: str(wrong)}
    out = tmp_path / "out"
    argv = ["table", *[x for kv in given.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("python -m cohorts table: error: ") and f"{option} {wrong}" in err
    assert not (out / "manifest.parquet").exists()
    with pytest.raises(AdapterError, match=rf"{option} .*no-such-place: (file|folder) not found"):
        table.run(given["--mapping"], out, root=given["--root"])
    assert main([*argv[:1], "--mapping", str(mapping), "--out", str(out)]) == 0


def test_mapping_root_must_exist(tmp_path: Path) -> None:
    mapping = {**_mapping(_cohort(tmp_path)), "root": str(tmp_path / "elsewhere")}
    with pytest.raises(
        AdapterError, match=r"root .*elsewhere: folder not found \(or give --root\)"
    ):
        table.build(mapping)
