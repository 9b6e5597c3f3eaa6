"""Multivariate EHR time series files -> per-variable observations on a common clock.

A file is a table with a time column (default ``hour``) and one column per variable (wide
format), or the long format ``time, variable, value``. Formats: ``.csv``, ``.tsv`` (optionally
``.gz``), ``.parquet``. Cleaning, the same for every time-series expert:

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


def read_series(path: str | Path, time_column: str = "hour") -> Series:
    """Read and clean one time-series file (see the module docstring)."""
    df = _read_table(Path(path))
    if time_column not in df.columns:
        raise SampleError(f"no time column {time_column!r}")
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
