"""MIMIC-III adapter: the real demo (labs only, no notes), CareVue/MetaVision fixtures, leakage."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.adapters import AdapterError, mimic3
from cohorts.adapters.ehr_variables import NAMES, VARIABLES, itemid_map, markdown_table
from cohorts.manifest import read_manifest

FIX = Path(__file__).resolve().parent / "fixtures" / "mimic3"


def _series(out: Path, rel: str) -> pd.DataFrame:
    return pd.read_parquet(out / rel).set_index("hour")


def test_variable_table() -> None:
    assert len(VARIABLES) == 46 and len(set(NAMES)) == 46
    chart3, chart4, lab = itemid_map("chart_iii"), itemid_map("chart_iv"), itemid_map("lab")
    assert chart3[211] == chart3[220045] == chart4[220045] == "heart_rate"
    assert lab[50912] == "creatinine" and lab[50813] == "lactate"
    with pytest.raises(ValueError, match="unknown itemid source"):
        itemid_map("outputevents")
    # the documented itemid table is the code's table
    assert markdown_table() in (FIX.parents[2] / "docs" / "adapters.md").read_text()


def test_fixture_chart_notes_and_leakage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    df, meta = read_manifest(mimic3.run(FIX, out, seed=1))
    df = df.set_index("sample_id")
    assert meta.task_type == "binary" and meta.labels == ["mortality", "long_stay", "readmission"]
    assert meta.modalities == {"note": "text", "ehr": "timeseries"}
    assert sorted(df.index) == ["240001", "240003"]  # 240002: 12 h ICU stay
    assert df.loc[
        "240001", ["label_mortality", "label_long_stay", "label_readmission"]
    ].tolist() == [0, 1, 1]
    assert df.loc[
        "240003", ["label_mortality", "label_long_stay", "label_readmission"]
    ].tolist() == [1, 1, 0]

    # the radiology report before the cut-off; not the nearer nursing note, the ISERROR one or a later one
    note = df.loc["240001", "note"]
    assert "RADIOLOGY BEFORE THE CUT-OFF" in note and '"line placement"' in note
    assert pd.isna(df.loc["240003", "note"])

    s = _series(out, df.loc["240001", "ehr"])
    assert list(s.index) == list(range(48)) and list(s.columns) == list(NAMES)
    assert s.loc[1, "heart_rate"] == 88 and s.loc[1, "temperature"] == pytest.approx(
        38.0
    )  # CareVue °F -> °C
    assert s.loc[2, "fio2"] == pytest.approx(40.0)  # FiO2 charted as a fraction -> %
    assert s.loc[18, "creatinine"] == pytest.approx(1.4)
    values = s.to_numpy().ravel()
    for after in (140.0, 8.8, 3.3):  # at the cut-off, after it, before intime
        assert not np.isclose(values, after).any()
    s3 = _series(out, df.loc["240003", "ehr"])
    assert (
        s3.loc[1, "heart_rate"] == 95 and not np.isclose(s3.to_numpy().ravel(), 199).any()
    )  # ERROR=1 row
    assert s3.loc[3, "temperature"] == pytest.approx(37.5) and s3.loc[17, "sodium"] == 140


def test_bad_input_names_file_and_column(tmp_path: Path) -> None:
    root = tmp_path / "m3"
    shutil.copytree(FIX, root)
    adm = root / "ADMISSIONS.csv"
    adm.write_text(adm.read_text().replace('"HOSPITAL_EXPIRE_FLAG"', '"EXPIRE_FLAG_H"'))
    with pytest.raises(
        AdapterError, match=r"ADMISSIONS\.csv: missing column\(s\) \['hospital_expire_flag'\]"
    ):
        mimic3.run(root, tmp_path / "out")
    shutil.copy(FIX / "ADMISSIONS.csv", adm)
    (root / "ICUSTAYS.csv").unlink()
    with pytest.raises(
        AdapterError, match=r"MIMIC-III: table 'ICUSTAYS' not found; looked for .*ICUSTAYS\.csv\.gz"
    ):
        mimic3.run(root, tmp_path / "out")
    with pytest.raises(AdapterError, match=r"MIMIC-III: folder .*nowhere not found"):
        mimic3.run(tmp_path / "nowhere", tmp_path / "out")


def test_cli_registers_subcommand() -> None:
    parser = argparse.ArgumentParser()
    mimic3.add_cli(parser.add_subparsers(dest="adapter"))
    args = parser.parse_args(["mimic3", "--mimic", "m", "--out", "o", "--external"])
    assert args.external and args.hours == 48 and callable(args.func)


def test_real_demo(realdata: Path, tmp_path: Path) -> None:
    demo = realdata / "mimic3_demo"
    out = tmp_path / "out"
    df, meta = read_manifest(mimic3.run(demo, out, seed=0))
    assert len(df) > 50
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert df["note"].isna().all()  # NOTEEVENTS is empty in the demo
    assert df["ehr"].notna().mean() > 0.9  # labs-based EHR
    assert any("CHARTEVENTS" in r for r in meta.extra["remarks"])

    # outcomes against the raw tables, independently of the adapter
    adm = pd.read_csv(demo / "ADMISSIONS.csv.gz", parse_dates=["ADMITTIME", "DISCHTIME"])
    stays = pd.read_csv(demo / "ICUSTAYS.csv.gz")
    rows = stays.merge(adm, on=["SUBJECT_ID", "HADM_ID"]).set_index(stays["ICUSTAY_ID"].astype(str))
    rows = rows.loc[df["sample_id"]]
    assert int(df["label_mortality"].sum()) == int(rows["HOSPITAL_EXPIRE_FLAG"].sum())
    assert (df["label_mortality"].to_numpy() == rows["HOSPITAL_EXPIRE_FLAG"].to_numpy()).all()
    los = (rows["DISCHTIME"] - rows["ADMITTIME"]).dt.total_seconds() / 86400
    assert (df["label_long_stay"].to_numpy() == (los > 7).to_numpy()).all()

    first = df.dropna(subset=["ehr"]).iloc[0]
    s = _series(out, first["ehr"])
    assert s.shape == (48, 46) and s.notna().to_numpy().any()
    summary = pd.read_csv(out / "summary.csv")
    assert "ICU stay shorter than 48 h" in set(summary.loc[summary["section"] == "dropped", "item"])
