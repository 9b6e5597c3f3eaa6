"""What the tables and figures read: the metrics tables (one row per dataset, protocol,
method, seed, split, task and metric), summarised as mean and std over seeds, and the
efficiency measurements."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion.efficiency import PERF_METRICS, efficiency_rows
from fusion.report.table_model import ValueColumn
from medmix.plan import training_datasets

METRIC_COLUMNS = {"auroc": "AUROC", "auprc": "AUPRC", "macro_f1": "mF1", "accuracy": "Acc"}
KEYS = ["dataset", "protocol", "method", "split", "task", "metric"]
METRICS_SCHEMA = ["dataset", "protocol", "method", "seed", "split", "task", "metric", "value"]


def load_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        raise ValueError("no metrics files given")
    return pd.concat(frames, ignore_index=True)


def paper_metrics(cfg: dict[str, Any], results: Path) -> pd.DataFrame:
    """The metrics tables of the config's training datasets (an empty table before any)."""
    paths = [p for p in (results / d / "metrics.parquet" for d in training_datasets(cfg))
             if p.exists()]  # fmt: skip
    return load_metrics(paths) if paths else pd.DataFrame(columns=METRICS_SCHEMA)


def summarise(metrics: pd.DataFrame, protocol: str = "full", split: str = "test") -> pd.DataFrame:
    """Mean and std over seeds of the macro (averaged over labels/tasks) test metrics."""
    sel = metrics[
        (metrics["protocol"] == protocol)
        & (metrics["split"] == split)
        & (metrics["task"] == "macro")
    ]
    sel = sel[sel["metric"].isin(list(METRIC_COLUMNS))]
    if sel.empty:
        raise ValueError(f"no {split} metrics for protocol {protocol!r}")
    agg = (
        sel.groupby(["dataset", "method", "metric"])["value"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    agg["std"] = agg["std"].fillna(0.0)
    return agg


def aggregate(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1) and count over seeds per (dataset, protocol, method, split, task, metric)."""
    agg = metrics.groupby(KEYS)["value"].agg(["mean", "std", "count"]).reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    return agg


class Cells:
    """Look-ups of (mean, std) cells in an aggregated metrics table."""

    def __init__(self, metrics: pd.DataFrame) -> None:
        columns = [*KEYS, "mean", "std", "count"]
        self.agg = aggregate(metrics) if len(metrics) else pd.DataFrame(columns=columns)
        self.index = {
            tuple(r[:6]): (float(r[6]), float(r[7]), int(r[8]))
            for r in self.agg[columns].itertuples(index=False)
        }

    def get(
        self, dataset: str, protocol: str, method: str, metric: str, split: str = "test",
        task: str = "macro",
    ) -> tuple[float, float] | None:  # fmt: skip
        v = self.index.get((dataset, protocol, method, split, task, metric))
        return None if v is None else (v[0], v[1])

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
