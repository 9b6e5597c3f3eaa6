"""A published split file in place of an adapter's seeded split (``--split-file``).

Two formats, told apart by the file name:

* ``*.json``: the R2Gen ``annotation.json`` (``{"train": [{"id": "CXR2384_IM-0942", …}, …],
  "val": […], "test": […]}``), the split most IU X-ray report-generation work uses;
* anything else: a CSV with a header, a ``split`` column (``train`` / ``val`` / ``test``, or
  ``external``) and one id column; which id column names are accepted, and what they key
  (samples or patients), is up to the adapter (:class:`IdColumns`).

:func:`apply_split` then sets every sample's split from the file, exactly: a sample the file
does not list is dropped (reason in the summary) or, with ``missing="error"``, refused; ids in
the file that match nothing in the dataset are refused with one line naming the file and the
first unknown ids; and a split that puts one patient in two splits — which the manifest
validator rejects — is a warning in the log and then an error that says so plainly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cohorts.adapters import AdapterError
from cohorts.adapters.readers import read_csv_text
from cohorts.adapters.summary import Drops
from cohorts.manifest import SPLITS

log = logging.getLogger("medmix.cohorts.split_file")

MISSING = ("drop", "error")
R2GEN_KEYS = ("train", "val", "test")


@dataclass
class PublishedSplit:
    """The file's ids (normalised by the adapter) and split names; ``key`` is ``sample`` or
    ``patient`` (what the ids identify), ``column`` the id column (``id`` for R2Gen)."""

    path: Path
    format: str  # "r2gen" | "csv"
    key: str  # "sample" | "patient"
    column: str
    table: pd.DataFrame  # columns: raw, id, split


# id column name (lower case) -> "sample" or "patient"
IdColumns = Mapping[str, str]


def _first(values, n: int = 5) -> str:
    values = list(values)
    more = len(values) - n
    return ", ".join(map(str, values[:n])) + (f" (+{more} more)" if more > 0 else "")


def read_split_file(
    path: str | Path,
    id_columns: IdColumns,
    normalise: Callable[[str], str] = str,
) -> PublishedSplit:
    """Read an R2Gen JSON or an ``id,split`` CSV; ids go through ``normalise`` (the adapter's id)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"--split-file {path}: file not found")
    if path.name.lower().endswith(".json"):
        raw, split, column, fmt = *_read_r2gen(path), "id", "r2gen"
        if "id" not in id_columns:
            raise AdapterError(
                f"{path}: an R2Gen JSON split file needs ids of this dataset's samples; "
                f"give a CSV with a 'split' column and one of {sorted(id_columns)}"
            )
    else:
        raw, split, column = _read_csv(path, id_columns)
        fmt = "csv"
    bad = ~split.isin(SPLITS)
    if bad.any():
        raise AdapterError(
            f"{path}: split values other than {list(SPLITS)}: {_first(sorted(set(split[bad])))}"
        )
    table = pd.DataFrame({"raw": raw, "id": raw.map(normalise), "split": split})
    if table.empty:
        raise AdapterError(f"{path}: the split file lists no ids")
    return PublishedSplit(path, fmt, id_columns[column], column, table)


def _read_r2gen(path: Path) -> tuple[pd.Series, pd.Series]:
    shape = '{"train": [{"id": …}, …], "val": […], "test": […]}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not data or set(data) - set(R2GEN_KEYS):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise AdapterError(f"{path}: not an R2Gen annotation file {shape} (top level: {got})")
    ids, splits = [], []
    for name, entries in data.items():
        if not isinstance(entries, list):
            raise AdapterError(f"{path}: '{name}' is not a list of entries ({shape})")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("id"), str | int):
                raise AdapterError(f"{path}: entry {i} of '{name}' has no 'id' ({shape})")
            ids.append(str(e["id"]).strip())
            splits.append(name)
    return pd.Series(ids, dtype=object), pd.Series(splits, dtype=object)


def _read_csv(path: Path, id_columns: IdColumns) -> tuple[pd.Series, pd.Series, str]:
    try:
        df = read_csv_text(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise AdapterError(f"{path}: not a readable CSV ({exc})") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    ids = [c for c in df.columns if c in id_columns]
    if "split" not in df.columns or len(ids) != 1:
        raise AdapterError(
            f"{path}: a split file needs a 'split' column and exactly one id column of "
            f"{sorted(id_columns)}; it has {list(df.columns)}"
        )
    raw = df[ids[0]].astype(str).str.strip()
    empty = raw == ""
    if empty.any():
        raise AdapterError(f"{path}: column {ids[0]!r} is empty on {int(empty.sum())} row(s)")
    split = df["split"].astype(str).str.strip().str.lower()
    return raw.reset_index(drop=True), split.reset_index(drop=True), ids[0]


def apply_split(
    df: pd.DataFrame,
    published: PublishedSplit,
    *,
    known: set[str],
    drops: Drops,
    missing: str = "drop",
    what: str = "sample",
) -> tuple[pd.DataFrame, list[str]]:
    """``df`` (sample_id, patient_id, …) with ``split`` set from the file; rows the file does
    not list are dropped (``missing="drop"``, counted in ``drops``) or refused.

    ``known``: every id the dataset has (samples, or patients when the file is keyed by
    patient), including those the adapter dropped, so an id absent from ``known`` is unknown
    rather than excluded. Returns the frame and remarks for the summary.
    """
    if missing not in MISSING:
        raise AdapterError(f"split_missing must be one of {MISSING}, got {missing!r}")
    path, t = published.path, published.table
    col = "sample_id" if published.key == "sample" else "patient_id"
    noun = what if published.key == "sample" else "patient"
    # one id listed under two different splits: not a split
    per_id = t.groupby("id", sort=True)["split"].nunique()
    twice = per_id[per_id > 1].index
    if len(twice):
        raise AdapterError(
            f"{path}: {len(twice)} id(s) listed in more than one split: {_first(twice)}"
        )
    unknown = t.loc[~t["id"].isin(known), "raw"].drop_duplicates()
    if len(unknown):
        raise AdapterError(
            f"{path}: {len(unknown)} of {t['id'].nunique()} id(s) match no {noun} of the "
            f"dataset: {_first(unknown)}"
        )
    assign = t.drop_duplicates("id").set_index("id")["split"]
    remarks = [
        f"split from the published file {path} ({published.format}, keyed by {noun} id, "
        f"column {published.column!r}): {t['id'].nunique()} id(s), "
        + ", ".join(f"{k} {int((assign == k).sum())}" for k in SPLITS if (assign == k).any())
    ]
    present = set(df[col].astype(str))
    excluded = sorted(set(assign.index) - present)
    if excluded:
        remarks.append(
            f"{len(excluded)} id(s) of {path.name} were excluded by the adapter (see "
            f"Dropped samples), e.g. {_first(excluded)}"
        )
    keys = df[col].astype(str)
    absent = ~keys.isin(assign.index)
    if absent.any():
        if missing == "error":
            raise AdapterError(
                f"{path}: {int(absent.sum())} {what}(s) of the dataset are not in the split file "
                f"(first: {_first(df.loc[absent, 'sample_id'])}); split_missing=drop "
                "(--split-missing drop) leaves them out"
            )
        drops.add(f"not in the split file {path.name}", df.loc[absent, "sample_id"])
        remarks.append(f"{int(absent.sum())} {what}(s) not in {path.name} were dropped")
    out = df.loc[~absent].reset_index(drop=True)
    out["split"] = out[col].astype(str).map(assign).to_numpy(dtype=object)
    check_patient_level(out, path)
    return out, remarks


def check_patient_level(df: pd.DataFrame, path: Path) -> None:
    """A published split with a patient in two splits: a warning, then an error saying so
    (the manifest validator refuses such a manifest: no patient-level leakage)."""
    if df.empty:
        return
    n = df.groupby("patient_id")["split"].nunique()
    leaking = n[n > 1].index
    if not len(leaking):
        return
    first = leaking[0]
    where = df.loc[df["patient_id"] == first, ["sample_id", "split"]]
    example = ", ".join(
        f"{s} in {sp}" for s, sp in zip(where["sample_id"], where["split"], strict=True)
    )
    msg = (
        f"{path}: the published split puts {len(leaking)} patient(s) in more than one split "
        f"(patient-level leakage), e.g. patient {first}: {example}; the manifest requires "
        "every patient's samples in one split — key the file by patient id or fix it"
    )
    log.warning("%s", msg)
    raise AdapterError(msg)
