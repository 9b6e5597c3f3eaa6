"""MIMIC-III v1.4 -> manifest (the external-validation cohort).

Reads the published upper-case ``.csv.gz`` (or ``.csv``) tables from one folder:
``ADMISSIONS``, ``PATIENTS``, ``ICUSTAYS`` (required), ``LABEVENTS``, ``CHARTEVENTS`` (CareVue
and MetaVision itemids) and ``NOTEEVENTS`` (category ``Radiology``) — each optional: a table
that is absent (the demo has no CHARTEVENTS; its NOTEEVENTS is empty) leaves that part missing
and is listed under Remarks in the summary. Samples, outcomes and the 48 h leakage rule are
those of :mod:`.icu`; EHR variables and itemids are :mod:`.ehr_variables`. Modalities:
``note`` (text) and ``ehr`` (per-stay Parquet under ``{out}/ehr``, the dataset root).
``--mimic`` and ``--split-file`` must exist when named: otherwise an :class:`AdapterError`
names the option and the path (exit code 2 on the command line).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from cohorts.adapters import (
    AdapterError,
    add_common_args,
    cli_errors,
    require_path,
)
from cohorts.adapters.ehr_variables import itemid_map
from cohorts.adapters.icu import (
    ADMISSION_COLUMNS,
    IcuSources,
    add_events,
    add_icu_args,
    build_icu,
    check_dictionaries,
    check_settings,
    dataset_root,
    event_columns,
    stay_columns,
)
from cohorts.adapters.readers import TIMESTAMP, find_optional, find_table, read_csv, scan_csv
from cohorts.adapters.summary import Drops, write_cohort
from cohorts.manifest import ManifestMeta

log = logging.getLogger("medmix.cohorts.mimic3")

ADAPTER_VERSION = "1"
DATASET = "MIMIC-III"
MODALITIES = {"note": "text", "ehr": "timeseries"}
I64, F64, STR = pa.int64(), pa.float64(), pa.string()


def age_years(birth: pd.Series, at: pd.Series) -> pd.Series:
    """Whole years from ``birth`` to ``at`` (MIMIC-III shifts ages over 89 to ~300)."""
    before = (at.dt.month * 100 + at.dt.day) < (birth.dt.month * 100 + birth.dt.day)
    return (at.dt.year - birth.dt.year - before.astype(int)).astype("float64")


def load_sources(root: str | Path) -> IcuSources:
    root = require_path(root, "--mimic", "folder", DATASET)
    redecoded: dict[str, int] = {}
    adm = read_csv(find_table(root, "ADMISSIONS", DATASET), ADMISSION_COLUMNS, redecoded=redecoded)
    pat = read_csv(
        find_table(root, "PATIENTS", DATASET),
        {"subject_id": I64, "dob": TIMESTAMP},
        redecoded=redecoded,
    )
    stays = read_csv(
        find_table(root, "ICUSTAYS", DATASET), stay_columns("icustay_id"), redecoded=redecoded
    ).rename(columns={"icustay_id": "stay_id"})
    stays = stays.merge(pat.drop_duplicates("subject_id"), on="subject_id", how="left")
    stays["age"] = age_years(stays["dob"], stays["intime"])
    stays = stays.drop(columns=["dob"])
    subjects = set(stays["subject_id"].dropna().astype(int))
    remarks: list[str] = []
    src = IcuSources(admissions=adm, stays=stays, remarks=remarks, redecoded=redecoded)

    lab_ids, chart_ids = itemid_map("lab"), itemid_map("chart_iii")
    # v1.4 LABEVENTS has no STORETIME: CHARTTIME alone decides
    labs = find_optional(root, "LABEVENTS", remarks, "laboratory values", DATASET)
    add_events(src, "labevents", labs, lab_ids, subjects)
    chart = find_optional(
        root, "CHARTEVENTS", remarks, "chart vitals (the EHR holds labs only)", DATASET
    )
    if chart is not None:
        src.events.append(
            (
                "chartevents",
                lambda: _chart_batches(chart, chart_ids, subjects, redecoded),
                chart_ids,
            )
        )
    check_dictionaries(
        src,
        find_optional(root, "D_LABITEMS", [], "lab dictionary", DATASET),
        find_optional(root, "D_ITEMS", [], "item dictionary", DATASET),
        lab_ids,
        chart_ids,
    )
    notes = find_optional(root, "NOTEEVENTS", remarks, "radiology reports", DATASET)
    if notes is not None:
        src.notes = lambda: _radiology_notes(notes, subjects, redecoded)
    return src


def _chart_batches(
    path: Path, itemids: dict[int, str], subjects: set[int], redecoded: dict[str, int]
) -> Iterator[pd.DataFrame]:
    cols = event_columns(path, error=F64)  # with STORETIME, as v1.4 publishes it
    isin = {"itemid": itemids, "subject_id": subjects}
    for b in scan_csv(path, cols, isin=isin, redecoded=redecoded):
        yield b[b["error"].fillna(0) != 1]


def _radiology_notes(
    path: Path, subjects: set[int], redecoded: dict[str, int]
) -> Iterator[pd.DataFrame]:
    cols = {
        "subject_id": I64,
        "charttime": TIMESTAMP,
        "storetime": TIMESTAMP,
        "category": STR,
        "iserror": F64,
        "text": STR,
    }
    isin = {"subject_id": subjects}
    for b in scan_csv(path, cols, isin=isin, newlines_in_values=True, redecoded=redecoded):
        keep = (b["category"].fillna("").str.strip().str.lower() == "radiology") & (
            b["iserror"].fillna(0) != 1
        )
        yield b.loc[keep, ["subject_id", "charttime", "storetime", "text"]]


def build(
    root: str | Path,
    out: str | Path,
    ehr_dir: str | Path | None = None,
    seed: int = 0,
    dataset: str = "mimic3",
    hours: int = 48,
    min_icu_hours: float | None = None,
    external: bool = False,
    long_stay_basis: str = "icu",
    split_file: str | Path | None = None,
    split_missing: str = "drop",
) -> tuple[pd.DataFrame, ManifestMeta, Drops]:
    """MIMIC-III folder -> (manifest frame, meta, drops); EHR files go to ``ehr_dir`` (default ``{out}/ehr``).

    ``root`` and ``split_file`` must exist: an :class:`AdapterError` names the option and the path.
    """
    require_path(root, "--mimic", "folder", DATASET)
    require_path(split_file, "--split-file", "file", DATASET)
    if external and split_file is not None:
        raise AdapterError(
            f"{DATASET}: --external (every sample split=external) and --split-file exclude each other"
        )
    check_settings(hours, min_icu_hours, long_stay_basis)
    out = Path(out)
    ehr_dir = Path(ehr_dir) if ehr_dir else out / "ehr"
    src = load_sources(root)
    df, meta, drops = build_icu(
        src,
        dataset=dataset,
        adapter="mimic3",
        adapter_version=ADAPTER_VERSION,
        modalities=MODALITIES,
        root=dataset_root(out, ehr_dir),
        ehr_dir=ehr_dir,
        seed=seed,
        hours=hours,
        min_icu_hours=min_icu_hours,
        long_stay_basis=long_stay_basis,
        split_file=split_file,
        split_missing=split_missing,
    )
    if external:  # validation of models trained elsewhere: no train/val/test here
        df["split"] = "external"
        meta.extra["external"] = True
        meta.extra.pop("fractions", None)
    meta.extra["source"] = str(Path(root).resolve())
    return df, meta, drops


def run(root: str | Path, out: str | Path, **kw) -> Path:
    df, meta, drops = build(root, out, **kw)
    path = write_cohort(df, meta, out, drops)
    log.info("mimic3: %d samples written to %s (%d dropped)", len(df), path, drops.total())
    return path


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mimic3", help="MIMIC-III v1.4 (ICU stays, labs/chart EHR, radiology notes) -> manifest"
    )
    p.add_argument(
        "--mimic", required=True, help="folder with ADMISSIONS.csv.gz, ICUSTAYS.csv.gz, …"
    )
    p.add_argument("--ehr-dir", help="where the per-stay EHR Parquet files go (default: {out}/ehr)")
    add_icu_args(p)
    p.add_argument(
        "--external",
        action="store_true",
        help="mark every sample split=external (external validation)",
    )
    add_common_args(p, "mimic3")
    p.set_defaults(func=_main)


@cli_errors("mimic3")
def _main(args: argparse.Namespace) -> int:
    run(
        args.mimic,
        args.out,
        ehr_dir=args.ehr_dir,
        seed=args.seed,
        dataset=args.dataset,
        hours=args.hours,
        min_icu_hours=args.min_icu_hours,
        long_stay_basis=args.long_stay_basis,
        split_file=args.split_file,
        split_missing=args.split_missing,
        external=args.external,
    )
    return 0
