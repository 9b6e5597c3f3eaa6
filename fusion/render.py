"""Paper-ready tables and figures from the per-dataset metrics tables.

``python -m fusion.render tables --metrics results/*/metrics.parquet --out-dir results/tables``
``python -m fusion.render figures --metrics ... --runs-root results --out-dir results/figures``

Tables follow the paper's Table 1: Dataset × Method rows, AUROC / AUPRC / mF1 / Acc as
mean ± std over seeds on the test split, the best mean per dataset and column in bold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmix.io import atomic_path, write_text_atomic

METRIC_COLUMNS = {"auroc": "AUROC", "auprc": "AUPRC", "macro_f1": "mF1", "accuracy": "Acc"}
METHOD_LABELS = {"medmix": "MedMIX", "meanavg": "MeanAvg", "concat": "Concat"}


def method_label(method: str) -> str:
    if method.startswith("medmix-only-"):
        return f"MedMIX ({method.removeprefix('medmix-only-')} only)"
    return METHOD_LABELS.get(method, method)


def method_order(methods: Sequence[str]) -> list[str]:
    """Single-modality references first, then baselines, MedMIX last (as in the paper)."""

    def key(m: str) -> tuple[int, str]:
        if m.startswith("medmix-only-"):
            return (0, m)
        if m == "medmix":
            return (2, m)
        return (1, m)

    return sorted(set(methods), key=key)


@dataclass
class MainTable:
    frame: pd.DataFrame  # dataset, method, metric columns as (mean, std)
    header: str


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


def _fmt(mean: float, std: float, bold: bool, style: str) -> str:
    text = f"{mean:.4f} ± {std:.4f}" if style != "tex" else f"{mean:.4f} $\\pm$ {std:.4f}"
    if not bold:
        return text
    return f"**{text}**" if style == "md" else f"\\textbf{{{text}}}"


def build_main_table(metrics: pd.DataFrame, header: str, protocol: str = "full") -> MainTable:
    agg = summarise(metrics, protocol=protocol)
    rows = []
    for ds in agg["dataset"].drop_duplicates():
        dsel = agg[agg["dataset"] == ds]
        for method in method_order(dsel["method"].unique()):
            row = {"dataset": ds, "method": method}
            for metric in METRIC_COLUMNS:
                cell = dsel[(dsel["method"] == method) & (dsel["metric"] == metric)]
                row[f"{metric}_mean"] = float(cell["mean"].iloc[0]) if len(cell) else np.nan
                row[f"{metric}_std"] = float(cell["std"].iloc[0]) if len(cell) else np.nan
                row["seeds"] = int(cell["count"].iloc[0]) if len(cell) else 0
            rows.append(row)
    return MainTable(pd.DataFrame(rows), header)


def _best_mask(frame: pd.DataFrame, metric: str) -> pd.Series:
    col = f"{metric}_mean"
    best = frame.groupby("dataset")[col].transform("max")
    return frame[col].notna() & np.isclose(frame[col], best)


def render_markdown(table: MainTable) -> str:
    f = table.frame
    lines = [f"<!-- {table.header} -->", "", f"_{table.header}_", ""]
    cols = ["Dataset", "Method", *METRIC_COLUMNS.values()]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    best = {m: _best_mask(f, m) for m in METRIC_COLUMNS}
    last_ds = None
    for i, row in f.iterrows():
        ds = row["dataset"] if row["dataset"] != last_ds else ""
        last_ds = row["dataset"]
        cells = [ds, method_label(row["method"])]
        for m in METRIC_COLUMNS:
            mean = row[f"{m}_mean"]
            cells.append(
                "n/a" if pd.isna(mean) else _fmt(mean, row[f"{m}_std"], bool(best[m][i]), "md")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_latex(table: MainTable) -> str:
    f = table.frame
    best = {m: _best_mask(f, m) for m in METRIC_COLUMNS}
    out = [
        f"% {table.header}",
        "\\begin{tabular}{ll" + "c" * len(METRIC_COLUMNS) + "}",
        "\\toprule",
        "Dataset & Method & " + " & ".join(METRIC_COLUMNS.values()) + " \\\\",
        "\\midrule",
    ]
    last_ds = None
    for i, row in f.iterrows():
        if last_ds is not None and row["dataset"] != last_ds:
            out.append("\\midrule")
        ds = row["dataset"] if row["dataset"] != last_ds else ""
        last_ds = row["dataset"]
        cells = [ds.replace("_", "\\_"), method_label(row["method"]).replace("_", "\\_")]
        for m in METRIC_COLUMNS:
            mean = row[f"{m}_mean"]
            cells.append(
                "n/a" if pd.isna(mean) else _fmt(mean, row[f"{m}_std"], bool(best[m][i]), "tex")
            )
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def render_csv(table: MainTable) -> str:
    f = table.frame.copy()
    f.insert(2, "method_label", f["method"].map(method_label))
    return f.to_csv(index=False, float_format="%.6f")


def load_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        raise ValueError("no metrics files given")
    return pd.concat(frames, ignore_index=True)


def write_tables(
    metrics_paths: Sequence[str | Path], out_dir: str | Path, header: str, stem: str = "main"
) -> list[Path]:
    table = build_main_table(load_metrics(metrics_paths), header)
    out_dir = Path(out_dir)
    written = []
    for ext, text in (
        ("md", render_markdown(table)),
        ("tex", render_latex(table)),
        ("csv", render_csv(table)),
    ):
        written.append(write_text_atomic(out_dir / f"{stem}.{ext}", text))
    return written


# -- figures ---------------------------------------------------------------------------


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    written = []
    for ext in ("png", "svg"):
        target = out_dir / f"{stem}.{ext}"
        with atomic_path(target, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        written.append(target)
    return written


def plot_main_auroc(metrics: pd.DataFrame, out_dir: str | Path, header: str) -> list[Path]:
    """Grouped bars: test AUROC (mean ± std over seeds) per dataset and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = summarise(metrics)
    agg = agg[agg["metric"] == "auroc"]
    datasets = list(agg["dataset"].drop_duplicates())
    methods = method_order(agg["method"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, ds in zip(axes[0], datasets, strict=True):
        dsel = agg[agg["dataset"] == ds].set_index("method")
        ms = [m for m in methods if m in dsel.index]
        colors = [
            "#c0392b" if m == "medmix" else (cmap(2) if m.startswith("medmix-only") else cmap(0))
            for m in ms
        ]
        ax.bar(
            range(len(ms)), dsel.loc[ms, "mean"], yerr=dsel.loc[ms, "std"], color=colors, capsize=3
        )
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels([method_label(m) for m in ms], rotation=45, ha="right", fontsize=8)
        lo = max(0.0, float((dsel.loc[ms, "mean"] - dsel.loc[ms, "std"]).min()) - 0.05)
        ax.set_ylim(lo, min(1.0, float(dsel.loc[ms, "mean"].max()) + 0.05))
        ax.set_title(ds)
        ax.set_ylabel("test AUROC (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    fig.legend(
        handles=[
            Patch(color="#c0392b", label="MedMIX"),
            Patch(color=cmap(0), label="baselines"),
            Patch(color=cmap(2), label="MedMIX, one modality"),
        ],
        loc="upper center",
        ncol=3,
        bbox_to_anchor=(0.5, 1.06),
        frameon=False,
    )
    fig.suptitle(header, y=-0.02, fontsize=8)
    fig.tight_layout()
    out = _save(fig, Path(out_dir), "main_auroc")
    plt.close(fig)
    return out


def plot_fusion_weights(prediction_files: dict[str, list[Path]], out_dir: str | Path) -> list[Path]:
    """Distribution of MedMIX's per-sample modality weights β on the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d, files in prediction_files.items() if files]
    fig, axes = plt.subplots(
        1, max(1, len(datasets)), figsize=(4.2 * max(1, len(datasets)), 3.6), squeeze=False
    )
    for ax, ds in zip(axes[0], datasets, strict=False):
        preds = pd.concat([pd.read_parquet(p) for p in prediction_files[ds]], ignore_index=True)
        preds = preds[preds["split"] == "test"]
        cols = [c for c in preds.columns if c.startswith("beta_")]
        data = [preds[c].to_numpy() for c in cols]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(cols) + 1))
        ax.set_xticklabels([c.removeprefix("beta_") for c in cols], rotation=30, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("modality weight β (test samples, all seeds)")
        ax.set_title(ds)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = _save(fig, Path(out_dir), "fusion_weights")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion.render")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("tables", "figures"):
        p = sub.add_parser(name)
        p.add_argument("--metrics", nargs="+", required=True)
        p.add_argument("--out-dir", required=True)
        p.add_argument("--header", default="")
        if name == "figures":
            p.add_argument(
                "--predictions", nargs="*", default=[], help="MedMIX predictions.parquet files"
            )
    args = parser.parse_args(argv)
    if args.cmd == "tables":
        for p in write_tables(args.metrics, args.out_dir, args.header):
            print(p)
        return 0
    metrics = load_metrics(args.metrics)
    by_ds: dict[str, list[Path]] = {}
    for f in args.predictions:
        ds = Path(f).parts[Path(f).parts.index("runs") - 1]
        by_ds.setdefault(ds, []).append(Path(f))
    for p in plot_main_auroc(metrics, args.out_dir, args.header) + plot_fusion_weights(
        by_ds, args.out_dir
    ):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
