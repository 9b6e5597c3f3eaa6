"""The figures beside Table 1: test AUROC per dataset and method, and MedMIX's modality
weights β on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion.report import style
from fusion.report.cells import summarise
from fusion.report.registry import MAIN, register_figure
from medmix.methods import is_teacher, method_label, table1_order
from medmix.protocol_names import modality_label


def _bar_style(method: str) -> dict[str, Any]:
    """Bar colours of Table 1's figure: MedMIX red, baselines blue, MedMIX on one modality
    green, the ``*-Large`` teacher references light grey and hatched."""
    if method == "medmix":
        return {"color": style.MEDMIX_RED, "edgecolor": style.MEDMIX_RED}
    if method.startswith("medmix-only-"):
        return {"color": style.SINGLE_MODALITY_COLOR, "edgecolor": style.SINGLE_MODALITY_COLOR}
    if is_teacher(method):
        return {"color": style.TEACHER_COLOR, "edgecolor": "#555555",
                "hatch": style.TEACHER_HATCH}  # fmt: skip
    return {"color": style.BASELINE_COLOR, "edgecolor": style.BASELINE_COLOR}


@register_figure("main_auroc", inputs=("metrics", "out_dir", "header"), command=MAIN)
def plot_main_auroc(metrics: pd.DataFrame, out_dir: str | Path, header: str) -> list[Path]:
    """Bars of test AUROC (mean ± std over seeds) per dataset and method, drawn up from the
    chance level (AUROC 0.5, dashed), the teacher references apart and hatched."""
    from matplotlib.patches import Patch

    agg = summarise(metrics)
    agg = agg[agg["metric"] == "auroc"]
    datasets = list(agg["dataset"].drop_duplicates())
    methods = table1_order(agg["method"].unique())
    bottom, top = style.auroc_limits(agg["mean"] - agg["std"], agg["mean"] + agg["std"])
    with style.style():
        fig, panels, n_cols = style.dataset_panels(len(datasets), 2.5, sharey=True)
        for k, (ax, ds) in enumerate(zip(panels, datasets, strict=True)):
            dsel = agg[agg["dataset"] == ds].set_index("method")
            ms = [m for m in methods if m in dsel.index]
            x = np.arange(len(ms), dtype=float)
            x += np.array([0.6 if is_teacher(m) else 0.0 for m in ms])  # a gap before them
            for xi, m in zip(x, ms, strict=True):
                mean, std = float(dsel.loc[m, "mean"]), float(dsel.loc[m, "std"])
                ax.bar(xi, mean - style.CHANCE_AUROC, bottom=style.CHANCE_AUROC,
                       width=0.72, linewidth=0.6, zorder=2, **_bar_style(m))  # fmt: skip
                ax.errorbar(xi, mean, yerr=std, color="black", lw=0.8, capsize=2, zorder=3)
            refs = [xi for xi, m in zip(x, ms, strict=True) if is_teacher(m)]
            if refs:
                ax.axvline(min(refs) - 0.8, color="#999999", lw=0.6, ls=":", zorder=1)
            style.chance_line(ax)
            ax.set_xticks(x)
            # MedMIX on one modality: the modality's name (green bars, named in the legend)
            # a bar over fewer seeds than the others, or with a NaN seed, is marked ‡
            ax.set_xticklabels([(modality_label(m.removeprefix("medmix-only-"))
                                 if m.startswith("medmix-only-") else method_label(m))
                                + (" ‡" if isinstance(dsel.loc[m, "flag"], str) else "")
                                for m in ms], rotation=50, ha="right", rotation_mode="anchor")  # fmt: skip
            ax.set_xlim(-0.6, (x.max() if len(x) else 0) + 0.6)
            ax.set_ylim(bottom, top)
            ax.set_title(ds)
            ax.grid(axis="y")
            if k % n_cols == 0:
                ax.set_ylabel("Test AUROC")
        handles = [Patch(color=style.MEDMIX_RED, label="MedMIX"),
                   Patch(color=style.BASELINE_COLOR, label="fusion baselines")]  # fmt: skip
        if any(m.startswith("medmix-only-") for m in methods):
            handles.append(Patch(color=style.SINGLE_MODALITY_COLOR,
                                 label="MedMIX on one modality (named)"))  # fmt: skip
        if any(is_teacher(m) for m in methods):
            handles.append(Patch(facecolor=style.TEACHER_COLOR, edgecolor="#555555",
                                 hatch=style.TEACHER_HATCH, label=style.TEACHER_LABEL))  # fmt: skip
        handles.append(panels[0].get_lines()[-1])  # the chance line
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=min(len(handles), 3), handlelength=1.6, columnspacing=1.2)  # fmt: skip
        fig.tight_layout(w_pad=0.4)
    about = (
        "Test AUROC per dataset and method: bars show the mean over seeds, drawn up from the "
        "chance level (AUROC 0.5, dashed line); error bars show ± one standard deviation. "
        "Green bars: MedMIX restricted to the named modality. Hatched grey bars, right of the "
        f"dotted rule, are the *-Large teacher references (not ranked). {header}"
    )
    flagged = agg[[isinstance(f, str) for f in agg["flag"]]]
    if len(flagged):
        about += (
            " ‡ Not over every seed: "
            + "; ".join(
                f"{ds}, {method_label(m)}: {why}"
                for ds, m, why in flagged[["dataset", "method", "flag"]].itertuples(index=False)
            )
            + "."
        )
    return style.save_figure(fig, Path(out_dir), "main_auroc", about)


@register_figure("fusion_weights", inputs=("prediction_files", "out_dir", "header"),
                 command=MAIN)  # fmt: skip
def plot_fusion_weights(prediction_files: dict[str, list[Path]], out_dir: str | Path,
                        header: str = "") -> list[Path]:  # fmt: skip
    """Distribution of MedMIX's per-sample modality weights β on the test split."""
    datasets = [d for d, files in prediction_files.items() if files]
    with style.style():
        fig, panels, n_cols = style.dataset_panels(len(datasets), 2.3, sharey=True)
        if not datasets:
            style.empty_panel(fig.axes[0])
        for k, (ax, ds) in enumerate(zip(panels, datasets, strict=True)):
            preds = pd.concat([pd.read_parquet(p) for p in prediction_files[ds]],
                              ignore_index=True)  # fmt: skip
            preds = preds[preds["split"] == "test"]
            cols = [c for c in preds.columns if c.startswith("beta_")]
            bp = ax.boxplot([preds[c].to_numpy() for c in cols], showfliers=False,
                            patch_artist=True, widths=0.6)  # fmt: skip
            for b in bp["boxes"]:
                b.set_facecolor("#c6dbef")
                b.set_edgecolor("#333333")
            for med in bp["medians"]:
                med.set_color("black")
            ax.set_xticks(range(1, len(cols) + 1))
            ax.set_xticklabels([modality_label(c.removeprefix("beta_")) for c in cols],
                               rotation=30, ha="right", rotation_mode="anchor")  # fmt: skip
            ax.set_ylim(-0.02, 1.02)
            if k % n_cols == 0:
                ax.set_ylabel("modality weight β")
            ax.set_title(ds)
            ax.grid(axis="y")
        fig.tight_layout()
    about = (
        "MedMIX's per-sample modality weights β on the test split, all seeds pooled: boxes "
        "show the quartiles, whiskers 1.5 IQR, outliers hidden." + (f" {header}" if header else "")
    )
    return style.save_figure(fig, Path(out_dir), "fusion_weights", about)
