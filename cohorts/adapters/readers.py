"""Streaming readers for the published CSV / CSV.gz tables, with errors that name file and column.

MIMIC's event tables are huge (MIMIC-IV ``chartevents``: ~330 M rows). They are never loaded
whole: :func:`scan_csv` streams record batches with pyarrow's incremental CSV reader, keeps
only the requested columns, and drops rows outside the requested itemids / subjects before a
batch ever becomes a DataFrame. Column names are matched case-insensitively (MIMIC-III is
upper-case, MIMIC-IV lower-case) and returned lower-case.

Text that is not valid UTF-8 (a stray latin-1 byte in a note) never stops a cohort build nor
loses its row: text columns are read as bytes and a value that fails strict UTF-8 is decoded
byte by byte, the invalid bytes as cp1252 (latin-1 for the five bytes cp1252 leaves
undefined). The number of such rows per file is counted for the adapter's summary.
"""

from __future__ import annotations

import codecs
import gzip
import logging
from collections.abc import Collection, Iterator, Mapping, MutableMapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from cohorts.adapters import AdapterError

log = logging.getLogger("medmix.cohorts.readers")

BLOCK_SIZE = 32 << 20  # bytes of CSV text per batch
TIMESTAMP = pa.timestamp("s")
_TYPES_MAPPER = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get
_TEXT_TYPES = (pa.string(), pa.large_string())
FALLBACK_ENCODING = "cp1252"
_ERRORS = "medmix-cp1252"


def _fallback_bytes(err: UnicodeError) -> tuple[str, int]:
    """Codec error handler: the bytes UTF-8 rejected, decoded one by one as cp1252 (else latin-1)."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    chars = []
    for byte in err.object[err.start : err.end]:
        try:
            chars.append(bytes([byte]).decode(FALLBACK_ENCODING))
        except UnicodeDecodeError:
            chars.append(chr(byte))
    return "".join(chars), err.end


codecs.register_error(_ERRORS, _fallback_bytes)


def decode_text(raw: bytes) -> tuple[str, bool]:
    """``raw`` as text, and whether it needed the cp1252 fallback (it was not valid UTF-8)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", _ERRORS), True


def redecode_strings(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Undo a latin-1 read: each str back to its bytes, decoded by :func:`decode_text`.

    For tables read with ``encoding="latin-1"`` (which never fails and keeps every byte).
    Returns the decoded column and a boolean mask of the values that were not valid UTF-8.
    """
    fixed = values.copy()
    bad = pd.Series(False, index=values.index)
    for idx, v in values.items():
        if isinstance(v, str) and not v.isascii():
            fixed[idx], bad[idx] = decode_text(v.encode("latin-1"))
    return fixed, bad


def note_redecoded(
    counts: MutableMapping[str, int] | None, path: Path, rows: int, columns: Collection[str]
) -> None:
    """Add ``rows`` re-decoded rows of ``path`` to ``counts`` and log it (nothing when 0)."""
    if not rows:
        return
    if counts is not None:
        counts[path.name] = counts.get(path.name, 0) + rows
    log.warning(
        "%s: %d row(s) with text that is not valid UTF-8 in column(s) %s: decoded as %s, kept",
        path,
        rows,
        sorted(columns),
        FALLBACK_ENCODING,
    )


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
    redecoded: MutableMapping[str, int] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream ``columns`` (lower-case name -> arrow type) of a CSV(.gz) as DataFrames.

    ``isin`` keeps only rows whose integer column value is in the given set (e.g. itemids,
    subject ids); filtering happens on the arrow batch. Integer columns come back as
    pandas ``Int64`` (nullable), timestamps as ``datetime64``. String columns are read as
    bytes and decoded with the UTF-8 → cp1252 fallback; the number of kept rows that needed
    it is added to ``redecoded[file name]`` once the file has been read.
    """
    path = Path(path)
    header = read_header(path)
    require_columns(path, header, [*columns, *(isin or {})])
    wanted = {**columns, **{c: columns.get(c, pa.int64()) for c in (isin or {})}}
    text = [c for c, t in wanted.items() if t in _TEXT_TYPES]
    raw_types = {c: (pa.binary() if c in text else t) for c, t in wanted.items()}
    read_opts = pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=block_size)
    conv = pacsv.ConvertOptions(
        include_columns=list(wanted),
        column_types=raw_types,
        strings_can_be_null=True,
        timestamp_parsers=[pacsv.ISO8601, "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
    )
    parse = pacsv.ParseOptions(newlines_in_values=newlines_in_values)
    sets = {c: pa.array(sorted(set(map(int, v))), pa.int64()) for c, v in (isin or {}).items()}
    n_redecoded = 0
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
            batch, bad = _decode_text_columns(batch, text)
            n_redecoded += bad
            yield batch.to_pandas(types_mapper=_TYPES_MAPPER)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AdapterError(f"{path}: cannot parse columns {_describe(wanted)}: {exc}") from exc
    note_redecoded(redecoded, path, n_redecoded, text)


def _decode_text_columns(batch: pa.RecordBatch, text: list[str]) -> tuple[pa.RecordBatch, int]:
    """Binary ``text`` columns -> strings; also the number of rows that were not valid UTF-8.

    A column that is valid UTF-8 throughout is cast in one step; only a failing one is
    decoded value by value.
    """
    if not text:
        return batch, 0
    bad_rows = np.zeros(batch.num_rows, dtype=bool)
    arrays = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if name in text:
            try:
                col = col.cast(pa.string())
            except pa.ArrowInvalid:
                pairs = [(None, False) if v is None else decode_text(v) for v in col.to_pylist()]
                col = pa.array([p[0] for p in pairs], pa.string())
                bad_rows |= np.fromiter((p[1] for p in pairs), bool, len(pairs))
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names), int(bad_rows.sum())


def read_csv(
    path: str | Path,
    columns: Mapping[str, pa.DataType],
    *,
    isin: Mapping[str, Collection[int]] | None = None,
    newlines_in_values: bool = False,
    redecoded: MutableMapping[str, int] | None = None,
) -> pd.DataFrame:
    """:func:`scan_csv`, concatenated (for the small dimension / admission tables)."""
    parts = list(
        scan_csv(
            path, columns, isin=isin, newlines_in_values=newlines_in_values, redecoded=redecoded
        )
    )
    if parts:
        return pd.concat(parts, ignore_index=True)
    empty = pa.schema([(c, t) for c, t in columns.items()]).empty_table()
    return empty.to_pandas(types_mapper=_TYPES_MAPPER)


def read_csv_text(
    path: str | Path, *, redecoded: MutableMapping[str, int] | None = None, **kwargs
) -> pd.DataFrame:
    """``pd.read_csv`` of a small table (generic table, OpenI reports) that survives bad bytes.

    UTF-8 first; when that fails the file is re-read as latin-1 (lossless: one character per
    byte) and every text value and column name is decoded again with :func:`decode_text`,
    so valid UTF-8 stays as it was and only the invalid bytes fall back to cp1252. The rows
    that needed it are counted in ``redecoded[file name]``. Parser errors propagate.
    """
    path = Path(path)
    try:
        return pd.read_csv(path, **kwargs)
    except UnicodeDecodeError:
        pass
    df = pd.read_csv(path, **{**kwargs, "encoding": "latin-1"})
    df.columns = [
        decode_text(c.encode("latin-1"))[0] if isinstance(c, str) else c for c in df.columns
    ]
    bad_rows = pd.Series(False, index=df.index)
    bad_cols = []
    for col in df.columns:
        if not (pd.api.types.is_object_dtype(df[col]) or pd.api.types.is_string_dtype(df[col])):
            continue
        df[col], bad = redecode_strings(df[col])
        if bad.any():
            bad_rows |= bad
            bad_cols.append(str(col))
    note_redecoded(redecoded, path, int(bad_rows.sum()), bad_cols)
    return df


def _describe(columns: Mapping[str, pa.DataType]) -> str:
    return "{" + ", ".join(f"{c}: {t}" for c, t in columns.items()) + "}"
