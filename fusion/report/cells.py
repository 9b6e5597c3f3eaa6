"""What the tables and figures read: the metrics tables (one row per dataset, protocol,
method, seed, split, task and metric), summarised as mean and std over seeds, and the
efficiency measurements.

A mean ± std is trusted only over every seed its run was configured with. :func:`seed_flags`
names each cell that is not: seeds missing from the metrics (a seed folder lost, a run cut
short) or a NaN / inf value (the seed is left out of the mean ± std, never silently). Such a
cell becomes a :class:`~fusion.report.table_model.SeedMean` with the reason, printed with the
incomplete mark and never bold. Input the spread would be wrong for is refused
(:class:`ReportInputError`, one line): the same metrics file or dataset given twice, or a seed's
metric appearing twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion.efficiency import PERF_METRICS, efficiency_rows
from fusion.report.table_model import SeedMean, ValueColumn
from medmix.errors import UserError
from medmix.plan import training_datasets

METRIC_COLUMNS = {"auroc": "AUROC", "auprc": "AUPRC", "macro_f1": "mF1", "accuracy": "Acc"}
KEYS = ["dataset", "protocol", "method", "split", "task", "metric"]
METRICS_SCHEMA = ["dataset", "protocol", "method", "seed", "split", "task", "metric", "value"]


RUN_KEYS = ["dataset", "protocol", "method"]
SeedsOf = Callable[[str, str, str], Sequence[int]]  # (dataset, protocol, method) -> seeds


class ReportInputError(UserError, ValueError):
    """Metrics the tables cannot summarise honestly; the message is one line naming the file
    (the command line prints it as ``error: ...``, exit status 2)."""


def load_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The metrics tables of ``paths`` as one; refuses a file or a dataset given twice and a
    (dataset, protocol, method, seed, split, task, metric) appearing twice (each would count
    a seed twice and shrink the std)."""
    if not paths:
        raise ReportInputError("no metrics files given")
    seen: dict[Path, str] = {}
    owner: dict[str, str] = {}
    frames = []
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise ReportInputError(f"{p}: metrics file given twice (as {seen[key]} too)")
        seen[key] = str(p)
        if not key.is_file():
            raise ReportInputError(f"{p}: metrics file not found")
        df = pd.read_parquet(p)
        missing = [c for c in METRICS_SCHEMA if c not in df.columns]
        if missing:
            raise ReportInputError(f"{p}: not a metrics table (no column {', '.join(missing)})")
        for ds in df["dataset"].drop_duplicates():
            if ds in owner:
                raise ReportInputError(
                    f"{p}: dataset {ds} is also in {owner[ds]}: give each dataset's metrics once"
                )
            owner[str(ds)] = str(p)
        _refuse_duplicates(df, str(p))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _refuse_duplicates(df: pd.DataFrame, where: str) -> None:
    dup = df.duplicated(METRICS_SCHEMA[:-1], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise ReportInputError(
            f"{where}: {int(dup.sum())} rows repeat a seed's metric, e.g. "
            + ", ".join(f"{k}={first[k]}" for k in METRICS_SCHEMA[:-1])
            + ": each seed must appear once per metric"
        )


def seeds_by_dataset(metrics: pd.DataFrame, seeds: Sequence[int] | None = None) -> SeedsOf:
    """The seeds each run should have: ``seeds`` (the config's) where given, else every seed
    the dataset's metrics hold (all runs of a dataset train the config's seeds)."""
    fixed = None if seeds is None else [int(s) for s in seeds]
    union = {
        str(ds): sorted(int(s) for s in g.unique())
        for ds, g in metrics.groupby("dataset", sort=False)["seed"]
    } if fixed is None and len(metrics) else {}  # fmt: skip
    return lambda ds, protocol, method: fixed if fixed is not None else union.get(ds, [])


def _seed_list(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


def seed_flags(metrics: pd.DataFrame, expected: SeedsOf) -> dict[tuple, str]:
    """(dataset, protocol, method, split, task, metric) -> why its mean ± std is not over every
    expected seed: seeds missing, NaN / inf values. Complete cells are not listed."""
    if metrics.empty:
        return {}
    runs = metrics[RUN_KEYS].drop_duplicates()
    want = pd.DataFrame(
        [(*r, int(s)) for r in runs.itertuples(index=False, name=None) for s in expected(*r)],
        columns=[*RUN_KEYS, "seed"],
    ).drop_duplicates()
    n_want = want.groupby(RUN_KEYS, sort=False).size().rename("n_want")
    frame = metrics[[*KEYS, "seed", "value"]].copy()
    frame["bad"] = ~np.isfinite(metrics["value"].to_numpy(dtype=np.float64))
    frame["wanted"] = frame.merge(want.assign(w=True), how="left", on=[*RUN_KEYS, "seed"])[
        "w"
    ].fillna(False).to_numpy(dtype=bool)  # fmt: skip
    frame["seed_wanted"] = frame["seed"].where(frame["wanted"])
    stats = frame.groupby(KEYS, sort=False).agg(
        n_have=("seed_wanted", "nunique"), n_bad=("bad", "sum")
    )
    stats = stats.join(n_want, on=RUN_KEYS).fillna({"n_want": 0})
    suspect = stats[(stats["n_have"] < stats["n_want"]) | (stats["n_bad"] > 0)]
    if suspect.empty:
        return {}
    out = {}
    groups = frame.groupby(KEYS, sort=False)
    for key in suspect.index:
        g = groups.get_group(key)
        wanted = [int(s) for s in expected(*key[:3])]
        have = sorted(set(int(s) for s in g["seed"]))
        parts = []
        missing = [s for s in wanted if s not in have]
        if missing:
            parts.append(f"{len(wanted) - len(missing)} of {len(wanted)} seeds "
                         f"({_seed_list(missing)} missing)")  # fmt: skip
        nan = sorted(set(int(s) for s in g.loc[g["bad"], "seed"]))
        if nan:
            rest = len(set(have) - set(nan))
            name = METRIC_COLUMNS.get(key[5], key[5])
            vals = g.loc[g["bad"], "value"].to_numpy(dtype=np.float64)
            kind = "NaN" if np.isnan(vals).all() else "inf" if np.isinf(vals).all() else "NaN/inf"
            parts.append(f"{name} is {kind} in {_seed_list(nan)}"
                         + (f" (mean ± std over the other {rest})" if rest else ""))  # fmt: skip
        out[key] = "; ".join(parts)
    return out


def _finite(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with an inf value read as NaN (left out of the mean, flagged)."""
    v = metrics["value"]
    if bool(np.isfinite(v.to_numpy(dtype=np.float64)).all()):
        return metrics
    return metrics.assign(value=v.where(np.isfinite(v.to_numpy(dtype=np.float64))))


def paper_metrics(cfg: dict[str, Any], results: Path) -> pd.DataFrame:
    """The metrics tables of the config's training datasets (an empty table before any)."""
    paths = [p for p in (results / d / "metrics.parquet" for d in training_datasets(cfg))
             if p.exists()]  # fmt: skip
    return load_metrics(paths) if paths else pd.DataFrame(columns=METRICS_SCHEMA)


def summarise(
    metrics: pd.DataFrame,
    protocol: str = "full",
    split: str = "test",
    expected: SeedsOf | None = None,
) -> pd.DataFrame:
    """Mean and std over seeds of the macro (averaged over labels/tasks) test metrics, with
    ``flag`` (None, or why the cell is not over every ``expected`` seed: :func:`seed_flags`;
    default: every seed of the dataset)."""
    sel = metrics[
        (metrics["protocol"] == protocol)
        & (metrics["split"] == split)
        & (metrics["task"] == "macro")
    ]
    sel = sel[sel["metric"].isin(list(METRIC_COLUMNS))]
    if sel.empty:
        raise ValueError(f"no {split} metrics for protocol {protocol!r}")
    agg = (
        _finite(sel).groupby(["dataset", "method", "metric"])["value"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )  # fmt: skip
    agg["std"] = agg["std"].fillna(0.0)
    flags = seed_flags(sel, expected or seeds_by_dataset(metrics))
    agg["flag"] = [flags.get((ds, protocol, m, split, "macro", k))
                   for ds, m, k in agg[["dataset", "method", "metric"]].itertuples(index=False)]  # fmt: skip
    return agg


def aggregate(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1) and count over seeds per (dataset, protocol, method, split, task,
    metric), over the finite values (a NaN seed is flagged by :func:`seed_flags`)."""
    agg = _finite(metrics).groupby(KEYS)["value"].agg(["mean", "std", "count"]).reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    return agg


class Cells:
    """Look-ups of (mean, std) cells in an aggregated metrics table; a cell not over every
    expected seed (``seeds``: the config's; default every seed of its dataset) is a
    :class:`~fusion.report.table_model.SeedMean` saying why."""

    def __init__(self, metrics: pd.DataFrame, seeds: Sequence[int] | None = None) -> None:
        columns = [*KEYS, "mean", "std", "count"]
        self.agg = aggregate(metrics) if len(metrics) else pd.DataFrame(columns=columns)
        self.index = {
            tuple(r[:6]): (float(r[6]), float(r[7]), int(r[8]))
            for r in self.agg[columns].itertuples(index=False)
        }
        self.flags = seed_flags(metrics, seeds_by_dataset(metrics, seeds)) if len(metrics) else {}

    def get(
        self, dataset: str, protocol: str, method: str, metric: str, split: str = "test",
        task: str = "macro",
    ) -> tuple[float, float] | None:  # fmt: skip
        key = (dataset, protocol, method, split, task, metric)
        v = self.index.get(key)
        if v is None:
            return None
        flag = self.flags.get(key)
        return (v[0], v[1]) if flag is None else SeedMean(v[0], v[1], flag)

    def flag(self, dataset: str, protocol: str, method: str, metric: str, split: str = "test",
             task: str = "macro") -> str | None:  # fmt: skip
        """Why a cell is not over every expected seed, or None."""
        return self.flags.get((dataset, protocol, method, split, task, metric))

    def metric_row(self, dataset: str, protocol: str, method: str, split: str = "test",
                   task: str = "macro") -> dict[str, Any]:  # fmt: skip
        return {m: self.get(dataset, protocol, method, m, split, task) for m in METRIC_COLUMNS}


def metric_columns() -> list[ValueColumn]:
    return [ValueColumn(k, v) for k, v in METRIC_COLUMNS.items()]


def seeds_text(cfg: dict[str, Any]) -> str:
    return f"mean ± std over {len(cfg.get('seeds') or [0])} seeds"


def load_costs(cfg: dict[str, Any], results: Path) -> dict[str, dict[str, Any]]:
    """dataset -> its ``efficiency.json`` (:mod:`fusion.efficiency`), where measured."""
    costs = {}
    for ds in training_datasets(cfg):
        p = results / ds / "efficiency.json"
        if p.exists():
            costs[ds] = json.loads(p.read_text())
    return costs


def efficiency_data(cells: Cells, costs: dict[str, dict[str, Any]]) -> list[Any]:
    """:func:`fusion.efficiency.efficiency_rows` with each method's Perf from the metrics."""
    perfs = {}
    for ds, res in costs.items():
        for method in res.get("methods", {}):
            vals = [cells.get(ds, "full", method, m) for m in PERF_METRICS]
            if all(v is not None for v in vals):
                perfs[(ds, method)] = float(np.mean([v[0] for v in vals]))
    return efficiency_rows(costs, perfs)


def perf_flags(cells: Cells, costs: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(dataset, method) -> why its Perf (:func:`efficiency_data`) is over incomplete cells."""
    out = {}
    for ds, res in costs.items():
        for method in res.get("methods", {}):
            flags = [cells.flag(ds, "full", method, m) for m in PERF_METRICS]
            flags = list(dict.fromkeys(f for f in flags if f))
            if flags:
                out[(ds, method)] = "Perf over " + "; ".join(flags)
    return out
