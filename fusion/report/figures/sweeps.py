"""Figures 2 and 3 (F1–F8): test AUROC and mF1 against the missing rate, one modality dropped
(drop_one) or every modality at random (random_drop), in training or at test time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusion.report import style
from fusion.report.cells import Cells
from fusion.report.registry import register_figure
from medmix.methods import medmix_first, method_label
from medmix.plan import protocol_methods, run_header
from medmix.protocol_names import format_protocol, modality_label

SWEEP_METRICS = (("auroc", "AUROC"), ("macro_f1", "mF1"))
FEW_POINTS = 3  # at most this many rates on a curve: dodged markers with error bars, no bands
Series = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # method, x, mean, std


def _sweep(cells: Cells, ds: str, method: str, settings: list[tuple[float, str]], metric: str):
    """x (rates, with 0 = full), mean and std arrays for one curve."""
    xs, ms, ss = [], [], []
    for rate, p in [(0.0, "full"), *settings]:
        v = cells.get(ds, p, method, metric)
        if v is not None:
            xs.append(rate)
            ms.append(v[0])
            ss.append(v[1])
    return np.array(xs), np.array(ms), np.array(ss)


def _sweep_panel(ax, series: list[Series], colors: dict[str, str], markers: dict[str, str],
                 ticks: list[float]) -> bool:  # fmt: skip
    """One panel of a missing-rate sweep, a series per method. Few rates: markers with error
    bars, dodged so that no two overlap, joined by thin lines; more: lines with ± std bands.
    False when no series has two points."""
    drawn = [s for s in series if len(s[1]) > 0]
    if not any(len(s[1]) > 1 for s in drawn):
        return False
    n_x = max(len(s[1]) for s in drawn)
    gaps = np.diff(sorted(set(ticks))) if len(set(ticks)) > 1 else np.array([1.0])
    offsets = style.dodge(len(drawn), 0.18 * float(gaps.min()))
    for (method, x, mu, sd), off in zip(drawn, offsets, strict=True):
        color, marker = colors[method], markers[method]
        ms = 6 if method == "medmix" else 4
        if n_x <= FEW_POINTS:
            ax.errorbar(x + off, mu, yerr=sd, color=color, marker=marker, ms=ms, lw=0.8,
                        capsize=2, elinewidth=0.9, zorder=3, label=method_label(method))  # fmt: skip
        else:
            ax.plot(x, mu, color=color, marker=marker, ms=ms, lw=1.2, zorder=3,
                    label=method_label(method))  # fmt: skip
            ax.fill_between(x, mu - sd, mu + sd, color=color, alpha=0.15, lw=0, zorder=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    pad = 0.35 * float(gaps.min())
    ax.set_xlim(min(ticks) - pad, max(ticks) + pad)
    ax.grid(axis="y")
    return True


def _draw_panel(ax, series: list[Series], colors, markers, rates: list[float]) -> int:
    """A sweep panel, or an empty one; the most points on one of its curves."""
    if not _sweep_panel(ax, series, colors, markers, [0.0, *rates]):
        ax.set_xticks([0.0, *rates])
        style.empty_panel(ax)
    return max((len(s[1]) for s in series), default=0)


def _method_legend(fig, methods: Sequence[str], colors, markers, n_x: int) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker=markers[m], ms=6 if m == "medmix" else 4,
                      lw=0.8 if n_x <= FEW_POINTS else 1.2, label=method_label(m))
               for m in methods]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=min(len(handles), 5))  # fmt: skip


@dataclass(frozen=True)
class _Panel:
    """One panel of a sweep: the settings along x ((rate, protocol), after the full protocol
    at 0), the metric, and the labels it carries (None: none)."""

    settings: list[tuple[float, str]]
    metric: str
    title: str | None = None
    ylabel: str | None = None
    xlabel: str | None = None


def _sweep_figure(cfg: dict[str, Any], cells: Cells, ds: str, grid: list[list[_Panel]],
                  n_cols: int, panel_height: float, pads: tuple[float, float], what: str,
                  stem: str, out_dir: Path, **subplots: Any) -> list[Path]:  # fmt: skip
    """Draw ``grid`` (rows of panels, a series per method of the protocol grid), the method
    legend on top, and save it as ``stem``; ``what``: what the x axis does, for the caption."""
    methods = medmix_first(protocol_methods(cfg))
    colors, markers = style.method_colors(methods), style.method_markers(methods)
    n_x = 1
    with style.style():
        fig, axes = style.plt().subplots(
            max(len(grid), 1), n_cols, squeeze=False, **subplots,
            figsize=(style.DOUBLE_COLUMN, panel_height * max(len(grid), 1) + 0.4),
        )  # fmt: skip
        for r, row in enumerate(grid):
            for c, panel in enumerate(row):
                ax = axes[r][c]
                series = [(m, *_sweep(cells, ds, m, panel.settings, panel.metric))
                          for m in methods]  # fmt: skip
                rates = [rate for rate, _ in panel.settings]
                n_x = max(n_x, _draw_panel(ax, series, colors, markers, rates))
                for label, setter in ((panel.title, ax.set_title), (panel.ylabel, ax.set_ylabel),
                                      (panel.xlabel, ax.set_xlabel)):  # fmt: skip
                    if label is not None:
                        setter(label)
        _method_legend(fig, methods, colors, markers, n_x)
        fig.tight_layout(h_pad=pads[0], w_pad=pads[1])
    about = (f"{ds}: test AUROC and macro-F1 as {what}. Markers: mean over seeds; error bars or "
             f"bands: ± one standard deviation. {run_header(cfg, [ds])}")  # fmt: skip
    return style.save_figure(fig, out_dir, stem, about)


@register_figure("drop_one_{dataset}", inputs=("cfg", "cells", "dataset", "out_dir"))
def plot_drop_one(cfg: dict[str, Any], cells: Cells, ds: str, out_dir: Path) -> list[Path]:
    """Figure 2 / F1–F4: metric vs the drop rate of one modality. One panel per dropped
    modality (columns) and per setting × metric (rows: train-time, test-time; AUROC, mF1),
    a series per method."""
    section = cfg.get("protocols") or {}
    scopes = [s for s in ("train", "test") if section.get(f"{s}_drop_one")]
    mods = list(cfg["datasets"][ds]["modalities"])
    rows = [(scope, metric, mlabel) for scope in scopes for metric, mlabel in SWEEP_METRICS]
    grid = []
    for r, (scope, metric, mlabel) in enumerate(rows):
        rates = sorted(float(x) for x in section[f"{scope}_drop_one"])
        grid.append([
            _Panel([(x, format_protocol("drop_one", scope, x, modality=m)) for x in rates],
                   metric, title=f"drop {modality_label(m)}" if r == 0 else None,
                   ylabel=f"{scope}-time drop\ntest {mlabel}" if j == 0 else None,
                   xlabel="drop rate r" if r == len(rows) - 1 else None)
            for j, m in enumerate(mods)
        ])  # fmt: skip
    what = ("one modality (column) is dropped at rate r in the training and validation splits "
            "(train-time rows) or in the test split (test-time rows); r = 0 is the full "
            "protocol")  # fmt: skip
    return _sweep_figure(cfg, cells, ds, grid, len(mods), 1.6, (0.6, 0.8), what,
                         f"drop_one_{ds}", out_dir, sharey="row")  # fmt: skip


@register_figure("random_drop_{dataset}", inputs=("cfg", "cells", "dataset", "out_dir"))
def plot_random_drop(cfg: dict[str, Any], cells: Cells, ds: str, out_dir: Path) -> list[Path]:
    """Figure 3 / F5–F8: metric vs the random drop rate p, train- and test-time (rows),
    AUROC and mF1 (columns), a series per method."""
    section = cfg.get("protocols") or {}
    scopes = [s for s in ("train", "test") if section.get(f"{s}_random")]
    grid = []
    for scope in scopes:
        rates = sorted(float(r) for r in section[f"{scope}_random"])
        where = "train + val" if scope == "train" else "test"
        grid.append([
            _Panel([(r, format_protocol("random", scope, r)) for r in rates], metric,
                   title=f"{scope}-time random drop: {mlabel}", ylabel=f"test {mlabel}",
                   xlabel=f"drop rate p of every modality ({where})")
            for metric, mlabel in SWEEP_METRICS
        ])  # fmt: skip
    what = ("every modality is dropped at random with probability p in the training and "
            "validation splits (train-time) or in the test split (test-time); p = 0 is the "
            "full protocol")  # fmt: skip
    return _sweep_figure(cfg, cells, ds, grid, len(SWEEP_METRICS), 2.0, (0.8, 1.0), what,
                         f"random_drop_{ds}", out_dir)  # fmt: skip
