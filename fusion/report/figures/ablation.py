"""Figure 4: the structural ablations, one row per setting, one column per metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusion.report import style
from fusion.report.cells import METRIC_COLUMNS, Cells
from fusion.report.registry import register_figure
from medmix.ablation_plan import ablation_variants
from medmix.plan import run_header, training_datasets

COMPONENT_COLOR = "#1f77b4"
SINGLE_COLOR = "#7f7f7f"


@register_figure("ablation", inputs=("cfg", "cells", "out_dir"))
def plot_ablation(cfg: dict[str, Any], cells: Cells, out_dir: Path) -> list[Path]:
    """Figure 4: one row per ablation setting, mean ± std over seeds as a dot with error bars
    per metric (columns), MedMIX's mean as a dashed red line; one block per dataset."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    datasets = training_datasets(cfg)
    metrics = list(METRIC_COLUMNS.items())
    counts = [len(ablation_variants(cfg, d)) for d in datasets] or [1]
    kinds = {"reference": (style.MEDMIX_RED, "*", 7), "single_modality": (SINGLE_COLOR, "s", 4)}
    with style.style():
        fig, axes = style.plt().subplots(
            max(len(datasets), 1), len(metrics),
            figsize=(style.DOUBLE_COLUMN, 0.17 * sum(counts) + 0.55 * len(counts) + 0.3),
            squeeze=False, sharey="row", gridspec_kw={"height_ratios": counts},
        )  # fmt: skip
        for r, ds in enumerate(datasets):
            variants = ablation_variants(cfg, ds)
            y = np.arange(len(variants))
            for c, (metric, mlabel) in enumerate(metrics):
                ax = axes[r][c]
                vals = [cells.get(ds, v.protocol, v.method, metric) for v in variants]
                mean = np.array([v[0] if v else np.nan for v in vals])
                std = np.array([v[1] if v else 0.0 for v in vals])
                for k, v in enumerate(variants):
                    color, marker, ms = kinds.get(v.kind, (COMPONENT_COLOR, "o", 4))
                    if np.isfinite(mean[k]):
                        ax.errorbar(mean[k], y[k], xerr=std[k], color=color, marker=marker,
                                    ms=ms, lw=0, elinewidth=0.9, capsize=2, zorder=3)  # fmt: skip
                fin = np.isfinite(mean)
                if fin.any():
                    lo = float(np.min(mean[fin] - std[fin]))
                    hi = float(np.max(mean[fin] + std[fin]))
                    pad = max(0.01, 0.08 * (hi - lo))
                    ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad))
                    if np.isfinite(mean[0]):
                        ax.axvline(mean[0], color=style.MEDMIX_RED, lw=0.8, ls="--", zorder=1)
                    ax.xaxis.set_major_locator(MaxNLocator(3))
                else:
                    style.empty_panel(ax)
                ax.set_yticks(y)
                ax.set_ylim(len(variants) - 0.5, -0.5)  # MedMIX on top
                if c == 0:
                    ax.set_yticklabels([v.label for v in variants])
                    ax.set_ylabel(ds, fontsize=9, fontweight="bold")
                if r == 0:
                    ax.set_title(f"test {mlabel}")
                ax.grid(axis="x")
        handles = [
            Line2D([], [], color=style.MEDMIX_RED, marker="*", ms=7, ls="--", lw=0.8,
                   label="MedMIX (dashed: its mean)"),
            Line2D([], [], color=COMPONENT_COLOR, marker="o", ms=4, lw=0,
                   label="component removed"),
            Line2D([], [], color=SINGLE_COLOR, marker="s", ms=4, lw=0, label="single modality"),
        ]  # fmt: skip
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
        fig.tight_layout(h_pad=0.8, w_pad=0.6)
    about = (
        "Structural ablations: markers show the mean over seeds, error bars ± one standard "
        f"deviation; the dashed red line is full MedMIX. {run_header(cfg, datasets)}"
    )
    return style.save_figure(fig, out_dir, "ablation", about)
