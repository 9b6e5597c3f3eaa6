"""Write the tables and figures a command asks for, each by its registered builder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

# every table and figure module registers its builders when imported
import fusion.report.figures.ablation
import fusion.report.figures.main
import fusion.report.figures.pareto
import fusion.report.figures.sweeps
import fusion.report.figures.weights
import fusion.report.tables.ablation
import fusion.report.tables.efficiency
import fusion.report.tables.experts
import fusion.report.tables.external
import fusion.report.tables.main
import fusion.report.tables.per_task
import fusion.report.tables.protocols  # noqa: F401
from fusion.report.cells import Cells, load_costs, load_metrics, paper_metrics
from fusion.report.registry import (
    MAIN,
    figure_patterns,
    figure_spec,
    table_spec,
    table_stems,
)
from fusion.report.table_render import write_table
from medmix.plan import paper_outputs


def render_tables(stems: Sequence[str], available: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Build each table from ``available`` and write its four files into ``out_dir``."""
    written: list[Path] = []
    for stem in stems:
        written += write_table(table_spec(stem)(available), out_dir)
    return written


def render_figures(stems: Sequence[str], available: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Draw each figure from ``available`` into ``out_dir``."""
    written: list[Path] = []
    for stem in stems:
        written += figure_spec(stem)(stem, {**available, "out_dir": out_dir})
    return written


def render_paper(
    cfg: dict[str, Any],
    tables_dir: str | Path,
    figures_dir: str | Path,
    metrics: pd.DataFrame | None = None,
) -> list[Path]:
    """Write every table and figure :func:`medmix.plan.paper_outputs` lists for ``cfg``."""
    results = Path(cfg.get("results", "results"))
    if metrics is None:
        metrics = paper_metrics(cfg, results)
    plan = paper_outputs(cfg)
    cells = Cells(metrics, seeds=cfg.get("seeds") or [0])  # the seeds every run trains
    available = {"cfg": cfg, "cells": cells, "results": results,
                 "costs": load_costs(cfg, results)}  # fmt: skip
    return render_tables(plan["tables"], available, Path(tables_dir)) + render_figures(
        plan["figures"], available, Path(figures_dir)
    )


def render_main_tables(metrics_paths: Sequence[str | Path], out_dir: str | Path,
                       header: str) -> list[Path]:  # fmt: skip
    """``tables``: Table 1 from the datasets' metrics tables."""
    available = {"metrics_paths": metrics_paths, "header": header}
    return render_tables(table_stems(MAIN), available, Path(out_dir))


def render_main_figures(
    metrics_paths: Sequence[str | Path],
    prediction_files: Sequence[str | Path],
    out_dir: str | Path,
    header: str,
) -> list[Path]:
    """``figures``: test AUROC per dataset and method, and MedMIX's weights β from its
    ``results/{dataset}/runs/.../predictions.parquet`` files."""
    by_ds: dict[str, list[Path]] = {}
    for f in prediction_files:
        ds = Path(f).parts[Path(f).parts.index("runs") - 1]
        by_ds.setdefault(ds, []).append(Path(f))
    available = {"metrics": load_metrics(metrics_paths), "prediction_files": by_ds,
                 "header": header}  # fmt: skip
    return render_figures(figure_patterns(MAIN), available, Path(out_dir))
