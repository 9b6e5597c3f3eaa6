"""MIMIC-III adapter: the real demo (labs only, no notes), CareVue/MetaVision fixtures, leakage."""

from __future__ import annotations

import argparse
import gzip
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
    # CHARTEVENTS has STORETIME: 92 (hour 46, stored 11:45) enters, 133 (hour 47, stored after
    # the cut-off) does not. LABEVENTS has no STORETIME in v1.4: CHARTTIME alone decides.
    assert s.loc[46, "heart_rate"] == 92 and np.isnan(s.loc[47, "heart_rate"])
    assert s.loc[47, "creatinine"] == pytest.approx(2.2)
    values = s.to_numpy().ravel()
    for after in (140.0, 8.8, 3.3, 133.0):  # at the cut-off, after it, before intime, stored late
        assert not np.isclose(values, after).any()
    assert any(r.startswith("chartevents: 1 event(s) charted") for r in meta.extra["remarks"])
    assert meta.extra["redecoded"] == {}  # the fixtures are valid UTF-8
    s3 = _series(out, df.loc["240003", "ehr"])
    assert (
        s3.loc[1, "heart_rate"] == 95 and not np.isclose(s3.to_numpy().ravel(), 199).any()
    )  # ERROR=1 row
    assert s3.loc[3, "temperature"] == pytest.approx(37.5) and s3.loc[17, "sodium"] == 140


@pytest.mark.parametrize("gz", [False, True])
def test_note_not_utf8_is_kept(tmp_path: Path, gz: bool) -> None:
    """A latin-1 byte in NOTEEVENTS (as in real exports) neither stops the build nor loses the row."""
    root = tmp_path / "m3"
    shutil.copytree(FIX, root)
    notes = root / "NOTEEVENTS.csv"
    raw = notes.read_bytes().replace(
        b"right lower lobe opacity.", b"right lower lobe opacity, T 38.5\xb0C, caf\xe9 \x93ok\x94."
    )
    assert raw.count(b"\xb0") == 1
    if gz:
        notes.unlink()
        with gzip.open(root / "NOTEEVENTS.csv.gz", "wb") as fh:
            fh.write(raw)
    else:
        notes.write_bytes(raw)
    out = tmp_path / "out"
    df, meta = read_manifest(mimic3.run(root, out))
    note = df.set_index("sample_id").loc["240001", "note"]
    assert "T 38.5°C, café “ok”." in note and "RADIOLOGY BEFORE THE CUT-OFF" in note
    name = "NOTEEVENTS.csv.gz" if gz else "NOTEEVENTS.csv"
    assert meta.extra["redecoded"] == {name: 1}
    summary = pd.read_csv(out / "summary.csv")
    row = summary[summary["section"] == "redecoded"]
    assert row[["item", "count"]].values.tolist() == [[name, 1]]
    assert f"{name}: 1 row(s) with text that is not valid UTF-8" in (out / "summary.md").read_text()


def test_external_marks_every_sample(tmp_path: Path) -> None:
    """--external: the same samples, labels and EHR, every one in split ``external`` (validated)."""
    base, _, _ = mimic3.build(FIX, tmp_path / "a", seed=1)
    df, meta = read_manifest(mimic3.run(FIX, tmp_path / "b", seed=1, external=True))
    assert set(df["split"]) == {"external"} and len(df) == len(base) == 2
    cols = ["sample_id", "patient_id", "label_mortality", "label_long_stay", "label_readmission"]
    assert df[cols].equals(base[cols].reset_index(drop=True))
    assert df["ehr"].notna().all() and df["ehr"].tolist() == base["ehr"].tolist()
    assert meta.extra["external"] is True and "fractions" not in meta.extra
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert set(summary["split"]) == {"external", "all"}


def test_itemids_absent_from_dictionaries_are_remarked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "m3"
    shutil.copytree(FIX, root)
    labs = sorted(set(itemid_map("lab")) - {50813, 50912})
    pd.DataFrame({"ROW_ID": range(len(labs)), "ITEMID": labs}).to_csv(
        root / "D_LABITEMS.csv", index=False
    )
    chart = sorted(itemid_map("chart_iii"))
    pd.DataFrame({"ROW_ID": range(len(chart)), "ITEMID": chart}).to_csv(
        root / "D_ITEMS.csv", index=False
    )
    with caplog.at_level("WARNING", logger="medmix.cohorts.icu"):
        _, meta, _ = mimic3.build(root, tmp_path / "out")
    expected = "D_LABITEMS.csv: 2 itemid(s) of the EHR table not in this release: [50813, 50912]"
    assert expected in meta.extra["remarks"]
    assert not any(r.startswith("D_ITEMS") for r in meta.extra["remarks"])  # all present
    assert expected in caplog.text


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
    # readmission: any later admission of the patient starting <= 30 days after this discharge
    by_subject = dict(list(adm.groupby("SUBJECT_ID")))

    def readmitted(r: pd.Series) -> int:
        other = by_subject[r["SUBJECT_ID"]]
        later = other[(other["HADM_ID"] != r["HADM_ID"]) & (other["ADMITTIME"] > r["ADMITTIME"])]
        soon = (later["ADMITTIME"] - r["DISCHTIME"]) <= pd.Timedelta(days=30)
        return int(r["HOSPITAL_EXPIRE_FLAG"] == 0 and soon.any())

    expected = rows.apply(readmitted, axis=1)
    assert expected.sum() > 0  # the check is not vacuous on the demo
    assert (df["label_readmission"].to_numpy() == expected.to_numpy()).all()
    # 0.72 / 0.13 / 0.15 of the patients; stratified on mortality (2 strata), so each split
    # is within one patient per stratum of its exact share
    per_patient = df.groupby("patient_id")["split"].first().value_counts()
    n = df["patient_id"].nunique()
    for split, frac in {"train": 0.72, "val": 0.13, "test": 0.15}.items():
        assert abs(per_patient[split] - frac * n) <= 2, (split, per_patient.to_dict())
    assert not any("itemid(s) of the EHR table" in r for r in meta.extra["remarks"])

    first = df.dropna(subset=["ehr"]).iloc[0]
    s = _series(out, first["ehr"])
    assert s.shape == (48, 46) and s.notna().to_numpy().any()
    summary = pd.read_csv(out / "summary.csv")
    assert "ICU stay shorter than 48 h" in set(summary.loc[summary["section"] == "dropped", "item"])
