"""Hourly EHR series over the observation window, built from streamed event batches.

Events (``subject_id, itemid, charttime, valuenum`` and, where the table publishes it,
``storetime``) are matched to samples by subject and kept only when ``intime <= charttime <
intime + hours`` and, with a store time, ``storetime < intime + hours`` — nothing recorded at
or after the prediction time enters a sample (a lab drawn at hour 47 whose result was
stored after the cut-off was not known at prediction time). A null store time does not
exclude the event. Values are converted to the variable's unit, implausible values are
dropped, and each (sample, hour, variable) cell is the mean of its values. No imputation:
unobserved cells stay NaN. Batches are reduced to (sum, count) cells as they stream, so
memory grows with the number of observed cells, never with the size of the event table.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cohorts.adapters.ehr_variables import BY_NAME, NAMES, VARIABLES

_VAR_INDEX = {name: i for i, name in enumerate(NAMES)}
_LO = np.array([v.valid[0] for v in VARIABLES])
_HI = np.array([v.valid[1] for v in VARIABLES])


class HourlyAccumulator:
    """Collects event batches into per-(sample, hour, variable) sums and counts."""

    def __init__(self, windows: pd.DataFrame, itemids: dict[int, str], hours: int = 48) -> None:
        """``windows``: one row per sample with ``sample`` (int index), ``subject_id``, ``intime``."""
        self.windows = windows[["sample", "subject_id", "intime"]].copy()
        self.windows["sample"] = self.windows["sample"].astype("int32")
        self.windows["subject_id"] = self.windows["subject_id"].astype("int64")
        self.itemids = {int(k): _VAR_INDEX[v] for k, v in itemids.items()}
        self.fahrenheit = {i for v in VARIABLES for i in v.fahrenheit}
        self.fraction = {i for i, k in self.itemids.items() if VARIABLES[k].fraction_to_percent}
        self.hours = hours
        self.parts: list[pd.DataFrame] = []
        self.n_events = 0
        self.n_stored_late = 0  # charted inside the window, stored at or after the cut-off

    def add(self, events: pd.DataFrame) -> None:
        stored = "storetime" in events.columns
        cols = ["subject_id", "itemid", "charttime", "valuenum"] + (["storetime"] if stored else [])
        ev = events[cols]
        ev = ev[ev["valuenum"].notna() & ev["charttime"].notna() & ev["itemid"].notna()]
        if ev.empty:
            return
        item = ev["itemid"].astype("int64")
        var = item.map(self.itemids)
        value = ev["valuenum"].astype("float64").to_numpy(copy=True)
        is_f = item.isin(self.fahrenheit).to_numpy()
        value[is_f] = (value[is_f] - 32.0) * 5.0 / 9.0
        is_frac = (item.isin(self.fraction) & (ev["valuenum"] <= 1.0)).to_numpy()
        value[is_frac] = value[is_frac] * 100.0
        frame = pd.DataFrame(
            {
                "subject_id": ev["subject_id"].astype("int64").to_numpy(),
                "var": var.to_numpy(),
                "time": ev["charttime"].to_numpy(),
                "stored": ev["storetime"].to_numpy() if stored else pd.NaT,
                "value": value,
            }
        ).dropna(subset=["var"])
        frame["var"] = frame["var"].astype("int64")
        v = frame["var"].to_numpy()
        frame = frame[(frame["value"] >= _LO[v]) & (frame["value"] <= _HI[v])]
        if frame.empty:
            return
        frame = frame.merge(self.windows, on="subject_id", how="inner")
        hour = (frame["time"] - frame["intime"]) / pd.Timedelta(hours=1)
        keep = (hour >= 0) & (hour < self.hours)
        if stored:
            stored_hour = (frame["stored"] - frame["intime"]) / pd.Timedelta(hours=1)
            late = keep & stored_hour.notna() & (stored_hour >= self.hours)
            self.n_stored_late += int(late.sum())
            keep &= ~late
        frame = frame.loc[keep, ["sample", "var", "value"]].assign(
            hour=np.floor(hour[keep]).astype("int16"), var=lambda d: d["var"].astype("int16")
        )
        if frame.empty:
            return
        self.n_events += len(frame)
        part = frame.groupby(["sample", "hour", "var"], sort=False)["value"].agg(["sum", "count"])
        self.parts.append(part.reset_index().astype({"count": "int32"}))

    def add_all(self, batches: Iterable[pd.DataFrame]) -> None:
        for b in batches:
            self.add(b)

    def cells(self) -> pd.DataFrame:
        """``sample, hour, var, value`` (the hourly means)."""
        if not self.parts:
            return pd.DataFrame({"sample": [], "hour": [], "var": [], "value": []})
        allp = pd.concat(self.parts, ignore_index=True)
        agg = (
            allp.groupby(["sample", "hour", "var"], sort=True)[["sum", "count"]].sum().reset_index()
        )
        return agg.assign(value=agg["sum"] / agg["count"])[["sample", "hour", "var", "value"]]


def write_series(
    cells: pd.DataFrame,
    names: list[str] | pd.Series,
    out_dir: str | Path,
    root: str | Path,
    hours: int = 48,
) -> dict[str, str]:
    """One Parquet per sample with any observation: ``hour`` 0..hours-1 + one column per variable.

    ``names[i]`` is the sample id of sample index ``i`` (and the file name). Returns sample id
    -> path relative to ``root``. Files are float32, NaN where unobserved.
    """
    names = list(names)
    out_dir, root = Path(out_dir), Path(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for sample, part in cells.groupby("sample", sort=True):
        grid = np.full((hours, len(NAMES)), np.nan, dtype=np.float32)
        grid[part["hour"].to_numpy(), part["var"].to_numpy()] = part["value"].to_numpy(
            dtype=np.float32
        )
        table = pa.table(
            {
                "hour": pa.array(np.arange(hours, dtype=np.int16)),
                **{n: grid[:, i] for i, n in enumerate(NAMES)},
            }
        )
        table = table.replace_schema_metadata(
            {b"medmix.units": ";".join(f"{n}={BY_NAME[n].unit}" for n in NAMES).encode()}
        )
        sample_id = str(names[int(sample)])
        path = out_dir / f"{_safe(sample_id)}.parquet"
        pq.write_table(table, path)
        paths[sample_id] = path.resolve().relative_to(root.resolve()).as_posix()
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
