"""Multivariate EHR time series files -> per-variable observations on a common clock.

A file is a table with a time column (default ``hour``) and one column per variable (wide
format), or the long format ``time, variable, value``. Formats: ``.csv``, ``.tsv`` (optionally
``.gz``), ``.parquet``. Cleaning, the same for every time-series expert:

* time is in **hours**: a numeric time column is taken as hours as it is (the adapters write
  ``hour`` 0, 1, …); a date-time column (Parquet timestamps, with or without a time zone, or
  ISO 8601 strings such as ``2150-03-01T08:30``) becomes hours since the file's first time stamp
  (time zones converted to UTC); a duration column (Parquet / pandas timedelta, or strings such
  as ``1 days 02:00:00``) becomes hours. So slopes, steps and grids are per hour whatever the
  file stores. A time column that is none of these (text that is neither a number nor an
  ISO 8601 date-time, a boolean or complex column, numbers mixed with dates) is a failed sample
  whose reason names the column;
* a date-time or duration column other than the time column is a failed sample (read as a
  variable it would be nanosecond counts);
* rows without a time are dropped; rows are sorted by time;
* ±inf and non-numeric cells count as missing;
* repeated timestamps are merged: per variable, the mean of the values observed at that time;
* a file where no variable has any observed value -> ``SampleError("all values missing")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.base import SampleError
from extractors.readers import suffix_of


@dataclass
class Series:
    times: np.ndarray  # (T,) sorted unique timestamps of the file (float64)
    values: dict[str, np.ndarray]  # variable -> (T,) float64 with NaN where not observed


def _read_table(path: Path) -> pd.DataFrame:
    suffix = suffix_of(path)
    try:
        if suffix in (".csv", ".csv.gz"):
            return pd.read_csv(path)
        if suffix in (".tsv", ".tsv.gz"):
            return pd.read_csv(path, sep="\t")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise SampleError("empty table") from exc
    except Exception as exc:
        raise SampleError(f"unreadable time series ({type(exc).__name__})") from exc
    raise SampleError(f"unsupported time-series format {suffix!r} (csv, tsv, parquet)")


def _is_plain_numeric(col: pd.Series) -> bool:
    return (
        pd.api.types.is_numeric_dtype(col)
        and not pd.api.types.is_bool_dtype(col)
        and not pd.api.types.is_complex_dtype(col)
    )


def _hours_since_first(stamps: pd.Series) -> np.ndarray:
    """Date-times (naive taken as UTC) -> float64 hours since the earliest; NaT -> NaN."""
    utc = pd.to_datetime(stamps, utc=True).dt.tz_localize(None)
    arr = utc.to_numpy()  # datetime64 in the column's own unit (no overflow to ns)
    ok = ~np.isnat(arr)
    if not ok.any():
        return np.full(len(arr), np.nan)
    return (arr - arr[ok].min()) / np.timedelta64(1, "h")


def _duration_hours(durations: pd.Series) -> np.ndarray:
    return pd.to_timedelta(durations).to_numpy() / np.timedelta64(1, "h")


def _all_of(cells: list, types: tuple[type, ...]) -> bool:
    return all(isinstance(v, types) for v in cells)


def _text_hours(cells: list) -> tuple[np.ndarray | None, int]:
    """Non-empty cells of an object / string time column -> (hours, 0), trying numbers, then
    ISO 8601 date-times, then durations; or (None, fewest unreadable cells of any reading)."""
    import datetime as dt

    readings = []
    if _all_of(cells, (str, int, float, np.integer, np.floating)) and not any(
        isinstance(v, bool | np.bool_) for v in cells
    ):
        readings.append(lambda v: pd.to_numeric(pd.Series(v, dtype=object), errors="coerce"))
    if _all_of(cells, (str, dt.date, np.datetime64)):  # datetime is a date subclass
        readings.append(
            lambda v: _hours_since_first(
                pd.to_datetime(
                    pd.Series(v, dtype=object), format="ISO8601", utc=True, errors="coerce"
                )
            )
        )
    if _all_of(cells, (str, dt.timedelta, np.timedelta64)):
        readings.append(
            lambda v: _duration_hours(pd.to_timedelta(pd.Series(v, dtype=object), errors="coerce"))
        )
    fewest = len(cells)
    for read in readings:
        try:
            hours = np.asarray(read(cells), dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            continue
        unread = int(np.isnan(hours).sum())
        if unread == 0:
            return hours, 0
        fewest = min(fewest, unread)
    return None, fewest


def time_hours(col: pd.Series, name: str) -> np.ndarray:
    """A time column -> float64 hours (see the module docstring); NaN where a cell is empty.
    Raises SampleError naming the column when it cannot be read as times."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_complex_dtype(col):
        raise SampleError(f"time column {name!r} has dtype {col.dtype}, not times or numbers")
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_numeric(col).to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_datetime64_any_dtype(col):
        return _hours_since_first(col)
    if pd.api.types.is_timedelta64_dtype(col):
        return _duration_hours(col)
    cells = col.tolist()
    keep = np.asarray(
        [not (pd.isna(v) if np.ndim(v) == 0 else False) and str(v).strip() != "" for v in cells],
        dtype=bool,
    )
    out = np.full(len(cells), np.nan)
    if not keep.any():
        return out
    present = [v for v, k in zip(cells, keep, strict=True) if k]
    hours, unread = _text_hours(present)
    if hours is None:
        raise SampleError(
            f"time column {name!r}: {unread} of {len(present)} values are neither numbers nor "
            "ISO 8601 date-times or durations"
        )
    out[keep] = hours
    return out


def _refuse_clock_variables(df: pd.DataFrame, time_column: str) -> None:
    """A date-time / duration column other than the time column is refused: read as a
    variable it would be sub-second counts since 1970."""
    for c in df.columns:
        if c == time_column:
            continue
        if pd.api.types.is_datetime64_any_dtype(df[c]):
            what = "date-times"
        elif pd.api.types.is_timedelta64_dtype(df[c]):
            what = "durations"
        else:
            continue
        raise SampleError(
            f"column {str(c)!r} holds {what}; only the time column {time_column!r} may "
            "(drop it or set time_column)"
        )


def read_series(path: str | Path, time_column: str = "hour") -> Series:
    """Read and clean one time-series file (see the module docstring)."""
    df = _read_table(Path(path))
    if time_column not in df.columns:
        raise SampleError(f"no time column {time_column!r}")
    _refuse_clock_variables(df, time_column)
    if not _is_plain_numeric(df[time_column]):
        df = df.copy()
        df[time_column] = time_hours(df[time_column], time_column)
    if {"variable", "value"} <= set(df.columns):  # long format
        long = df[[time_column, "variable", "value"]].copy()
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        df = long.pivot_table(
            index=time_column, columns="variable", values="value", aggfunc="mean"
        ).reset_index()
        df.columns = [str(c) for c in df.columns]
    t = pd.to_numeric(df[time_column], errors="coerce").to_numpy(dtype=np.float64)
    var_cols = [c for c in df.columns if c != time_column]
    if not var_cols:
        raise SampleError("no variable columns")
    cols = []
    for c in var_cols:
        col = df[c]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            col = pd.to_numeric(col, errors="coerce")
        cols.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
    x = np.stack(cols, axis=1) if cols else np.zeros((len(df), 0))
    keep = np.isfinite(t)
    if not keep.any():
        raise SampleError("no rows with a time")
    t, x = t[keep], x[keep]
    x[~np.isfinite(x)] = np.nan  # inf counts as missing
    order = np.argsort(t, kind="stable")
    t, x = t[order], x[order]
    times, inverse = np.unique(t, return_inverse=True)
    if len(times) < len(t):  # repeated timestamps: mean of the values observed there
        obs = np.isfinite(x)
        sums = np.zeros((len(times), x.shape[1]))
        counts = np.zeros((len(times), x.shape[1]))
        np.add.at(sums, inverse, np.where(obs, x, 0.0))
        np.add.at(counts, inverse, obs)
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if not np.isfinite(x).any():
        raise SampleError("all values missing")
    return Series(times=times, values={str(c): x[:, i] for i, c in enumerate(var_cols)})
