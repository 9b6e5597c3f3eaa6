"""Streaming readers for the published CSV / CSV.gz tables, with errors that name file and column.

MIMIC's event tables are huge (MIMIC-IV ``chartevents``: ~330 M rows). They are never loaded
whole: :func:`scan_csv` streams record batches with pyarrow's incremental CSV reader, keeps
only the requested columns, and drops rows outside the requested itemids / subjects before a
batch ever becomes a DataFrame. Column names are matched case-insensitively (MIMIC-III is
upper-case, MIMIC-IV lower-case) and returned lower-case.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from cohorts.adapters import AdapterError

log = logging.getLogger("medmix.cohorts.readers")

BLOCK_SIZE = 32 << 20  # bytes of CSV text per batch
TIMESTAMP = pa.timestamp("s")
_TYPES_MAPPER = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get


def find_table(root: str | Path, name: str, dataset: str = "") -> Path:
    """``root/name.csv.gz`` or ``root/name.csv`` (base name in any case); a clear error if absent."""
    root = Path(root)
    rel = Path(name)
    tried = []
    for base in dict.fromkeys((rel.name, rel.name.upper(), rel.name.lower())):
        for ext in (".csv.gz", ".csv"):
            cand = root / rel.parent / f"{base}{ext}"
            tried.append(str(cand))
            if cand.is_file():
                return cand
    what = f"{dataset}: " if dataset else ""
    raise AdapterError(
        f"{what}table {name!r} not found; looked for {', '.join(tried[:2])} (any case)"
    )


def find_optional(
    root: str | Path, name: str, remarks: list[str], what: str, dataset: str = ""
) -> Path | None:
    """:func:`find_table`, or None with a remark (``what`` is missing) when the table is absent."""
    try:
        return find_table(root, name, dataset)
    except AdapterError:
        remarks.append(f"{name}.csv(.gz) not found in {root}: {what} missing")
        log.warning("%s: %s", dataset or "adapter", remarks[-1])
        return None


def read_header(path: str | Path) -> list[str]:
    """Column names of a CSV(.gz), lower-case, stray quotes and blanks removed.

    Tolerates damaged headers such as the MIMIC-III demo's ``NOTEEVENTS`` (``"row_id, "subject_id", …``).
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            line = fh.readline()
    except OSError as exc:
        raise AdapterError(f"{path}: unreadable ({exc})") from exc
    names = [
        c.strip().strip('"').strip("'").strip().lower() for c in line.rstrip("\r\n").split(",")
    ]
    if not line.strip() or not any(names):
        raise AdapterError(f"{path}: empty file (no header line)")
    return names


def require_columns(path: str | Path, have: Collection[str], need: Collection[str]) -> None:
    missing = [c for c in need if c not in have]
    if missing:
        raise AdapterError(
            f"{path}: missing column(s) {missing}; the file has columns {list(have)}"
        )


def scan_csv(
    path: str | Path,
    columns: Mapping[str, pa.DataType],
    *,
    isin: Mapping[str, Collection[int]] | None = None,
    newlines_in_values: bool = False,
    block_size: int = BLOCK_SIZE,
) -> Iterator[pd.DataFrame]:
    """Stream ``columns`` (lower-case name -> arrow type) of a CSV(.gz) as DataFrames.

    ``isin`` keeps only rows whose integer column value is in the given set (e.g. itemids,
    subject ids); filtering happens on the arrow batch. Integer columns come back as
    pandas ``Int64`` (nullable), timestamps as ``datetime64``.
    """
    path = Path(path)
    header = read_header(path)
    require_columns(path, header, [*columns, *(isin or {})])
    wanted = {**columns, **{c: columns.get(c, pa.int64()) for c in (isin or {})}}
    read_opts = pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=block_size)
    conv = pacsv.ConvertOptions(
        include_columns=list(wanted),
        column_types=wanted,
        strings_can_be_null=True,
        timestamp_parsers=[pacsv.ISO8601, "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
    )
    parse = pacsv.ParseOptions(newlines_in_values=newlines_in_values)
    sets = {c: pa.array(sorted(set(map(int, v))), pa.int64()) for c, v in (isin or {}).items()}
    try:
        reader = pacsv.open_csv(
            path, read_options=read_opts, parse_options=parse, convert_options=conv
        )
        for batch in reader:
            if batch.num_rows == 0:
                continue
            if sets:
                mask = None
                for col, values in sets.items():
                    m = pc.is_in(pc.cast(batch.column(col), pa.int64()), value_set=values)
                    mask = m if mask is None else pc.and_(mask, m)
                batch = batch.filter(pc.fill_null(mask, False))
                if batch.num_rows == 0:
                    continue
            yield batch.to_pandas(types_mapper=_TYPES_MAPPER)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AdapterError(f"{path}: cannot parse columns {_describe(wanted)}: {exc}") from exc


def read_csv(
    path: str | Path,
    columns: Mapping[str, pa.DataType],
    *,
    isin: Mapping[str, Collection[int]] | None = None,
    newlines_in_values: bool = False,
) -> pd.DataFrame:
    """:func:`scan_csv`, concatenated (for the small dimension / admission tables)."""
    parts = list(scan_csv(path, columns, isin=isin, newlines_in_values=newlines_in_values))
    if parts:
        return pd.concat(parts, ignore_index=True)
    empty = pa.schema([(c, t) for c, t in columns.items()]).empty_table()
    return empty.to_pandas(types_mapper=_TYPES_MAPPER)


def _describe(columns: Mapping[str, pa.DataType]) -> str:
    return "{" + ", ".join(f"{c}: {t}" for c, t in columns.items()) + "}"
