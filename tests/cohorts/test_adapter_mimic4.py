"""MIMIC-IV-MM adapter on fixtures in the published layouts: outcomes, modalities, the 48 h leakage rule."""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cohorts.adapters import AdapterError, mimic4
from cohorts.adapters.ehr import HourlyAccumulator
from cohorts.adapters.readers import TIMESTAMP, scan_csv
from cohorts.manifest import read_manifest

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mimic4"
DICOM = "0a1b2c3d-{:08d}-1111aaaa-2222bbbb-3333cccc"


def _jpg(subject: int, study: int, n: int) -> str:
    return f"files/p{str(subject)[:2]}/p{subject}/s{study}/{DICOM.format(n)}.jpg"


@pytest.fixture()
def physionet(tmp_path: Path) -> Path:
    """The fixtures as PhysioNet ships them: every table gzipped, the JPGs present."""
    root = tmp_path / "physionet"
    shutil.copytree(FIX, root)
    for csv in root.rglob("*.csv"):
        with open(csv, "rb") as src, gzip.open(f"{csv}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        csv.unlink()
    meta = pd.read_csv(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz")
    for i, r in enumerate(meta.itertuples(), 1):
        f = root / "mimic-cxr-jpg" / _jpg(r.subject_id, r.study_id, i)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"jpg")
    return root


def _run(root: Path, out: Path, **kw) -> tuple[pd.DataFrame, object]:
    kw.setdefault("note", root / "mimic-iv-note")
    kw.setdefault("cxr", root / "mimic-cxr-jpg")
    df, meta = read_manifest(mimic4.run(root / "mimic-iv", out, **kw))
    return df.set_index("sample_id"), meta


def test_outcomes_modalities_and_drops(physionet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    df, meta = _run(physionet, out)
    assert meta.modalities == {
        "frontal": "image",
        "lateral": "image",
        "note": "text",
        "ehr": "timeseries",
    }
    assert sorted(df.index) == ["30000001", "30000002", "30000007"]
    labels = df[["label_mortality", "label_long_stay", "label_readmission"]]
    # long_stay by default: ICU length of stay (3.5 d, 3 d, 2 d) > 7 d
    assert labels.loc["30000001"].tolist() == [0, 0, 1]  # readmitted after 16 d
    assert labels.loc["30000002"].tolist() == [1, 0, 0]  # died after the cut-off
    assert labels.loc["30000007"].tolist() == [0, 0, 0]  # next admission after 57 d
    assert meta.extra["long_stay_basis"] == "icu"
    hosp, hmeta = _run(physionet, tmp_path / "hospital", long_stay_basis="hospital")
    # hospital length of stay: 9.8 d, 5 d, 3 d
    assert hosp["label_long_stay"].to_dict() == {"30000001": 1, "30000002": 0, "30000007": 0}
    assert hmeta.extra["long_stay_basis"] == "hospital"
    assert df.loc["30000002", ["frontal", "lateral", "note"]].isna().all()
    assert pd.isna(df.loc["30000007", "ehr"])  # no event inside its window
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    # every path is relative to the common root and exists there
    root = Path(meta.root)
    assert root == physionet.parent.resolve()
    for col in ("frontal", "lateral", "ehr"):
        for rel in df[col].dropna():
            assert not Path(rel).is_absolute() and (root / rel).is_file()
    summary = pd.read_csv(out / "summary.csv")
    dropped = dict(
        summary.loc[summary["section"] == "dropped", ["item", "count"]].itertuples(index=False)
    )
    assert dropped == {
        "ICU stay shorter than 48 h": 1,
        "age under 18": 1,
        "admission not in the admissions table": 1,
    }


def test_leakage_rule(physionet: Path, tmp_path: Path) -> None:
    """Nothing recorded at or after intime + 48 h (or before the window) enters a sample."""
    out = tmp_path / "out"
    df, meta = _run(physionet, out)
    row = df.loc["30000001"]
    # CXR: the last frontal and lateral before the cut-off (study 2, 21:00 on day 2), not the later ones
    assert row["frontal"] == f"physionet/mimic-cxr-jpg/{_jpg(10000032, 50000002, 2)}"
    assert row["lateral"] == f"physionet/mimic-cxr-jpg/{_jpg(10000032, 50000002, 3)}"
    # note: nearest before the cut-off; the one charted before but stored after is excluded
    assert "NEAREST BEFORE THE CUT-OFF" in row["note"] and '""stable""' not in row["note"]
    assert "AFTER" not in row["note"] and "LATE SIGNED" not in row["note"]
    s = pd.read_parquet(Path(meta.root) / row["ehr"]).set_index("hour")
    assert s.shape == (48, 46)
    assert s.loc[0, "heart_rate"] == pytest.approx(85.0)  # mean of 80 and 90 in hour 0
    # hour 47: 100 (23:59, stored 23:59:40) is inside; 123 (23:30, stored 00:05) is not
    assert s.loc[47, "heart_rate"] == pytest.approx(100.0)
    # a lab drawn at hour 46 and stored before the cut-off enters; one drawn at hour 47
    # whose result was stored after the cut-off (lactate 4.4) does not
    assert s.loc[46, "potassium"] == pytest.approx(4.6)
    assert np.isnan(s.loc[47, "lactate"])
    assert s.loc[5, "temperature"] == pytest.approx(37.0)  # 98.6 °F
    assert s.loc[2, "fio2"] == pytest.approx(40.0)
    assert s.loc[6, "creatinine"] == pytest.approx(1.2) and s.loc[34, "lactate"] == pytest.approx(
        2.5
    )
    values = s.to_numpy().ravel()
    # at cut-off, after, before intime, ED lab, implausible, stored after the cut-off (chart, lab)
    for leaked in (150.0, 9.9, 70.0, 130.0, 999.0, 123.0, 4.4):
        assert not np.isclose(values, leaked).any(), leaked
    assert np.isnan(s["spo2"]).all()  # the only SpO2 is after the cut-off
    late = [r for r in meta.extra["remarks"] if "stored after it were left out" in r]
    assert sorted(late) == [
        "chartevents: 1 event(s) charted before the prediction time but stored after it "
        "were left out (leakage rule)",
        "labevents: 1 event(s) charted before the prediction time but stored after it "
        "were left out (leakage rule)",
    ]


def test_storetime_rule_on_the_accumulator() -> None:
    """storetime at the cut-off excludes an event; a null storetime does not; no column: charttime alone."""
    windows = pd.DataFrame(
        {"sample": [0], "subject_id": [1], "intime": [pd.Timestamp("2100-01-01 00:00")]}
    )
    t = pd.Timestamp("2100-01-02 23:00")  # hour 47
    events = pd.DataFrame(
        {
            "subject_id": [1, 1, 1],
            "itemid": [220045, 220045, 220045],
            "charttime": [t, t, t],
            "valuenum": [60.0, 70.0, 80.0],
            "storetime": [t, pd.NaT, pd.Timestamp("2100-01-03 00:00")],  # before, null, at cut-off
        }
    )
    acc = HourlyAccumulator(windows, {220045: "heart_rate"})
    acc.add(events)
    cells = acc.cells()
    assert acc.n_events == 2 and acc.n_stored_late == 1
    assert cells["value"].tolist() == [pytest.approx(65.0)] and cells["hour"].tolist() == [47]
    acc = HourlyAccumulator(windows, {220045: "heart_rate"})
    acc.add(events.drop(columns="storetime"))
    assert acc.n_events == 3 and acc.n_stored_late == 0


def test_absent_jpg_falls_back(physionet: Path, tmp_path: Path) -> None:
    (physionet / "mimic-cxr-jpg" / _jpg(10000032, 50000002, 2)).unlink()
    df, _ = _run(physionet, tmp_path / "a")
    assert df.loc["30000001", "frontal"].endswith(
        _jpg(10000032, 50000001, 1)
    )  # the earlier AP film
    df, _ = _run(physionet, tmp_path / "b", check_images=False)
    assert df.loc["30000001", "frontal"].endswith(_jpg(10000032, 50000002, 2))


def test_without_cxr_and_note(physionet: Path, tmp_path: Path) -> None:
    """No CXR and no note at all: those modalities are entirely missing, the EHR is still built."""
    df, meta = _run(physionet, tmp_path / "c", note=None, cxr=None)
    assert df[["frontal", "lateral", "note"]].isna().all().all() and df["ehr"].notna().sum() == 2
    assert any("MIMIC-IV-Note" in r for r in meta.extra["remarks"])
    assert Path(meta.root) == (tmp_path / "c").resolve()


def test_bad_input_names_file_and_column(physionet: Path, tmp_path: Path) -> None:
    lab = physionet / "mimic-iv" / "hosp" / "labevents.csv.gz"
    with gzip.open(lab, "rt") as fh:
        text = fh.read()
    with gzip.open(lab, "wt") as fh:
        fh.write(text.replace(",valuenum,", ",value_num,", 1))
    with pytest.raises(
        AdapterError, match=r"hosp/labevents\.csv\.gz: missing column\(s\) \['valuenum'\]"
    ):
        _run(physionet, tmp_path / "out")
    (physionet / "mimic-iv" / "icu" / "icustays.csv.gz").unlink()
    with pytest.raises(AdapterError, match=r"MIMIC-IV: table 'icu/icustays' not found"):
        _run(physionet, tmp_path / "out")
    meta = physionet / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz"
    meta.unlink()
    with pytest.raises(
        AdapterError, match=r"MIMIC-CXR-JPG: table 'mimic-cxr-2.0.0-metadata' not found"
    ):
        mimic4.load_images(physionet / "mimic-cxr-jpg", {10000032}, physionet)


def test_streaming_reader_filters_batches(physionet: Path) -> None:
    path = physionet / "mimic-iv" / "icu" / "chartevents.csv.gz"
    cols = {
        "subject_id": pa.int64(),
        "itemid": pa.int64(),
        "charttime": TIMESTAMP,
        "valuenum": pa.float64(),
    }
    batches = list(scan_csv(path, cols, isin={"itemid": [220045]}, block_size=512))
    assert len(batches) > 1  # the file is read in pieces, never whole
    whole = pd.concat(batches)
    assert set(whole["itemid"]) == {220045} and len(whole) == 9
    assert str(whole["charttime"].dtype).startswith("datetime64")


def test_study_times() -> None:
    t = mimic4.study_times(pd.Series([21800507, 21800508]), pd.Series(["73000.000", "210000.531"]))
    assert t.tolist() == [pd.Timestamp("2180-05-07 07:30:00"), pd.Timestamp("2180-05-08 21:00:00")]


def test_cli_registers_subcommand() -> None:
    parser = argparse.ArgumentParser()
    mimic4.add_cli(parser.add_subparsers(dest="adapter"))
    args = parser.parse_args(["mimic4", "--mimic", "m", "--cxr", "c", "--out", "o"])
    assert (
        args.cxr == "c" and args.note is None and not args.no_check_images and callable(args.func)
    )


@pytest.mark.parametrize("option", ["--mimic", "--note", "--cxr", "--split-file"])
def test_every_named_path_must_exist(
    physionet: Path, tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --note (or --cxr, --mimic, --split-file) that does not exist is an error naming the
    option and the path (exit code 2), not a remark with every note silently missing."""
    from cohorts.__main__ import main

    wrong = tmp_path / "no-such-place"
    given = {
        "--mimic": str(physionet / "mimic-iv"),
        "--note": str(physionet / "mimic-iv-note"),
        "--cxr": str(physionet / "mimic-cxr-jpg"),
        option: str(wrong),
    }
    out = tmp_path / "out"
    argv = ["mimic4", *[x for kv in given.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("python -m cohorts mimic4: error: ") and f"{option} {wrong}" in err
    assert not (out / "manifest.parquet").exists()
    api = {k.lstrip("-").replace("-", "_"): v for k, v in given.items()}
    mimic = api.pop("mimic")
    with pytest.raises(AdapterError, match=rf"{option} .*no-such-place: (file|folder) not found"):
        mimic4.run(mimic, out, **api)


def test_cli_long_stay_basis_and_min_icu_hours(
    physionet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cohorts.__main__ import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["mimic4"].format_help()
    for flag in ("--long-stay-basis", "--min-icu-hours", "--split-file", "--split-missing"):
        assert flag in help_text
    out = tmp_path / "out"
    argv = ["mimic4", "--mimic", str(physionet / "mimic-iv"), "--out", str(out)]
    assert main([*argv, "--long-stay-basis", "hospital", "--min-icu-hours", "24"]) == 0
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta.extra["long_stay_basis"] == "hospital" and meta.extra["min_icu_hours"] == 24
    # the 24 h stay (30000003) is now kept
    assert "30000003" in set(df["sample_id"])
    with pytest.raises(SystemExit):  # argparse: not a choice
        main([*argv, "--long-stay-basis", "ward"])
    with pytest.raises(AdapterError, match=r"long_stay_basis .* must be one of"):
        mimic4.run(physionet / "mimic-iv", out, long_stay_basis="ward")
