"""Figure 5: Perf against the relative deployment cost per dataset, the Pareto front drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion.efficiency import geomean
from fusion.report import style
from fusion.report.cells import Cells, efficiency_data
from fusion.report.registry import register_figure
from medmix.methods import method_label, method_order
from medmix.plan import run_header


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (lower-or-equal cost and higher-or-equal perf)."""
    out = []
    for i, (c, p) in enumerate(points):
        dominated = any(
            (c2 <= c and p2 >= p) and (c2 < c or p2 > p)
            for j, (c2, p2) in enumerate(points)
            if j != i
        )
        if not dominated:
            out.append(i)
    return sorted(out, key=lambda i: points[i][0])


@register_figure("pareto", inputs=("cfg", "cells", "costs", "out_dir"))
def plot_pareto(
    cfg: dict[str, Any], cells: Cells, costs: dict[str, dict[str, Any]], out_dir: Path
) -> list[Path]:
    """Figure 5: Perf vs relative deployment cost per dataset, the Pareto front drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    erows = [r for r in efficiency_data(cells, costs) if r.dataset != "Average"]
    datasets = list(costs) or ["(none)"]
    ordered = method_order([r.method for r in erows])
    colors, markers = style.method_colors(ordered), style.method_markers(ordered)
    with style.style():
        fig, panels, n_cols = style.dataset_panels(len(datasets), 2.5)
        for k, (ax, ds) in enumerate(zip(panels, datasets, strict=True)):
            ax.set_title(ds)
            rows = [r for r in erows if r.dataset == ds and math.isfinite(r.perf)]
            ref = next((r for r in rows if r.method == "medmix"), None)
            if not rows or ref is None:
                style.empty_panel(ax, "no efficiency results")
                continue
            pts = []
            for r in rows:
                ratio = geomean([r.params / ref.params, r.flops / ref.flops,
                                 r.memory_bytes / ref.memory_bytes])  # fmt: skip
                pts.append((ratio, r.perf))
            front = pareto_front(pts)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-",
                    color="#999999", lw=1, zorder=1)  # fmt: skip
            for r, (x, y) in zip(rows, pts, strict=True):
                ax.scatter([x], [y], s=80 if r.method == "medmix" else 24,
                           color=colors[r.method], marker=markers[r.method],
                           zorder=4 if r.method == "medmix" else 3, edgecolor="black",
                           lw=0.4)  # fmt: skip
            ax.margins(x=0.15, y=0.15)
            xs = [p[0] for p in pts]
            if max(xs) / min(xs) > 10:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            elif max(xs) - min(xs) < 0.02:
                ax.set_xlim(min(xs) - 0.02, max(xs) + 0.02)
            ax.set_xlabel("relative cost (× MedMIX)")
            if k % n_cols == 0:
                ax.set_ylabel("Perf")
            ax.grid(which="major")
        handles = [Line2D([], [], color=colors[m], marker=markers[m], lw=0,
                          ms=8 if m == "medmix" else 5, markeredgecolor="black",
                          markeredgewidth=0.4, label=method_label(m))
                   for m in ordered]  # fmt: skip
        handles.append(Line2D([], [], color="#999999", lw=1, label="Pareto front"))
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=min(len(handles), 5))  # fmt: skip
        fig.tight_layout()
    about = (
        "Perf (mean of test AUROC, AUPRC, mF1 and Acc) against the relative deployment cost "
        "(geometric mean of the parameter, FLOP and peak-memory ratios to MedMIX); the grey "
        f"line joins the Pareto-optimal methods. {run_header(cfg, list(costs))}"
    )
    return style.save_figure(fig, out_dir, "pareto", about)
