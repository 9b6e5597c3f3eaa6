"""Table E8: per-task results of the multi-task (binary, several labels) datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fusion.report.cells import METRIC_COLUMNS, Cells, metric_columns, seeds_text
from fusion.report.registry import register_table
from fusion.report.table_model import Table, ValueColumn
from medmix.methods import is_teacher, method_label, table1_order
from medmix.plan import run_header, training_datasets


def _task_types(results: Path, ds: str) -> str | None:
    for p in sorted((results / ds / "runs" / "full").glob("*/seed*/metrics.json")):
        try:
            return json.loads(p.read_text()).get("task_type")
        except (OSError, json.JSONDecodeError):
            continue
    return None


@register_table("per_task", caption="Table E8 — per-task results",
                inputs=("cfg", "cells", "results"))  # fmt: skip
def build_per_task_table(
    cfg: dict[str, Any], cells: Cells, results: Path, task_types: dict[str, str] | None = None
) -> Table:
    """Table E8 (``task_types``: dataset -> task type, else read from the runs)."""
    agg = cells.agg
    datasets = []
    for ds in training_datasets(cfg):
        tt = (task_types or {}).get(ds) or _task_types(results, ds)
        tasks = sorted(set(agg.loc[(agg["dataset"] == ds) & (agg["task"] != "macro"), "task"]))
        if tt == "binary" and len(tasks) > 1:
            datasets.append((ds, tasks))
    has_mf1 = any((agg["task"] != "macro") & (agg["metric"] == "macro_f1")) if len(agg) else False
    f1_key = "macro_f1" if has_mf1 else "f1"
    rows = []
    for ds, tasks in datasets:
        methods = table1_order(agg.loc[(agg["dataset"] == ds) & (agg["protocol"] == "full"),
                                       "method"])  # fmt: skip
        for task in tasks:
            for method in methods:
                row = {"dataset": ds, "task": task, "method": method_label(method)}
                if is_teacher(method):
                    row["method"] += " (teacher reference)"
                    row["_reference"] = True
                for m in METRIC_COLUMNS:
                    key = f1_key if m == "macro_f1" else m
                    row[m] = cells.get(ds, "full", method, key, task=task)
                rows.append(row)
    cols = metric_columns()
    notes = []
    if not has_mf1:
        cols[2] = ValueColumn("macro_f1", "F1")
        notes.append(
            "Per-task F1 is the positive-class F1 (the metrics table has no per-task mF1)."
        )
    if not datasets:
        notes.append("No multi-task dataset in this config.")
    ids = [("task", "Task"), ("method", "Method")]
    if len(datasets) > 1:
        ids.insert(0, ("dataset", "Dataset"))
    header = f"Test split, {seeds_text(cfg)}. {run_header(cfg, [d for d, _ in datasets] or None)}"
    return Table("per_task", header, ids, cols, rows, ["dataset", "task"], notes)
