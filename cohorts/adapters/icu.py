"""What MIMIC-IV and MIMIC-III share: ICU-stay samples, outcomes, the 48 h leakage rule.

One sample per ICU stay. The prediction time is ``intime + 48 h``; only data recorded before
it enters a sample: EHR events charted in ``[intime, cut-off)`` and, where the table has a
``storetime`` (MIMIC-IV labevents and chartevents, MIMIC-III CHARTEVENTS; MIMIC-III
LABEVENTS has none), stored before the cut-off; the last frontal and lateral chest
X-ray and the radiology report nearest before the cut-off, both within this hospitalisation
(from ED registration, or admission when there was none). A report also needs
``storetime < cut-off`` when a store time is published — its text did not exist before.

Outcomes: ``mortality`` = the admission's ``hospital_expire_flag``; ``long_stay`` = length
of stay > 7 days, by default of the ICU stay (``outtime − intime``, the ``los`` column of
``icustays``; ``long_stay_basis="icu"``) or, with ``long_stay_basis="hospital"``, of the
hospital admission (``dischtime − admittime``); ``readmission`` = another admission of the
same patient starting within 30 days after this discharge (0 after an in-hospital death).
Stays are dropped, with the reason in the summary, when the admission is unknown, times
are missing, the patient is under 18, the ICU stay is shorter than ``min_icu_hours``
(default: the observation window, 48 h), or the patient died before the prediction time.

Split: seeded by patient (0.72 / 0.13 / 0.15, stratified by mortality), or exactly that of
a published ``id,split`` CSV (``split_file``, :mod:`.published_split`): column ``id`` /
``stay_id`` / ``icustay_id`` / ``sample_id`` keys ICU stays, ``subject_id`` / ``patient_id``
keys patients.

The tables both releases publish alike are read by :mod:`.icu_tables`; the settings both
adapters take are :class:`IcuSettings` (command line: :func:`add_icu_args`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.adapters import AdapterError, add_split_file_args
from cohorts.adapters.ehr import HourlyAccumulator, write_series
from cohorts.adapters.ehr_variables import N_HOURS, NAMES
from cohorts.adapters.icu_tables import IcuSources
from cohorts.adapters.published_split import apply_split, read_split_file
from cohorts.adapters.summary import Drops, redecoded_remarks
from cohorts.manifest import ManifestMeta
from cohorts.splits import patient_split
from medmix.cli import non_negative_float, positive_int

log = logging.getLogger("medmix.cohorts.icu")

FRACTIONS = {"train": 0.72, "val": 0.13, "test": 0.15}
LABELS = ["mortality", "long_stay", "readmission"]
LONG_STAY_DAYS = 7
LONG_STAY_BASES = ("icu", "hospital")  # length of stay of the ICU stay, or of the admission
READMISSION_DAYS = 30
# a published split CSV's id column -> what it keys
SPLIT_ID_COLUMNS = {
    "id": "sample",
    "sample_id": "sample",
    "stay_id": "sample",
    "icustay_id": "sample",
    "subject_id": "patient",
    "patient_id": "patient",
}


def _int_id(value: str) -> str:
    """``"240001"``, ``" 240001 "`` or ``"240001.0"`` -> ``"240001"`` (others unchanged)."""
    v = str(value).strip()
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() else v


def outcomes(adm: pd.DataFrame) -> pd.DataFrame:
    """``hadm_id, mortality, long_stay, readmission`` for every admission of the table."""
    a = adm[["subject_id", "hadm_id", "admittime", "dischtime", "hospital_expire_flag"]].copy()
    a = a.sort_values(["subject_id", "admittime", "hadm_id"])
    nxt = a.groupby("subject_id")["admittime"].shift(-1)
    died = pd.to_numeric(a["hospital_expire_flag"], errors="coerce").fillna(0).astype(int) == 1
    gap = nxt - a["dischtime"]
    readmit = nxt.notna() & (gap <= pd.Timedelta(days=READMISSION_DAYS)) & ~died
    los = a["dischtime"] - a["admittime"]
    return pd.DataFrame(
        {
            "hadm_id": a["hadm_id"].to_numpy(),
            "mortality": died.astype("int8").to_numpy(),
            "long_stay": (los > pd.Timedelta(days=LONG_STAY_DAYS)).astype("int8").to_numpy(),
            "readmission": readmit.astype("int8").to_numpy(),
        }
    )


def select_stays(
    src: IcuSources,
    drops: Drops,
    hours: int = N_HOURS,
    min_age: float = 18,
    min_icu_hours: float | None = None,
    long_stay_basis: str = "icu",
) -> pd.DataFrame:
    """Stays joined to admissions and outcomes, with exclusions recorded in ``drops``.

    ``long_stay``: ICU length of stay > 7 d (``long_stay_basis="icu"``) or hospital length
    of stay > 7 d (``"hospital"``). ``min_icu_hours`` (default ``hours``): shorter ICU stays
    are dropped.
    """
    check_settings(hours, min_icu_hours, long_stay_basis)
    min_icu_hours = hours if min_icu_hours is None else min_icu_hours
    st = src.stays.copy()
    st["sample_id"] = st["stay_id"].astype("int64").astype(str)
    adm = src.admissions.merge(outcomes(src.admissions), on="hadm_id", how="left")
    adm = adm.drop(columns=["subject_id"]).drop_duplicates("hadm_id")
    st = st.merge(adm, on="hadm_id", how="left", indicator=True)

    def drop(mask: pd.Series, reason: str) -> None:
        nonlocal st
        drops.add(reason, st.loc[mask, "sample_id"])
        st = st.loc[~mask]

    drop(st["_merge"] != "both", "admission not in the admissions table")
    drop(st["intime"].isna() | st["outtime"].isna(), "ICU intime or outtime missing")
    drop(st["admittime"].isna() | st["dischtime"].isna(), "admission or discharge time missing")
    if long_stay_basis == "icu":  # else: the admission's, from outcomes()
        icu_los = st["outtime"] - st["intime"]
        st["long_stay"] = (icu_los > pd.Timedelta(days=LONG_STAY_DAYS)).astype("int8")
    drop(st["age"].notna() & (st["age"] < min_age), f"age under {min_age:g}")
    st = st.assign(cutoff=st["intime"] + pd.Timedelta(hours=hours))
    drop(
        (st["outtime"] - st["intime"]) < pd.Timedelta(hours=min_icu_hours),
        f"ICU stay shorter than {min_icu_hours:g} h",
    )
    drop(
        st["deathtime"].notna() & (st["deathtime"] < st["cutoff"]),
        "died before the prediction time",
    )
    start = st["admittime"]
    if "edregtime" in st:
        start = st[["edregtime", "admittime"]].min(axis=1)
    st = st.assign(start=start, patient_id=st["subject_id"].astype("int64").astype(str))
    return st.drop(columns=["_merge"]).sort_values("sample_id").reset_index(drop=True)


def add_icu_args(p: argparse.ArgumentParser) -> None:
    """The options the ICU adapters (MIMIC-IV, MIMIC-III) share: EHR output folder, observation
    window, short-stay exclusion, long-stay basis and a published split file."""
    p.add_argument("--ehr-dir", help="where the per-stay EHR Parquet files go (default: {out}/ehr)")
    p.add_argument(
        "--hours",
        type=positive_int,
        default=48,
        help="observation window / prediction time after ICU intime (h)",
    )
    p.add_argument(
        "--min-icu-hours",
        type=non_negative_float,
        help="drop ICU stays shorter than this many hours (default: --hours, i.e. 48: a stay"
        " must cover the whole observation window; 0 keeps every stay)",
    )
    p.add_argument(
        "--long-stay-basis",
        choices=LONG_STAY_BASES,
        default="icu",
        help="long_stay = length of stay > 7 days of the ICU stay (icu: outtime - intime, the"
        " 'los' column; default) or of the hospital admission (hospital: dischtime - admittime)",
    )
    add_split_file_args(
        p,
        "a CSV with a 'split' column (train/val/test) and one id column: id, stay_id,"
        " icustay_id or sample_id (ICU stay ids = the manifest's sample_id) or subject_id /"
        " patient_id (patients)",
    )


@dataclass(frozen=True)
class IcuSettings:
    """The cohort settings both ICU adapters take, as keywords of their ``build`` and ``run``
    (command line: :func:`add_icu_args` and ``add_common_args``); fields as :func:`build_icu`."""

    dataset: str
    seed: int = 0
    hours: int = N_HOURS
    min_icu_hours: float | None = None
    long_stay_basis: str = "icu"
    split_file: str | Path | None = None
    split_missing: str = "drop"

    def check(self) -> None:
        """:func:`check_settings` on these settings."""
        check_settings(self.hours, self.min_icu_hours, self.long_stay_basis)

    def as_kwargs(self) -> dict[str, object]:
        """The settings as :func:`build_icu`'s keywords."""
        return asdict(self)


def cli_settings(args: argparse.Namespace) -> dict[str, object]:
    """The keywords an ICU adapter's ``run`` takes from the shared options: ``ehr_dir`` and
    the :class:`IcuSettings` fields."""
    return {
        "ehr_dir": args.ehr_dir,
        **IcuSettings(
            dataset=args.dataset,
            seed=args.seed,
            hours=args.hours,
            min_icu_hours=args.min_icu_hours,
            long_stay_basis=args.long_stay_basis,
            split_file=args.split_file,
            split_missing=args.split_missing,
        ).as_kwargs(),
    }


def check_settings(hours: int, min_icu_hours: float | None, long_stay_basis: str) -> None:
    """The cohort settings, checked before any table is read."""
    if long_stay_basis not in LONG_STAY_BASES:
        raise AdapterError(
            f"long_stay_basis (--long-stay-basis) must be one of {LONG_STAY_BASES}, "
            f"got {long_stay_basis!r}"
        )
    if not isinstance(hours, int) or hours < 1:
        raise AdapterError(f"hours (--hours) must be an integer >= 1, got {hours!r}")
    if min_icu_hours is not None and not (
        isinstance(min_icu_hours, int | float) and 0 <= min_icu_hours < float("inf")
    ):
        raise AdapterError(
            f"min_icu_hours (--min-icu-hours) must be a number >= 0, got {min_icu_hours!r}"
        )


def latest_notes(notes: Iterable[pd.DataFrame], windows: pd.DataFrame) -> pd.Series:
    """sample_id -> text of the report nearest before the cut-off (within ``[start, cutoff)``)."""
    best = pd.DataFrame({"sample_id": [], "charttime": [], "text": []})
    w = windows[["sample_id", "subject_id", "start", "cutoff"]].assign(
        subject_id=lambda d: d["subject_id"].astype("int64")
    )
    for batch in notes:
        b = batch.dropna(subset=["charttime", "text"])
        b = b.assign(subject_id=b["subject_id"].astype("int64"))
        m = b.merge(w, on="subject_id", how="inner")
        ok = (m["charttime"] >= m["start"]) & (m["charttime"] < m["cutoff"])
        if "storetime" in m:
            ok &= m["storetime"].isna() | (m["storetime"] < m["cutoff"])
        m = m.loc[ok & m["text"].str.strip().astype(bool), ["sample_id", "charttime", "text"]]
        if m.empty:
            continue
        both = pd.concat([best, m], ignore_index=True) if len(best) else m
        best = (
            both.sort_values(["sample_id", "charttime"], kind="stable").groupby("sample_id").tail(1)
        )
    return (
        best.set_index("sample_id")["text"].astype(object) if len(best) else pd.Series(dtype=object)
    )


def latest_images(
    images: pd.DataFrame, windows: pd.DataFrame, exists: Callable[[str], bool] | None = None
) -> pd.DataFrame:
    """sample_id -> ``frontal`` and ``lateral``: the last image of each view in ``[start, cutoff)``.

    ``exists`` (path -> bool), when given, is asked only about the images inside a window.
    """
    w = windows[["sample_id", "subject_id", "start", "cutoff"]].assign(
        subject_id=lambda d: d["subject_id"].astype("int64")
    )
    im = images.dropna(subset=["time", "view", "path"]).assign(
        subject_id=lambda d: d["subject_id"].astype("int64")
    )
    m = im.merge(w, on="subject_id", how="inner")
    m = m[(m["time"] >= m["start"]) & (m["time"] < m["cutoff"])]
    if exists is not None and len(m):
        m = m[m["path"].map(exists).to_numpy(dtype=bool)]
    last = (
        m.sort_values(["sample_id", "view", "time", "path"]).groupby(["sample_id", "view"]).tail(1)
    )
    wide = last.pivot(index="sample_id", columns="view", values="path")
    return wide.reindex(columns=["frontal", "lateral"])


def ehr_series(
    src: IcuSources,
    stays: pd.DataFrame,
    ehr_dir: str | Path,
    root: str | Path,
    hours: int,
    dataset: str,
) -> dict[str, str]:
    """Stream every event source into hourly cells and write the per-stay files; sample -> path."""
    windows = stays[["subject_id", "intime"]].assign(sample=np.arange(len(stays)))
    counts, cells = {}, []
    for name, batches, itemids in src.events:
        acc = HourlyAccumulator(windows, itemids, hours)
        acc.add_all(batches())
        counts[name] = acc.n_events
        cells.append(acc.cells())
        if acc.n_stored_late:
            src.remarks.append(
                f"{name}: {acc.n_stored_late} event(s) charted before the prediction time but "
                "stored after it were left out (leakage rule)"
            )
    log.info("%s: EHR events kept inside the windows: %s", dataset, counts)
    if not cells:
        return {}
    allc = pd.concat(cells, ignore_index=True)
    # a cell seen by two sources (glucose from chart and lab): the mean of both means
    allc = allc.groupby(["sample", "hour", "var"], sort=True)["value"].mean().reset_index()
    return write_series(allc, stays["sample_id"], ehr_dir, root, hours)


def _or_none(values: pd.Series) -> pd.Series:
    """Object column with None (not NaN) for missing, as the manifest expects."""
    out = values.astype(object)
    out[out.isna()] = None
    return out


def build_icu(
    src: IcuSources,
    *,
    dataset: str,
    adapter: str,
    adapter_version: str,
    modalities: dict[str, str],
    root: str | Path,
    ehr_dir: str | Path,
    seed: int = 0,
    hours: int = N_HOURS,
    min_age: float = 18,
    min_icu_hours: float | None = None,
    long_stay_basis: str = "icu",
    split_file: str | Path | None = None,
    split_missing: str = "drop",
) -> tuple[pd.DataFrame, ManifestMeta, Drops]:
    """Sources -> (manifest frame, meta, drops); writes the per-sample EHR Parquet files.

    ``split_file``: a published ``id,split`` CSV used instead of the seeded split (stays it
    does not list are dropped, ``split_missing="drop"``, or refused).
    """
    drops = Drops()
    published = (
        read_split_file(split_file, SPLIT_ID_COLUMNS, _int_id) if split_file is not None else None
    )
    st = select_stays(src, drops, hours, min_age, min_icu_hours, long_stay_basis)
    split_remarks: list[str] = []
    if published is not None:
        stays_all = src.stays
        known_col = "stay_id" if published.key == "sample" else "subject_id"
        known = set(stays_all[known_col].dropna().astype("int64").astype(str))
        kept, split_remarks = apply_split(
            st[["sample_id", "patient_id"]],
            published,
            known=known,
            drops=drops,
            missing=split_missing,
            what="ICU stay",
        )
        split_of = kept.set_index("sample_id")["split"]
        st = st[st["sample_id"].isin(split_of.index)].reset_index(drop=True)
    df = st[["sample_id", "patient_id"]].copy()

    if "ehr" in modalities:
        df["ehr"] = _or_none(
            df["sample_id"].map(ehr_series(src, st, ehr_dir, root, hours, dataset))
        )
    if "note" in modalities:
        notes = latest_notes(src.notes(), st) if src.notes is not None else pd.Series(dtype=object)
        df["note"] = _or_none(df["sample_id"].map(notes))
    images = pd.DataFrame(columns=["frontal", "lateral"])
    if src.images is not None and ({"frontal", "lateral"} & set(modalities)):
        images = latest_images(src.images, st, src.image_exists)
    for view in ("frontal", "lateral"):
        if view in modalities:
            df[view] = _or_none(df["sample_id"].map(images[view]))
    for k in LABELS:
        df[f"label_{k}"] = st[k].astype("int8").to_numpy()
    if published is not None:
        df["split"] = df["sample_id"].map(split_of).to_numpy(dtype=object)
    else:
        df["split"] = (
            patient_split(df["patient_id"], FRACTIONS, seed, stratify=df["label_mortality"])
            if len(df)
            else np.array([], dtype=object)
        )
    meta = ManifestMeta(
        dataset=dataset,
        task_type="binary",
        modalities=dict(modalities),
        labels=list(LABELS),
        adapter=adapter,
        adapter_version=adapter_version,
        root=str(Path(root).resolve()),
        extra={
            "seed": seed,
            "fractions": FRACTIONS,
            "prediction_hours": hours,
            "min_icu_hours": hours if min_icu_hours is None else min_icu_hours,
            "long_stay_basis": long_stay_basis,
            "ehr_variables": list(NAMES),
            "remarks": list(src.remarks) + split_remarks + redecoded_remarks(src.redecoded),
            "redecoded": dict(src.redecoded),
        },
    )
    if published is not None:
        del meta.extra["fractions"], meta.extra["seed"]
        meta.extra["split_file"] = {
            "path": str(published.path.resolve()),
            "format": published.format,
            "key": published.key,
            "missing": split_missing,
        }
    return df, meta, drops


def dataset_root(out: Path, ehr_dir: Path, *more: str | Path | None) -> Path:
    """The deepest folder holding the EHR output (and e.g. the CXR root): every path is relative to it."""
    out.mkdir(parents=True, exist_ok=True)
    ehr_dir.mkdir(parents=True, exist_ok=True)
    paths = [out, ehr_dir, *(Path(m) for m in more if m)]
    return Path(os.path.commonpath([str(p.resolve()) for p in paths]))
