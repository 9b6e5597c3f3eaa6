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
from typing import Any

import pandas as pd
import pyarrow as pa

from cohorts.adapters import AdapterError, add_common_args, cli_errors, require_path
from cohorts.adapters.icu import (
    IcuSettings,
    add_icu_args,
    build_icu,
    cli_settings,
    dataset_root,
)
from cohorts.adapters.icu_tables import IcuRelease, IcuSources, load_icu
from cohorts.adapters.readers import TIMESTAMP, find_optional, scan_csv
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


RELEASE = IcuRelease(
    dataset=DATASET,
    admissions="ADMISSIONS",
    patients="PATIENTS",
    icustays="ICUSTAYS",
    labevents="LABEVENTS",  # v1.4 LABEVENTS has no STORETIME: CHARTTIME alone decides
    chartevents="CHARTEVENTS",  # CareVue and MetaVision, with STORETIME as v1.4 publishes it
    d_labitems="D_LABITEMS",
    d_items="D_ITEMS",
    stay_id="icustay_id",
    patient_columns={"subject_id": I64, "dob": TIMESTAMP},
    age=lambda stays: age_years(stays["dob"], stays["intime"]),
    chart_items="chart_iii",
    chart_missing="chart vitals (the EHR holds labs only)",
    chart_flagged=True,
)


def load_sources(root: str | Path) -> IcuSources:
    root = require_path(root, "--mimic", "folder", DATASET)
    src, subjects = load_icu(root, RELEASE)
    notes = find_optional(root, "NOTEEVENTS", src.remarks, "radiology reports", DATASET)
    if notes is not None:
        src.notes = lambda: _radiology_notes(notes, subjects, src.redecoded)
    return src


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
    external: bool = False,
    **settings: Any,
) -> tuple[pd.DataFrame, ManifestMeta, Drops]:
    """MIMIC-III folder -> (manifest frame, meta, drops); EHR files go to ``ehr_dir`` (default ``{out}/ehr``).

    ``settings``: the fields of :class:`IcuSettings` (``dataset`` default ``mimic3``). ``root``
    and ``split_file`` must exist: an :class:`AdapterError` names the option and the path.
    """
    s = IcuSettings(**{"dataset": "mimic3", **settings})
    require_path(root, "--mimic", "folder", DATASET)
    require_path(s.split_file, "--split-file", "file", DATASET)
    if external and s.split_file is not None:
        raise AdapterError(
            f"{DATASET}: --external (every sample split=external) and --split-file exclude each other"
        )
    s.check()
    out = Path(out)
    ehr_dir = Path(ehr_dir) if ehr_dir else out / "ehr"
    src = load_sources(root)
    df, meta, drops = build_icu(
        src,
        adapter="mimic3",
        adapter_version=ADAPTER_VERSION,
        modalities=MODALITIES,
        root=dataset_root(out, ehr_dir),
        ehr_dir=ehr_dir,
        **s.as_kwargs(),
    )
    if external:  # validation of models trained elsewhere: no train/val/test here
        df["split"] = "external"
        meta.extra["external"] = True
        meta.extra.pop("fractions", None)
    meta.extra["source"] = str(Path(root).resolve())
    return df, meta, drops


def run(root: str | Path, out: str | Path, **kw) -> Path:
    df, meta, drops = build(root, out, **kw)
    return write_cohort(df, meta, out, drops, log)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mimic3", help="MIMIC-III v1.4 (ICU stays, labs/chart EHR, radiology notes) -> manifest"
    )
    p.add_argument(
        "--mimic", required=True, help="folder with ADMISSIONS.csv.gz, ICUSTAYS.csv.gz, …"
    )
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
    run(args.mimic, args.out, external=args.external, **cli_settings(args))
    return 0
