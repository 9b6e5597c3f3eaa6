"""A MIMIC release's tables -> :class:`IcuSources`: what both ICU adapters read alike.

Admissions, ICU stays (with the age at ICU admission) and the lab and chart event tables,
queued to be streamed later filtered to the itemids of :mod:`.ehr_variables` and to the
subjects with a stay; the itemids are checked against the release's dictionaries. A
release's own parts (notes, images) are added by its adapter (:mod:`.mimic3`, :mod:`.mimic4`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from cohorts.adapters.ehr_variables import itemid_map
from cohorts.adapters.readers import (
    TIMESTAMP,
    find_optional,
    find_table,
    read_csv,
    read_header,
    scan_csv,
)

log = logging.getLogger("medmix.cohorts.icu")

Batches = Callable[[], Iterator[pd.DataFrame]]


@dataclass
class IcuSources:
    """Normalised inputs (lower-case columns, parsed timestamps) from one MIMIC release.

    ``admissions``: subject_id, hadm_id, admittime, dischtime, deathtime, edregtime,
    hospital_expire_flag. ``stays``: stay_id, subject_id, hadm_id, intime, outtime, age.
    Event sources yield ``subject_id, itemid, charttime, valuenum`` (+ ``storetime`` where
    published); ``notes`` yields
    ``subject_id, charttime, storetime, text``; ``images``: subject_id, time, view
    (``frontal``/``lateral``), path (relative to the dataset root).
    """

    admissions: pd.DataFrame
    stays: pd.DataFrame
    events: list[tuple[str, Batches, dict[int, str]]] = field(default_factory=list)
    notes: Batches | None = None
    images: pd.DataFrame | None = None
    image_exists: Callable[[str], bool] | None = None  # path -> on disk? (None: not checked)
    remarks: list[str] = field(
        default_factory=list
    )  # absent parts and other remarks, for the summary
    redecoded: dict[str, int] = field(default_factory=dict)  # file -> rows not valid UTF-8


# the admissions and ICU-stay columns both MIMIC releases publish (MIMIC-III in upper case on
# disk, read case-insensitively)
ADMISSION_COLUMNS: dict[str, pa.DataType] = {
    "subject_id": pa.int64(),
    "hadm_id": pa.int64(),
    "admittime": TIMESTAMP,
    "dischtime": TIMESTAMP,
    "deathtime": TIMESTAMP,
    "edregtime": TIMESTAMP,
    "hospital_expire_flag": pa.int64(),
}


def stay_columns(stay_id: str) -> dict[str, pa.DataType]:
    """The ICU-stay table's columns (``stay_id``: ``icustay_id`` in MIMIC-III)."""
    return {
        "subject_id": pa.int64(),
        "hadm_id": pa.int64(),
        stay_id: pa.int64(),
        "intime": TIMESTAMP,
        "outtime": TIMESTAMP,
    }


def event_columns(path: Path, **more: pa.DataType) -> dict[str, pa.DataType]:
    """Columns read from an event table: subject_id, itemid, charttime, valuenum, ``more``,
    and ``storetime`` when the file has one (the leakage rule then also needs it)."""
    cols = {
        "subject_id": pa.int64(),
        "itemid": pa.int64(),
        "charttime": TIMESTAMP,
        "valuenum": pa.float64(),
        **more,
    }
    if "storetime" in read_header(path):
        cols["storetime"] = TIMESTAMP
    return cols


def check_itemids(
    path: Path | None,
    itemids: Iterable[int],
    remarks: list[str],
    read: Callable[[Path], pd.DataFrame],
) -> None:
    """Remark (not fail) when the release's dictionary table lacks some of our itemids."""
    if path is None:
        return
    known = set(read(path)["itemid"].dropna().astype(int))
    absent = sorted(set(itemids) - known)
    if absent:
        remarks.append(
            f"{path.name}: {len(absent)} itemid(s) of the EHR table not in this release: {absent[:10]}"
        )
        log.warning("%s", remarks[-1])


def add_events(
    src: IcuSources,
    name: str,
    path: Path | None,
    itemids: dict[int, str],
    subjects: set[int],
    drop_flagged: bool = False,
) -> None:
    """Queue the event table ``name`` at ``path`` (absent: nothing), read lazily and filtered
    to our itemids and subjects; ``storetime`` is read when the release publishes it.

    ``drop_flagged``: the table has an ``error`` flag (MIMIC-III CHARTEVENTS) and rows flagged 1
    are left out; its header is then read with the events, not now.
    """
    if path is None:
        return
    isin = {"itemid": itemids, "subject_id": subjects}
    if drop_flagged:
        src.events.append((name, lambda: _unflagged(path, isin, src.redecoded), itemids))
        return
    cols = event_columns(path)
    src.events.append(
        (name, lambda: scan_csv(path, cols, isin=isin, redecoded=src.redecoded), itemids)
    )


def _unflagged(
    path: Path, isin: dict[str, Iterable[int]], redecoded: dict[str, int]
) -> Iterator[pd.DataFrame]:
    """Event batches without the rows whose ``error`` flag is 1."""
    cols = event_columns(path, error=pa.float64())
    for b in scan_csv(path, cols, isin=isin, redecoded=redecoded):
        yield b[b["error"].fillna(0) != 1]


def check_dictionaries(
    src: IcuSources,
    lab_dictionary: Path | None,
    chart_dictionary: Path | None,
    lab_ids: Iterable[int],
    chart_ids: Iterable[int],
) -> None:
    """Remark on itemids of ours that the release's lab / chart dictionaries lack."""

    def read_ids(path: Path) -> pd.DataFrame:
        return read_csv(path, {"itemid": pa.int64()}, redecoded=src.redecoded)

    check_itemids(lab_dictionary, lab_ids, src.remarks, read_ids)
    check_itemids(chart_dictionary, chart_ids, src.remarks, read_ids)


@dataclass(frozen=True)
class IcuRelease:
    """Where one MIMIC release keeps the tables both ICU adapters read, and how it gives ages.

    Table names are relative to the release root (:func:`find_table`: any case, ``.csv.gz``
    or ``.csv``); ``labevents`` to ``d_items`` are optional, a remark when absent.
    """

    dataset: str  # names the release in messages
    admissions: str
    patients: str
    icustays: str
    labevents: str
    chartevents: str
    d_labitems: str
    d_items: str
    stay_id: str  # the ICU-stay id column (icustay_id in MIMIC-III), renamed stay_id
    patient_columns: dict[str, pa.DataType]  # read from patients; dropped once ``age`` is set
    age: Callable[[pd.DataFrame], pd.Series]  # stays merged with patients -> age at ICU intime
    chart_items: str  # the ehr_variables.itemid_map source of the release's chart itemids
    chart_missing: str  # what the remark says is missing without chartevents
    chart_flagged: bool = False  # chartevents has an ``error`` flag (add_events' drop_flagged)


def load_icu(root: Path, release: IcuRelease) -> tuple[IcuSources, set[int]]:
    """What both releases publish alike: admissions, ICU stays with ages, lab and chart events
    (queued), their itemids checked against the dictionaries. Returns the sources and the
    subjects with an ICU stay."""
    ds = release.dataset
    redecoded: dict[str, int] = {}

    def read(table: str, columns: dict[str, pa.DataType]) -> pd.DataFrame:
        return read_csv(find_table(root, table, ds), columns, redecoded=redecoded)

    adm = read(release.admissions, ADMISSION_COLUMNS)
    pat = read(release.patients, release.patient_columns)
    stays = read(release.icustays, stay_columns(release.stay_id))
    stays = stays.rename(columns={release.stay_id: "stay_id"})
    stays = stays.merge(pat.drop_duplicates("subject_id"), on="subject_id", how="left")
    stays["age"] = release.age(stays)
    stays = stays.drop(columns=[c for c in release.patient_columns if c != "subject_id"])
    subjects = set(stays["subject_id"].dropna().astype(int))
    src = IcuSources(admissions=adm, stays=stays, remarks=[], redecoded=redecoded)

    lab_ids, chart_ids = itemid_map("lab"), itemid_map(release.chart_items)
    labs = find_optional(root, release.labevents, src.remarks, "laboratory values", ds)
    add_events(src, "labevents", labs, lab_ids, subjects)
    chart = find_optional(root, release.chartevents, src.remarks, release.chart_missing, ds)
    add_events(src, "chartevents", chart, chart_ids, subjects, release.chart_flagged)
    check_dictionaries(
        src,
        find_optional(root, release.d_labitems, [], "lab dictionary", ds),
        find_optional(root, release.d_items, [], "item dictionary", ds),
        lab_ids,
        chart_ids,
    )
    return src, subjects
