"""Beyond the paper: the distributions of MedMIX's fusion weights β and router weights α per
modality under each protocol (``weights_{dataset}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion.report import style
from fusion.report.registry import register_figure
from fusion.report.tables.protocols import protocol_label
from medmix.plan import run_header
from medmix.protocol_names import format_protocol, modality_label, parse_protocol


def weight_protocols(cfg: dict[str, Any], ds: str) -> list[str]:
    """The settings shown in the α / β figure: full, then each family at its middle rate."""
    section = cfg.get("protocols") or {}
    mods = list(cfg["datasets"][ds]["modalities"])
    out = ["full"]
    for scope in ("train", "test"):
        rates = sorted(float(r) for r in section.get(f"{scope}_random") or [])
        if rates:
            out.append(format_protocol("random", scope, rates[len(rates) // 2]))
        rates = sorted(float(r) for r in section.get(f"{scope}_drop_one") or [])
        if rates:
            out += [
                format_protocol("drop_one", scope, rates[len(rates) // 2], modality=m) for m in mods
            ]
    out += [parse_protocol(str(s)).name for s in section.get("extra") or []]
    return out


def load_weights(
    results: Path, ds: str, protocol: str, method: str = "medmix"
) -> pd.DataFrame | None:
    """The α / β columns of a run's test predictions, all seeds pooled (None: no run)."""
    files = sorted((results / ds / "runs" / protocol / method).glob("seed*/predictions.parquet"))
    if not files:
        return None
    frames = []
    for f in files:
        df = pd.read_parquet(f)
        cols = ["split"] + [c for c in df.columns if c.startswith(("alpha_", "beta_"))]
        frames.append(df[cols])
    df = pd.concat(frames, ignore_index=True)
    return df[df["split"] == "test"]


def _hbox(ax, data: list[np.ndarray], pos: np.ndarray, width: float, color, label=None) -> None:
    keep = [i for i, d in enumerate(data) if len(d)]
    if not keep:
        return
    bp = ax.boxplot([data[i] for i in keep], positions=[pos[i] for i in keep], widths=width,
                    orientation="horizontal", showfliers=False, patch_artist=True, manage_ticks=False)  # fmt: skip
    for b in bp["boxes"]:
        b.set_facecolor(color)
        b.set_alpha(0.8)
    for med in bp["medians"]:
        med.set_color("black")
    if label is not None:
        bp["boxes"][0].set_label(label)


def _alphas(frames: dict[str, pd.DataFrame | None], protocols: list[str], m: str,
            experts: list[str], e: str) -> list[np.ndarray]:  # fmt: skip
    """Expert ``e``'s router weight per protocol, on the samples where modality ``m`` is."""
    data = []
    for p in protocols:
        df = frames.get(p)
        cols = [f"alpha_{m}_{x}" for x in experts]
        if df is None or not all(c in df for c in cols):
            data.append(np.zeros(0))
            continue
        avail = df[cols].sum(axis=1).to_numpy() > 0
        data.append(df[f"alpha_{m}_{e}"].to_numpy()[avail])
    return data


@register_figure("weights_{dataset}", inputs=("cfg", "results", "dataset", "out_dir"))
def plot_weights(cfg: dict[str, Any], results: Path, ds: str, out_dir: Path) -> list[Path]:
    """β (top row) and α (bottom row) per modality under each protocol, test samples where the
    modality is available, all seeds pooled."""
    from matplotlib.patches import Patch

    mods = list(cfg["datasets"][ds]["modalities"])
    experts = cfg["datasets"][ds]["modalities"]
    protocols = weight_protocols(cfg, ds)
    frames = {p: load_weights(results, ds, p) for p in protocols}
    have_runs = any(f is not None for f in frames.values())
    protocols = [p for p in protocols if frames[p] is not None] or protocols[:1]
    n_p = len(protocols)
    labels = [protocol_label(p) for p in protocols]
    y = np.arange(n_p)
    with style.style():
        cmap = style.plt().get_cmap("Set2")
        fig, axes = style.plt().subplots(2, len(mods), squeeze=False, sharey=True,
                                         figsize=(style.DOUBLE_COLUMN, max(0.48 * n_p + 1.9, 3.4)))  # fmt: skip
        for j, m in enumerate(mods):
            ax = axes[0][j]
            data = []
            for p in protocols:
                df = frames.get(p)
                col = f"beta_{m}"
                v = df[col].to_numpy() if df is not None and col in df else np.zeros(0)
                data.append(v[v > 0])
            _hbox(ax, data, y, 0.6, "#9ecae1")
            ax.set_title(f"β of {modality_label(m)}")
            ax.set_xlim(-0.02, 1.02)
            if j == len(mods) // 2:
                ax.set_xlabel("fusion weight β")
            ax = axes[1][j]
            k = len(experts[m])
            width = 0.8 / max(k, 1)
            for e_i, e in enumerate(experts[m]):
                offs = (e_i - (k - 1) / 2) * width
                _hbox(ax, _alphas(frames, protocols, m, experts[m], e), y + offs, width * 0.9,
                      cmap(e_i % 8), label=e)  # fmt: skip
            ax.set_title(f"α over {modality_label(m)} experts")
            ax.set_xlim(-0.02, 1.02)
            ax.set_xlabel("router weight α")
            handles = [Patch(facecolor=cmap(i % 8), label=e) for i, e in enumerate(experts[m])]
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.5 / n_p - 0.16),
                      ncol=min(k, 2), handlelength=1.0, columnspacing=0.8, title="experts")  # fmt: skip
        for row in (0, 1):
            axes[row][0].set_yticks(y)
            axes[row][0].set_yticklabels(labels)
            for ax in axes[row]:
                ax.grid(axis="x")
        axes[0][0].invert_yaxis()  # every panel shares y: invert once, full on top
        if not have_runs:
            for ax in axes.flat:
                style.empty_panel(ax)
        fig.suptitle(f"{ds}: MedMIX weights per protocol")
        fig.tight_layout(h_pad=0.8, w_pad=0.6)
    about = (
        f"{ds}: MedMIX's fusion weights β (top) and router weights α (bottom) per modality "
        "under each protocol, test split, all seeds pooled. Boxes: quartiles, whiskers 1.5 IQR, "
        "outliers hidden; a modality's weight is shown only for samples where it is available. "
        f"{run_header(cfg, [ds])}"
    )
    return style.save_figure(fig, out_dir, f"weights_{ds}", about)
