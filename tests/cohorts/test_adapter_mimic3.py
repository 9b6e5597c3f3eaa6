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

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mimic3"


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
    assert meta.extra["long_stay_basis"] == "icu" and meta.extra["min_icu_hours"] == 48
    # long_stay by default: ICU length of stay (4 d and 5 d) > 7 d
    assert df.loc[
        "240001", ["label_mortality", "label_long_stay", "label_readmission"]
    ].tolist() == [0, 0, 1]
    assert df.loc[
        "240003", ["label_mortality", "label_long_stay", "label_readmission"]
    ].tolist() == [1, 0, 0]
    # hospital length of stay (9 d 2 h and 8 d 14 h) > 7 d with long_stay_basis="hospital"
    hosp, _ = read_manifest(
        mimic3.run(FIX, tmp_path / "hospital", seed=1, long_stay_basis="hospital")
    )
    assert hosp.set_index("sample_id")["label_long_stay"].to_dict() == {"240001": 1, "240003": 1}

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
    with pytest.raises(AdapterError, match=r"MIMIC-III: --mimic .*nowhere: folder not found"):
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
    # long_stay (default basis icu): the ICU stay's LOS column (days) > 7
    assert (df["label_long_stay"].to_numpy() == (rows["LOS"] > 7).to_numpy()).all()
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


def _demo_counts(df: pd.DataFrame) -> dict[str, int]:
    return {k: int(df[f"label_{k}"].sum()) for k in ("mortality", "long_stay", "readmission")}


def test_real_demo_prevalence_by_long_stay_basis(realdata: Path, tmp_path: Path) -> None:
    """The MIMIC-III demo's outcome prevalence, ICU and hospital length of stay (docs/adapters.md)."""
    demo = realdata / "mimic3_demo"
    icu, meta = read_manifest(mimic3.run(demo, tmp_path / "icu"))
    hosp, hmeta = read_manifest(mimic3.run(demo, tmp_path / "hosp", long_stay_basis="hospital"))
    assert meta.extra["long_stay_basis"] == "icu" and hmeta.extra["long_stay_basis"] == "hospital"
    assert len(icu) == len(hosp) == 71
    assert _demo_counts(icu) == {"mortality": 26, "long_stay": 24, "readmission": 6}
    assert _demo_counts(hosp) == {"mortality": 26, "long_stay": 47, "readmission": 6}
    # both against the raw tables: ICUSTAYS.LOS (days) and DISCHTIME - ADMITTIME
    adm = pd.read_csv(demo / "ADMISSIONS.csv.gz", parse_dates=["ADMITTIME", "DISCHTIME"])
    stays = pd.read_csv(demo / "ICUSTAYS.csv.gz", parse_dates=["INTIME", "OUTTIME"])
    rows = stays.merge(adm, on=["SUBJECT_ID", "HADM_ID"]).set_index(stays["ICUSTAY_ID"].astype(str))
    rows = rows.loc[icu["sample_id"]]
    icu_days = (rows["OUTTIME"] - rows["INTIME"]).dt.total_seconds() / 86400
    assert ((icu_days > 7) == (rows["LOS"] > 7)).all()
    assert (icu["label_long_stay"].to_numpy() == (rows["LOS"] > 7).to_numpy()).all()
    hosp_days = (rows["DISCHTIME"] - rows["ADMITTIME"]).dt.total_seconds() / 86400
    hosp = hosp.set_index("sample_id").loc[icu["sample_id"]]
    assert (hosp["label_long_stay"].to_numpy() == (hosp_days > 7).to_numpy()).all()


@pytest.mark.parametrize(
    ("min_icu_hours", "excluded", "kept"),
    [(0, 0, 121), (24, 22, 108), (None, 63, 71), (72, 91, 44)],
)
def test_real_demo_icu_stay_exclusion(
    realdata: Path, tmp_path: Path, min_icu_hours: float | None, excluded: int, kept: int
) -> None:
    """ICU stays shorter than min_icu_hours (default 48 h, the observation window) are dropped;
    the count follows the setting and the raw ICUSTAYS table."""
    demo = realdata / "mimic3_demo"
    df, meta, drops = mimic3.build(demo, tmp_path / "out", min_icu_hours=min_icu_hours)
    hours = 48 if min_icu_hours is None else min_icu_hours
    assert meta.extra["min_icu_hours"] == hours and len(df) == kept
    reason = f"ICU stay shorter than {hours:g} h"
    assert drops.counts.get(reason, 0) == excluded
    # independently: adult stays of known admissions with outtime - intime < the setting
    stays = pd.read_csv(demo / "ICUSTAYS.csv.gz", parse_dates=["INTIME", "OUTTIME"])
    pat = pd.read_csv(demo / "PATIENTS.csv.gz", parse_dates=["DOB"])
    st = stays.merge(pat[["SUBJECT_ID", "DOB"]], on="SUBJECT_ID")
    age = st["INTIME"].dt.year - st["DOB"].dt.year
    adult = st[age >= 18]
    short = (adult["OUTTIME"] - adult["INTIME"]) < pd.Timedelta(hours=hours)
    assert int(short.sum()) == excluded


@pytest.mark.parametrize("option", ["--mimic", "--split-file"])
def test_every_named_path_must_exist(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cohorts.__main__ import main

    wrong = tmp_path / "no-such-place"
    given = {"--mimic": str(FIX), option: str(wrong)}
    out = tmp_path / "out"
    argv = ["mimic3", *[x for kv in given.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("python -m cohorts mimic3: error: ") and f"{option} {wrong}" in err
    assert not (out / "manifest.parquet").exists()
    api = {k.lstrip("-").replace("-", "_"): v for k, v in given.items()}
    with pytest.raises(AdapterError, match=rf"{option} .*no-such-place: (file|folder) not found"):
        mimic3.run(api.pop("mimic"), out, **api)


def test_cli_options_and_help(tmp_path: Path) -> None:
    from cohorts.__main__ import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["mimic3"].format_help()
    for flag in ("--long-stay-basis", "--min-icu-hours", "--split-file", "--split-missing"):
        assert flag in help_text
    out = tmp_path / "out"
    argv = ["mimic3", "--mimic", str(FIX), "--out", str(out), "--long-stay-basis", "hospital"]
    assert main([*argv, "--min-icu-hours", "0"]) == 0
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta.extra["long_stay_basis"] == "hospital" and meta.extra["min_icu_hours"] == 0
    assert sorted(df["sample_id"]) == ["240001", "240002", "240003"]  # the 12 h stay kept
    with pytest.raises(AdapterError, match=r"min_icu_hours .* must be a number >= 0"):
        mimic3.run(FIX, out, min_icu_hours=-1)
