"""MIMIC-IV-MM -> manifest: MIMIC-IV v2.x + MIMIC-CXR-JPG v2.0.0 + MIMIC-IV-Note.

Inputs, as PhysioNet publishes them (``.csv.gz`` or ``.csv``):

* ``--mimic``: MIMIC-IV root with ``hosp/admissions``, ``hosp/patients``, ``icu/icustays``
  (required), ``hosp/labevents``, ``icu/chartevents`` (streamed, filtered to the itemids of
  :mod:`.ehr_variables`), ``hosp/d_labitems``, ``icu/d_items`` (used to check the itemids);
* ``--cxr``: MIMIC-CXR-JPG root with ``mimic-cxr-2.0.0-metadata.csv.gz`` (dicom_id,
  subject_id, study_id, ViewPosition, StudyDate, StudyTime, …) and
  ``files/p1x/p1xxxxxxx/sNNNNNNNN/{dicom_id}.jpg``;
* ``--note``: MIMIC-IV-Note root with ``note/radiology.csv.gz`` (note_id, subject_id,
  hadm_id, note_type, note_seq, charttime, storetime, text).

``--note`` and ``--cxr`` are optional, but a folder that is named must exist (as must
``--mimic`` and ``--split-file``): otherwise an :class:`AdapterError` names the option and
the path (exit code 2 on the command line).

Samples, outcomes and the 48 h leakage rule are those of :mod:`.icu`. Image times are
``StudyDate`` + ``StudyTime``; frontal = ViewPosition PA or AP, lateral = LATERAL or LL; an
image must exist under ``--cxr`` (unless ``--no-check-images``). The dataset root is the
deepest folder holding both the EHR output and the CXR root, so every path is relative to it.
"""

from __future__ import annotations

import argparse
import logging
import os
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
from cohorts.adapters.readers import TIMESTAMP, find_optional, find_table, read_csv, scan_csv
from cohorts.adapters.summary import Drops, write_cohort
from cohorts.manifest import ManifestMeta

log = logging.getLogger("medmix.cohorts.mimic4")

ADAPTER_VERSION = "1"
DATASET = "MIMIC-IV"
MODALITIES = {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"}
CXR_METADATA = "mimic-cxr-2.0.0-metadata"
FRONTAL = {"PA", "AP"}
LATERAL = {"LATERAL", "LL"}
I64, F64, STR = pa.int64(), pa.float64(), pa.string()


def study_times(date: pd.Series, time: pd.Series) -> pd.Series:
    """MIMIC-CXR ``StudyDate`` (YYYYMMDD) + ``StudyTime`` (HHMMSS[.fff], leading zeros dropped) -> timestamp."""
    d = pd.to_numeric(date, errors="coerce").astype("Int64").astype(str).str.zfill(8)
    t = time.astype(str).str.strip().str.split(".").str[0].str.zfill(6)
    return pd.to_datetime(d + t, format="%Y%m%d%H%M%S", errors="coerce")


def load_images(
    cxr: Path,
    subjects: set[int],
    root: Path,
    metadata: Path | None = None,
    redecoded: dict[str, int] | None = None,
) -> pd.DataFrame:
    """MIMIC-CXR-JPG metadata -> ``subject_id, time, view, path`` (path relative to ``root``)."""
    meta_path = Path(metadata) if metadata else find_table(cxr, CXR_METADATA, "MIMIC-CXR-JPG")
    cols = {
        "dicom_id": STR,
        "subject_id": I64,
        "study_id": I64,
        "viewposition": STR,
        "studydate": I64,
        "studytime": STR,
    }
    m = read_csv(meta_path, cols, isin={"subject_id": subjects}, redecoded=redecoded)
    pos = m["viewposition"].fillna("").str.strip().str.upper()
    view = pd.Series(pd.NA, index=m.index, dtype=object)
    view[pos.isin(FRONTAL)] = "frontal"
    view[pos.isin(LATERAL)] = "lateral"
    sid = m["subject_id"].astype(str)
    study = m["study_id"].astype(str)
    rel = "files/p" + sid.str[:2] + "/p" + sid + "/s" + study + "/" + m["dicom_id"] + ".jpg"
    prefix = os.path.relpath(cxr.resolve(), root.resolve())
    out = pd.DataFrame(
        {
            "subject_id": m["subject_id"],
            "time": study_times(m["studydate"], m["studytime"]),
            "view": view,
            "path": [Path(prefix, r).as_posix() if prefix != "." else r for r in rel],
        }
    )
    return out.dropna(subset=["view", "time"]).reset_index(drop=True)


# labevents and chartevents publish storetime: an event also needs storetime < cut-off
RELEASE = IcuRelease(
    dataset=DATASET,
    admissions="hosp/admissions",
    patients="hosp/patients",
    icustays="icu/icustays",
    labevents="hosp/labevents",
    chartevents="icu/chartevents",
    d_labitems="hosp/d_labitems",
    d_items="icu/d_items",
    stay_id="stay_id",
    patient_columns={"subject_id": I64, "anchor_age": F64, "anchor_year": I64},
    age=lambda stays: (
        stays["anchor_age"] + (stays["intime"].dt.year - stays["anchor_year"]).astype("float64")
    ),
    chart_items="chart_iv",
    chart_missing="chart vitals",
)


def load_sources(
    mimic: str | Path,
    root: Path,
    note: str | Path | None = None,
    cxr: str | Path | None = None,
    check_images: bool = True,
) -> IcuSources:
    mimic = require_path(mimic, "--mimic", "folder", DATASET)
    src, subjects = load_icu(mimic, RELEASE)
    remarks, redecoded = src.remarks, src.redecoded
    if note is None:
        remarks.append("no --note folder (MIMIC-IV-Note): radiology reports missing")
    else:
        note = require_path(note, "--note", "folder", "MIMIC-IV-Note")
        try:
            path = find_table(note, "note/radiology", "MIMIC-IV-Note")
        except AdapterError:
            path = find_optional(note, "radiology", remarks, "radiology reports", "MIMIC-IV-Note")
        if path is not None:
            cols = {"subject_id": I64, "charttime": TIMESTAMP, "storetime": TIMESTAMP, "text": STR}
            src.notes = lambda: scan_csv(
                path,
                cols,
                isin={"subject_id": subjects},
                newlines_in_values=True,
                redecoded=redecoded,
            )
    if cxr is None:
        remarks.append("no --cxr folder (MIMIC-CXR-JPG): chest X-rays missing")
    else:
        cxr = require_path(cxr, "--cxr", "folder", "MIMIC-CXR-JPG")
        src.images = load_images(cxr, subjects, root, redecoded=redecoded)
        if check_images:
            src.image_exists = lambda rel: (root / rel).is_file()
    return src


def build(
    mimic: str | Path,
    out: str | Path,
    note: str | Path | None = None,
    cxr: str | Path | None = None,
    ehr_dir: str | Path | None = None,
    check_images: bool = True,
    **settings: Any,
) -> tuple[pd.DataFrame, ManifestMeta, Drops]:
    """The sources -> (manifest frame, meta, drops); EHR files go to ``ehr_dir`` (default ``{out}/ehr``).

    ``settings``: the fields of :class:`IcuSettings` (``dataset`` default ``mimic4``). Every
    input path given (``mimic``, ``note``, ``cxr``, ``split_file``) must exist: an
    :class:`AdapterError` names the option and the path.
    """
    s = IcuSettings(**{"dataset": "mimic4", **settings})
    require_path(mimic, "--mimic", "folder", DATASET)
    require_path(note, "--note", "folder", "MIMIC-IV-Note")
    require_path(cxr, "--cxr", "folder", "MIMIC-CXR-JPG")
    require_path(s.split_file, "--split-file", "file", DATASET)
    s.check()
    out = Path(out)
    ehr_dir = Path(ehr_dir) if ehr_dir else out / "ehr"
    root = dataset_root(out, ehr_dir, cxr)
    src = load_sources(mimic, root, note, cxr, check_images)
    df, meta, drops = build_icu(
        src,
        adapter="mimic4",
        adapter_version=ADAPTER_VERSION,
        modalities=MODALITIES,
        root=root,
        ehr_dir=ehr_dir,
        **s.as_kwargs(),
    )
    meta.extra["source"] = {
        "mimic": str(Path(mimic).resolve()),
        "note": note and str(Path(note).resolve()),
        "cxr": cxr and str(Path(cxr).resolve()),
    }
    return df, meta, drops


def run(mimic: str | Path, out: str | Path, **kw) -> Path:
    df, meta, drops = build(mimic, out, **kw)
    return write_cohort(df, meta, out, drops, log)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mimic4", help="MIMIC-IV + MIMIC-CXR-JPG + MIMIC-IV-Note (ICU stays) -> manifest"
    )
    p.add_argument("--mimic", required=True, help="MIMIC-IV root (with hosp/ and icu/)")
    p.add_argument("--note", help="MIMIC-IV-Note root (with note/radiology.csv.gz)")
    p.add_argument(
        "--cxr", help="MIMIC-CXR-JPG root (with mimic-cxr-2.0.0-metadata.csv.gz and files/)"
    )
    add_icu_args(p)
    p.add_argument(
        "--no-check-images", action="store_true", help="do not check that the JPGs exist"
    )
    add_common_args(p, "mimic4")
    p.set_defaults(func=_main)


@cli_errors("mimic4")
def _main(args: argparse.Namespace) -> int:
    run(
        args.mimic,
        args.out,
        note=args.note,
        cxr=args.cxr,
        check_images=not args.no_check_images,
        **cli_settings(args),
    )
    return 0
