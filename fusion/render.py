"""Paper-ready tables and figures from the per-dataset metrics tables.

``python -m fusion.render tables --metrics results/*/metrics.parquet --out-dir results/tables``
``python -m fusion.render figures --metrics ... --predictions ... --out-dir results/figures``
``python -m fusion.render paper --config <json> --tables-dir results/tables --figures-dir results/figures``

``tables`` / ``figures`` write the main comparison (Table 1: ``main.*``, ``main_auroc``,
``fusion_weights``). ``paper`` writes every other table and figure of the paper's §4 and
appendices E/F that the config asks for (:func:`paper_outputs` lists them; the workflow
declares exactly those files):

=================  =====================================================================
``experts``        Table E1: the expert committee per dataset and modality
``train_drop_one`` Table E2: one modality dropped in training at rate r
``test_drop_one``  Table E3: one modality dropped at test time
``train_random``   Table E4: every modality dropped at random in training, rate p
``test_random``    Table E5: random drop at test time
``structured``     beyond the paper: missing-not-at-random and replayed missingness
``efficiency``     Table E6: parameters, FLOPs, peak memory, Perf, EffScore
``ablation``       Table E7: structural ablations
``per_task``       Table E8: per-task results of multi-task datasets
``external``       Table 2: external validation
=================  =====================================================================

Figures: ``drop_one_{dataset}`` (Figure 2 / F1–F4), ``random_drop_{dataset}`` (Figure 3 /
F5–F8), ``ablation`` (Figure 4), ``pareto`` (Figure 5) and, beyond the paper,
``weights_{dataset}``: the distributions of MedMIX's router weights α and fusion weights β
per modality under each protocol.

Every table cell is mean ± std over seeds (test split; ``external`` for Table 2), the best
value per column within its group (a dataset, or a dataset × setting) in bold, and a header
line says which data and experts produced it; mean ± std is printed with three decimals.
The ``*-Large`` teacher references (a foundation model alone) sit in a block of their own and
are never ranked. Each table is written as ``.md``, ``.tex``, ``.csv`` (separate mean / std
columns, no blanking) and ``.html`` (the form the Snakemake report shows inline).

Table 1 also has a "Δ AUROC vs MedMIX [95 % CI]" column (and "vs probe" where the
``linear-probe`` baseline ran): each row's seed-averaged test macro AUROC minus the
reference's, with a paired test-bootstrap percentile interval (:mod:`fusion.paired`, read
from the run folders' ``predictions.parquet`` and the dataset's ``manifest.parquet``); † marks
an interval that excludes 0. The CSV has ``delta_auroc_vs_{medmix,probe}`` with ``_lo``,
``_hi``, ``_significant``, ``_skipped_draws`` and ``_note``.

Figures follow :mod:`fusion.figure_style`: drawn at journal column width, text ≥ 8 pt, a
chance line on AUROC axes, teacher references hatched grey, written as PNG, SVG and PDF, and
the provenance in a sidecar ``<stem>.txt`` instead of on the figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion import figure_style
from medmix.io import write_text_atomic
from medmix.methods import is_teacher, medmix_first, method_label, method_order, table1_order
from medmix.plan import (
    external_methods,
    paper_outputs,
    protocol_methods,
    run_header,
    training_datasets,
)
from medmix.protocol_names import modality_label
from medmix.table_html import Block, Cell, render_html_table

log = logging.getLogger("medmix.fusion.render")

METRIC_COLUMNS = {"auroc": "AUROC", "auprc": "AUPRC", "macro_f1": "mF1", "accuracy": "Acc"}
FAMILY_TITLES = {
    "train_drop_one": "Table E2 — single-modality drop at training time",
    "test_drop_one": "Table E3 — single-modality drop at test time",
    "train_random": "Table E4 — random multi-modality drop at training time",
    "test_random": "Table E5 — random multi-modality drop at test time",
}
MEDMIX_RED = "#c0392b"
# Every other method's colour: tab10 without its red, then tab20's light shades without its
# reds, so that MedMIX's red is never reused (and a method is never red-ish next to it).
OTHER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94",
                "#dbdb8d", "#9edae5")  # fmt: skip
OTHER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method: MedMIX red, the others from :data:`OTHER_COLORS` in order."""
    others = [m for m in dict.fromkeys(methods) if m != "medmix"]
    out = {m: OTHER_COLORS[k % len(OTHER_COLORS)] for k, m in enumerate(others)}
    return out | {"medmix": MEDMIX_RED}


def method_markers(methods: Sequence[str]) -> dict[str, str]:
    """One marker per method (MedMIX a star): with the colours, every method's pair is unique
    even past the palette's length."""
    others = [m for m in dict.fromkeys(methods) if m != "medmix"]
    out = {m: OTHER_MARKERS[(k // len(OTHER_COLORS)) % len(OTHER_MARKERS)]
           for k, m in enumerate(others)}  # fmt: skip
    return out | {"medmix": "*"}


TEACHER_BLOCK = "Teacher references (not ranked)"


# -- the main table (Table 1) -----------------------------------------------------------


@dataclass
class MainTable:
    frame: pd.DataFrame  # dataset, method, metric columns as (mean, std)
    header: str
    # (dataset, method) -> why the run could not happen (OneLLM without weights, ...): shown
    # as a row of n/a cells marked "(not run)" and the reason as a note under the table
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)
    # (dataset, method) -> the short form printed in the cell ("weights absent", "no teacher")
    markers: dict[tuple[str, str], str] = field(default_factory=dict)
    # (dataset, method, reference) -> fusion.paired.PairedDelta, or why it is n/a (a string);
    # one "Δ AUROC vs <reference>" column per entry of delta_refs (add_paired_deltas)
    deltas: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    delta_refs: list[str] = field(default_factory=list)
    delta_about: str = ""

    def marker(self, dataset: str, method: str) -> str:
        return self.markers.get((dataset, method), "not run")


def _notes(table: MainTable) -> list[str]:
    """One note per (method, reason), naming every dataset it applies to."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for (ds, m), why in table.unavailable.items():
        grouped.setdefault((m, why), []).append(ds)
    return [f"{method_label(m)} on {', '.join(dss)}: {why}" for (m, why), dss in grouped.items()]


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


# mean ± std over a handful of seeds: a std of ~0.01 justifies three decimals, not four
DECIMALS = 3


def _fmt(mean: float, std: float, bold: bool, style: str) -> str:
    pm = " $\\pm$ " if style == "tex" else " ± "
    text = f"{mean:.{DECIMALS}f}{pm}{std:.{DECIMALS}f}"
    if not bold or style == "html":  # HTML: the caller wraps the cell in <strong>
        return text
    return f"**{text}**" if style == "md" else f"\\textbf{{{text}}}"


def build_main_table(metrics: pd.DataFrame, header: str, protocol: str = "full") -> MainTable:
    agg = summarise(metrics, protocol=protocol)
    rows = []
    for ds in agg["dataset"].drop_duplicates():
        dsel = agg[agg["dataset"] == ds]
        for method in table1_order(dsel["method"].unique()):
            row = {"dataset": ds, "method": method}
            for metric in METRIC_COLUMNS:
                cell = dsel[(dsel["method"] == method) & (dsel["metric"] == metric)]
                row[f"{metric}_mean"] = float(cell["mean"].iloc[0]) if len(cell) else np.nan
                row[f"{metric}_std"] = float(cell["std"].iloc[0]) if len(cell) else np.nan
                row["seeds"] = int(cell["count"].iloc[0]) if len(cell) else 0
            rows.append(row)
    return MainTable(pd.DataFrame(rows), header)


def add_unavailable(table: MainTable, runs: dict[str, list[dict[str, Any]]]) -> MainTable:
    """Rows for the full-protocol runs marked unavailable (``runs``: dataset -> the list of
    :func:`fusion.run_status.unavailable_runs`), placed with their dataset in method order."""
    frame = table.frame
    extra, why, markers = [], dict(table.unavailable), dict(table.markers)
    for ds, entries in runs.items():
        for e in entries:
            if e["protocol"] != "full":
                continue
            if len(frame) and ((frame["dataset"] == ds) & (frame["method"] == e["method"])).any():
                continue
            row = {"dataset": ds, "method": e["method"], "seeds": 0}
            row.update({f"{m}_{k}": np.nan for m in METRIC_COLUMNS for k in ("mean", "std")})
            extra.append(row)
            why[(ds, e["method"])] = e["reason"]
            markers[(ds, e["method"])] = e.get("kind") or "not run"
    if not extra:
        return table
    both = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    datasets = list(dict.fromkeys(both["dataset"]))
    ordered = []
    for ds in datasets:
        sel = both[both["dataset"] == ds]
        for method in table1_order(sel["method"].unique()):
            ordered.append(sel[sel["method"] == method].iloc[0])
    return MainTable(pd.DataFrame(ordered).reset_index(drop=True), table.header, why, markers)


# -- paired test-bootstrap differences (fusion.paired) ------------------------------------

DELTA_KEYS = {"medmix": "medmix", "linear-probe": "probe"}  # reference -> csv / header name
DELTA_MARK = "†"  # the 95 % interval excludes 0


def _ref_name(ref: str) -> str:
    return "MedMIX" if ref == "medmix" else DELTA_KEYS.get(ref, ref)


def delta_label(ref: str, style: str = "md") -> str:
    name = _ref_name(ref)
    if style == "tex":
        return f"$\\Delta$ AUROC vs {_tex(name)} [95\\,\\% CI]"
    return f"Δ AUROC vs {name} [95 % CI]"


def add_paired_deltas(
    table: MainTable, roots: dict[str, Path], n_boot: int | None = None, seed: int | None = None
) -> MainTable:
    """Paired test-bootstrap intervals of each row's macro AUROC difference to MedMIX (and to
    the linear probe, where it ran), from ``roots[dataset]/runs/full/*/seed*/predictions.parquet``
    and ``roots[dataset]/manifest.parquet`` (:func:`fusion.paired.dataset_deltas`). A reference
    gets a column only where some dataset has an interval against it."""
    import time

    from fusion import paired

    n_boot = paired.N_BOOT if n_boot is None else int(n_boot)
    seed = paired.SEED if seed is None else int(seed)
    deltas: dict[tuple[str, str, str], Any] = {}
    t0 = time.perf_counter()
    for ds in dict.fromkeys(table.frame["dataset"]) if len(table.frame) else []:
        methods = table.frame.loc[table.frame["dataset"] == ds, "method"].tolist()
        root = roots.get(ds)
        if root is None:
            continue
        try:
            got = paired.dataset_deltas(root, methods, n_boot=n_boot, seed=seed)
        except (OSError, ValueError, KeyError) as e:  # unreadable predictions or manifest
            log.warning("%s: paired bootstrap skipped: %s", ds, e)
            got = {(m, r): "unreadable predictions" for r in paired.REFERENCES for m in methods
                   if (Path(root) / "runs" / "full" / r).exists()}  # fmt: skip
        for (m, ref), v in got.items():
            deltas[(ds, m, ref)] = v
            if not isinstance(v, str):
                log.info("%s %s vs %s: ΔAUROC %+.4f [%+.4f, %+.4f], %.2fs", ds, m, ref,
                         v.delta, v.lo, v.hi, v.seconds)  # fmt: skip
    refs = [r for r in paired.REFERENCES
            if any(k[2] == r and not isinstance(v, str) for k, v in deltas.items())]  # fmt: skip
    log.info("paired bootstrap (%d resamples): %.2fs", n_boot, time.perf_counter() - t0)
    about = (
        "Δ AUROC: the row's test macro AUROC (averaged over its seeds) minus the reference's, "
        f"with the 95 % percentile interval of {n_boot:,} paired bootstrap resamples of the "
        f"test samples (seed {seed}; both methods scored on the same resamples); "
        f"{DELTA_MARK}: the interval excludes 0. A label with one class in a resample is left "
        "out of that resample (counted in the CSV). The interval measures test-sample "
        "uncertainty with the trained models fixed; the ± is the spread over training seeds."
    )
    return MainTable(table.frame, table.header, table.unavailable, table.markers, deltas, refs,
                     about if refs else "")  # fmt: skip


def _delta_cell(table: MainTable, ds: str, method: str, ref: str, style: str) -> str:
    if method == ref:
        return "---" if style == "tex" else "—"
    v = table.deltas.get((ds, method, ref))
    if v is None:
        return f"n/a (no {_ref_name(ref)} run)"
    if isinstance(v, str):
        return f"n/a ({v})"
    if not np.isfinite(v.lo):
        return "n/a"
    text = f"{v.delta:+.{DECIMALS}f} [{v.lo:+.{DECIMALS}f}, {v.hi:+.{DECIMALS}f}]"
    if v.significant:
        text += "$^{\\dagger}$" if style == "tex" else DELTA_MARK
    return text


def _value_labels(table: MainTable, style: str = "md") -> list[str]:
    """Table 1's value columns: the metrics, then one Δ AUROC column per reference."""
    return [*METRIC_COLUMNS.values(), *(delta_label(r, style) for r in table.delta_refs)]


def _best_mask(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The best mean per dataset among the compared methods (teacher references excluded)."""
    col = f"{metric}_mean"
    compared = frame[col].where(~frame["method"].map(is_teacher))
    best = compared.groupby(frame["dataset"]).transform("max")
    return compared.notna() & np.isclose(compared, best)


def _main_rows(table: MainTable, style: str):
    """(dataset shown, first row of a teacher block, reference?, method cell, value cells with
    their bold flags) per row of Table 1, in order; a dataset is shown on its first row."""
    f = table.frame
    best = {m: _best_mask(f, m) for m in METRIC_COLUMNS}
    last_ds, in_ref = None, False
    for i, row in f.iterrows():
        new_ds = row["dataset"] != last_ds
        last_ds = row["dataset"]
        ref = is_teacher(row["method"])
        opens_ref = ref and (new_ds or not in_ref)
        in_ref = ref
        label = method_label(row["method"])
        why = table.unavailable.get((row["dataset"], row["method"]))
        mark = table.marker(row["dataset"], row["method"])
        values = []
        for m in METRIC_COLUMNS:
            mean, bold = row[f"{m}_mean"], bool(best[m][i])
            values.append(("n/a", False) if pd.isna(mean)
                          else (_fmt(mean, row[f"{m}_std"], bold, style), bold))  # fmt: skip
        for ref in table.delta_refs:
            values.append((_delta_cell(table, row["dataset"], row["method"], ref, style), False))
        ds = row["dataset"] if new_ds else ""
        yield ds, opens_ref, ref, f"{label} ({mark})" if why else label, values


def render_markdown(table: MainTable) -> str:
    lines = [f"<!-- {table.header} -->", "", f"_{table.header}_", ""]
    cols = ["Dataset", "Method", *_value_labels(table)]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for ds, opens_ref, _, label, values in _main_rows(table, "md"):
        if opens_ref:  # a Markdown table has no inner rule: a labelled row opens the block
            lines.append("| " + " | ".join([ds, f"_{TEACHER_BLOCK}_"] + [""] * len(values)) + " |")
            ds = ""
        lines.append("| " + " | ".join([ds, label, *(text for text, _ in values)]) + " |")
    notes = _notes(table)
    if notes:
        lines += ["", *[f"- Not run: {n}" for n in notes]]
    if table.delta_about:
        lines += ["", f"- {table.delta_about}"]
    return "\n".join(lines) + "\n"


def render_latex(table: MainTable) -> str:
    labels = _value_labels(table, "tex")
    n_cols = 2 + len(labels)
    out = [
        f"% {table.header}",
        *([f"% {table.delta_about}"] if table.delta_about else []),
        "\\begin{tabular}{ll" + "c" * len(labels) + "}",
        "\\toprule",
        "Dataset & Method & " + " & ".join(labels) + " \\\\",
        "\\midrule",
    ]
    first = True
    for ds, opens_ref, _, label, values in _main_rows(table, "tex"):
        if ds and not first:
            out.append("\\midrule")
        first = False
        if opens_ref:
            out.append(f"\\cmidrule(l){{2-{n_cols}}}")
            out.append(f"{_tex(ds)} & \\multicolumn{{{n_cols - 1}}}{{l}}"
                       f"{{\\textit{{{TEACHER_BLOCK}}}}} \\\\")  # fmt: skip
            ds = ""
        cells = [_tex(ds), _tex(label), *(text for text, _ in values)]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def render_main_html(table: MainTable) -> str:
    """Table 1 as an HTML page: one block per dataset, its teacher references apart."""
    labels = ["Dataset", "Method", *_value_labels(table)]
    blocks: list[Block] = []
    for ds, opens_ref, ref, label, values in _main_rows(table, "html"):
        if ds or opens_ref:
            blocks.append(Block(heading=TEACHER_BLOCK if opens_ref else None, reference=ref))
        row = [Cell(ds), Cell(label)] + [Cell(text, bold, True) for text, bold in values]
        blocks[-1].rows.append(row)
    notes = [f"Not run: {n}" for n in _notes(table)]
    notes += [table.delta_about] if table.delta_about else []
    return render_html_table("Table 1 — main comparison", table.header, labels,
                             [False, False] + [True] * (len(labels) - 2), blocks, notes)  # fmt: skip


def render_csv(table: MainTable) -> str:
    f = table.frame.copy()
    f.insert(2, "method_label", f["method"].map(method_label))
    f["reference"] = f["method"].map(is_teacher)  # teacher reference: not ranked
    for m in METRIC_COLUMNS:
        f[f"{m}_best"] = _best_mask(table.frame, m).to_numpy()
    f["unavailable"] = [
        table.unavailable.get((d, m), "") for d, m in zip(f["dataset"], f["method"], strict=True)
    ]
    for ref in table.delta_refs:  # numeric: point difference, interval, significance, skips
        col = f"delta_auroc_vs_{DELTA_KEYS.get(ref, ref)}"
        keys = zip(f["dataset"], f["method"], strict=True)
        got = [table.deltas.get((d, m, ref)) for d, m in keys]
        num = [v if v is not None and not isinstance(v, str) else None for v in got]
        f[col] = [np.nan if v is None else v.delta for v in num]
        f[f"{col}_lo"] = [np.nan if v is None else v.lo for v in num]
        f[f"{col}_hi"] = [np.nan if v is None else v.hi for v in num]
        f[f"{col}_significant"] = [v is not None and v.significant for v in num]
        f[f"{col}_skipped_draws"] = [0 if v is None else v.skipped_label_draws for v in num]
        f[f"{col}_note"] = [
            "reference" if m == ref else (v if isinstance(v, str) else "" if v is not None
                                          else f"no {_ref_name(ref)} run")
            for m, v in zip(f["method"], got, strict=True)
        ]  # fmt: skip
    return f.to_csv(index=False, float_format="%.6f")


def load_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        raise ValueError("no metrics files given")
    return pd.concat(frames, ignore_index=True)


def write_tables(
    metrics_paths: Sequence[str | Path],
    out_dir: str | Path,
    header: str,
    stem: str = "main",
    n_boot: int | None = None,
    boot_seed: int | None = None,
) -> list[Path]:
    from fusion.run_status import unavailable_runs

    table = build_main_table(load_metrics(metrics_paths), header)
    runs = {}
    for path in metrics_paths:  # results/{dataset}/metrics.parquet beside results/{dataset}/runs
        root = Path(path).parent
        runs[root.name] = unavailable_runs(root / "runs")
    table = add_unavailable(table, runs)
    roots = {Path(p).parent.name: Path(p).parent for p in metrics_paths}
    table = add_paired_deltas(table, roots, n_boot=n_boot, seed=boot_seed)
    out_dir = Path(out_dir)
    written = []
    for ext, text in (
        ("md", render_markdown(table)),
        ("tex", render_latex(table)),
        ("csv", render_csv(table)),
        ("html", render_main_html(table)),
    ):
        written.append(write_text_atomic(out_dir / f"{stem}.{ext}", text))
    return written


# -- generic paper tables ---------------------------------------------------------------


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"),
                 ("#", "\\#"), ("→", "$\\rightarrow$"), ("±", "$\\pm$")):  # fmt: skip
        text = text.replace(a, b)
    return text


@dataclass
class ValueColumn:
    key: str
    label: str
    better: str | None = "max"  # max | min | None (no bold)
    decimals: int | None = DECIMALS  # None: four significant digits (cost columns)


@dataclass
class PaperTable:
    """A table in the paper's layout: id columns (blanked when repeated), value columns.

    ``rows``: dicts with the id keys (display strings), and for each value column either a
    ``(mean, std)`` pair (printed ``mean ± std``), a number, or None. ``group``: the id keys
    within which the best value of each column is bold. A row with ``_reference`` true (a
    teacher reference) is never bold and is drawn apart.
    """

    stem: str
    title: str
    header: str
    id_columns: list[tuple[str, str]]
    value_columns: list[ValueColumn]
    rows: list[dict[str, Any]]
    group: list[str]
    notes: list[str] = field(default_factory=list)

    def best(self) -> set[tuple[int, str]]:
        """(row index, column key) of the bold cells."""
        out: set[tuple[int, str]] = set()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(self.rows):
            if r.get("_reference"):
                continue
            groups.setdefault(tuple(r.get(k, "") for k in self.group), []).append(i)
        for idx in groups.values():
            if len(idx) < 2:
                continue
            for col in self.value_columns:
                if col.better is None:
                    continue
                vals = [(i, _mean(self.rows[i].get(col.key))) for i in idx]
                vals = [(i, v) for i, v in vals if v is not None and math.isfinite(v)]
                if len(vals) < 2:
                    continue
                target = (max if col.better == "max" else min)(v for _, v in vals)
                out |= {(i, col.key) for i, v in vals if np.isclose(v, target, rtol=0, atol=1e-12)}
        return out


def _mean(cell: Any) -> float | None:
    if cell is None:
        return None
    if isinstance(cell, tuple):
        return None if cell[0] is None else float(cell[0])
    return float(cell)


def _cell_text(cell: Any, col: ValueColumn, bold: bool, style: str) -> str:
    if cell is None or (
        isinstance(cell, tuple) and (cell[0] is None or not math.isfinite(cell[0]))
    ):
        return "n/a"
    if isinstance(cell, tuple):
        mean, std = cell
        pm = " $\\pm$ " if style == "tex" else " ± "
        text = f"{mean:.{col.decimals}f}{pm}{(std or 0.0):.{col.decimals}f}"
    elif not math.isfinite(float(cell)):
        text = "n/a"
    elif col.decimals is None:
        v = float(cell)
        digits = 0 if v == 0 else max(0, 3 - math.floor(math.log10(abs(v))))
        text = f"{v:.{digits}f}"
    else:
        text = f"{float(cell):.{col.decimals}f}"
    if not bold:
        return text
    return f"**{text}**" if style == "md" else f"\\textbf{{{text}}}"


def _display_ids(table: PaperTable) -> list[list[str]]:
    """Id cells with repeats blanked (a value is shown when it or a column left of it changes)."""
    out, prev = [], None
    for r in table.rows:
        ids = [str(r.get(k, "")) for k, _ in table.id_columns]
        if prev is None:
            shown = ids
        else:
            shown, changed = [], False
            for a, b in zip(ids, prev, strict=True):
                changed = changed or a != b
                shown.append(a if changed else "")
        out.append(shown)
        prev = ids
    return out


def table_markdown(table: PaperTable) -> str:
    best = table.best()
    lines = [
        f"<!-- {table.title}. {table.header} -->",
        "",
        f"**{table.title}.** _{table.header}_",
        "",
    ]
    labels = [lab for _, lab in table.id_columns] + [c.label for c in table.value_columns]
    lines += ["| " + " | ".join(labels) + " |", "|" + "---|" * len(labels)]
    for i, (r, ids) in enumerate(zip(table.rows, _display_ids(table), strict=True)):
        cells = ids + [
            _cell_text(r.get(c.key), c, (i, c.key) in best, "md") for c in table.value_columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not table.rows:
        lines.append("| " + " | ".join(["—"] * len(labels)) + " |")
    if table.notes:
        lines += [""] + [f"_{n}_" for n in table.notes]
    return "\n".join(lines) + "\n"


def table_latex(table: PaperTable) -> str:
    best = table.best()
    n_id = len(table.id_columns)
    out = [
        f"% {table.title}. {table.header}",
        "\\begin{tabular}{" + "l" * n_id + "c" * len(table.value_columns) + "}",
        "\\toprule",
        " & ".join(_tex(lab) for _, lab in table.id_columns)
        + " & "
        + " & ".join(_tex(c.label) for c in table.value_columns)
        + " \\\\",
        "\\midrule",
    ]
    for i, (r, ids) in enumerate(zip(table.rows, _display_ids(table), strict=True)):
        if i and ids[0]:
            out.append("\\midrule")
        cells = [_tex(x) for x in ids] + [
            _cell_text(r.get(c.key), c, (i, c.key) in best, "tex") for c in table.value_columns
        ]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    out += [f"% {n}" for n in table.notes]
    return "\n".join(out) + "\n"


def table_csv(table: PaperTable) -> str:
    best = table.best()
    recs = []
    for i, r in enumerate(table.rows):
        rec = {lab: r.get(k, "") for k, lab in table.id_columns}
        for c in table.value_columns:
            cell = r.get(c.key)
            if isinstance(cell, tuple):
                rec[f"{c.key}_mean"], rec[f"{c.key}_std"] = cell
            else:
                rec[c.key] = cell
            rec[f"{c.key}_best"] = (i, c.key) in best
        for k, v in r.items():
            if k.startswith("_"):
                rec[k.lstrip("_")] = v
        recs.append(rec)
    cols = [lab for _, lab in table.id_columns]
    for c in table.value_columns:
        cols += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_best"]
    frame = pd.DataFrame(recs, columns=None if recs else cols)
    return frame.to_csv(index=False, float_format="%.6f")


def table_html(table: PaperTable) -> str:
    """The table as an HTML page: one ``<tbody>`` per value of the first id column (where the
    LaTeX table has a rule), reference rows in a block of their own."""
    best = table.best()
    labels = [lab for _, lab in table.id_columns] + [c.label for c in table.value_columns]
    numeric = [False] * len(table.id_columns) + [True] * len(table.value_columns)
    blocks: list[Block] = []
    for i, (r, ids) in enumerate(zip(table.rows, _display_ids(table), strict=True)):
        ref = bool(r.get("_reference"))
        if not blocks or (ids and ids[0]) or ref != blocks[-1].reference:
            blocks.append(Block(reference=ref))
        cells = [Cell(x) for x in ids] + [
            Cell(_cell_text(r.get(c.key), c, False, "html"), (i, c.key) in best, True)
            for c in table.value_columns
        ]
        blocks[-1].rows.append(cells)
    if not table.rows:
        blocks.append(Block(rows=[[Cell("—") for _ in labels]]))
    return render_html_table(table.title, table.header, labels, numeric, blocks, table.notes)


def write_paper_table(table: PaperTable, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [
        write_text_atomic(out_dir / f"{table.stem}.md", table_markdown(table)),
        write_text_atomic(out_dir / f"{table.stem}.tex", table_latex(table)),
        write_text_atomic(out_dir / f"{table.stem}.csv", table_csv(table)),
        write_text_atomic(out_dir / f"{table.stem}.html", table_html(table)),
    ]


# -- summaries ----------------------------------------------------------------------------


def aggregate(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1) and count over seeds per (dataset, protocol, method, split, task, metric)."""
    keys = ["dataset", "protocol", "method", "split", "task", "metric"]
    agg = metrics.groupby(keys)["value"].agg(["mean", "std", "count"]).reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    return agg


class Cells:
    """Look-ups of (mean, std) cells in an aggregated metrics table."""

    def __init__(self, metrics: pd.DataFrame) -> None:
        self.agg = (
            aggregate(metrics)
            if len(metrics)
            else pd.DataFrame(
                columns=[
                    "dataset",
                    "protocol",
                    "method",
                    "split",
                    "task",
                    "metric",
                    "mean",
                    "std",
                    "count",
                ]
            )
        )
        self.index = {
            tuple(r[:6]): (float(r[6]), float(r[7]), int(r[8]))
            for r in self.agg[
                ["dataset", "protocol", "method", "split", "task", "metric", "mean", "std", "count"]
            ].itertuples(index=False)  # fmt: skip
        }

    def get(
        self, dataset: str, protocol: str, method: str, metric: str, split: str = "test",
        task: str = "macro",
    ) -> tuple[float, float] | None:  # fmt: skip
        v = self.index.get((dataset, protocol, method, split, task, metric))
        return None if v is None else (v[0], v[1])

    def has(self, dataset: str, protocol: str, method: str, split: str = "test") -> bool:
        return any(
            self.index.get((dataset, protocol, method, split, "macro", m)) for m in METRIC_COLUMNS
        )

    def seeds(self) -> int:
        return max((v[2] for v in self.index.values()), default=0)

    def metric_row(self, dataset: str, protocol: str, method: str, split: str = "test",
                   task: str = "macro") -> dict[str, Any]:  # fmt: skip
        return {m: self.get(dataset, protocol, method, m, split, task) for m in METRIC_COLUMNS}


def metric_columns() -> list[ValueColumn]:
    return [ValueColumn(k, v) for k, v in METRIC_COLUMNS.items()]


# -- what the config asks for ------------------------------------------------------------


def _seeds_text(cfg: dict[str, Any]) -> str:
    return f"mean ± std over {len(cfg.get('seeds') or [0])} seeds"


# -- table builders ----------------------------------------------------------------------


def build_experts_table(cfg: dict[str, Any]) -> PaperTable:
    """Table E1: the experts of each dataset and modality, by family, and the teacher."""
    from medmix.ablation_plan import FAMILY_ORDER, expert_families

    rows = []
    for ds, dcfg in cfg["datasets"].items():
        fams = expert_families(cfg, ds)
        teachers = dcfg.get("teachers") or {}
        for m, names in dcfg["modalities"].items():
            row: dict[str, Any] = {"dataset": ds, "modality": modality_label(m)}
            for fam in FAMILY_ORDER:
                row[fam] = ", ".join(e for e in names if fams.get(e) == fam) or "—"
            other = [e for e in names if fams.get(e) not in FAMILY_ORDER]
            if other:
                row["general"] = ", ".join([*(x for x in [row["general"]] if x != "—"), *other])
            row["teacher"] = teachers.get(m, "—")
            rows.append(row)
    ids = [("dataset", "Dataset"), ("modality", "Modality"), ("biomedical", "Biomed"),
           ("general", "General"), ("rag", "RAG"), ("teacher", "Teacher FM")]  # fmt: skip
    return PaperTable("experts", "Table E1 — expert committee", run_header(cfg), ids, [], rows, [])


def _rate_of(setting: str) -> float:
    from medmix.protocol_names import parse_protocol

    return parse_protocol(setting).rate


def build_protocol_table(cfg: dict[str, Any], cells: Cells, family: str) -> PaperTable:
    """Tables E2–E5 in the paper's layout."""
    from medmix.protocol_names import format_protocol, format_rate

    scope, kind = family.split("_", 1)
    rates = [float(r) for r in (cfg.get("protocols") or {}).get(family) or []]
    methods = medmix_first(protocol_methods(cfg))
    rows = []
    for ds in training_datasets(cfg):
        mods = list(cfg["datasets"][ds]["modalities"])
        for method in methods:
            for r in rates:
                if kind == "drop_one":
                    for m in mods:
                        p = format_protocol("drop_one", scope, r, modality=m)
                        rows.append({"dataset": ds, "method": method_label(method),
                                     "rate": format_rate(r), "modality": modality_label(m),
                                     **cells.metric_row(ds, p, method), "_protocol": p})  # fmt: skip
                else:
                    p = format_protocol("random", scope, r)
                    rows.append({"dataset": ds, "method": method_label(method),
                                 "rate": format_rate(r), **cells.metric_row(ds, p, method),
                                 "_protocol": p})  # fmt: skip
    ids = [("dataset", "Dataset"), ("method", "Method"), ("rate", "Missing Rate")]
    group = ["dataset", "rate"]
    if kind == "drop_one":
        ids.append(("modality", "Modality"))
        group.append("modality")
    where = "training (train + val)" if scope == "train" else "test"
    header = (
        f"Modalities dropped in the {where} split(s), masks seeded and shared by all methods; "
        f"test split, {_seeds_text(cfg)}. {run_header(cfg, training_datasets(cfg))}"
    )
    columns, notes = metric_columns(), []
    if scope == "test":  # Tables E3, E5: how many test samples the masks left with nothing
        results = Path(cfg.get("results", "results"))
        sizes = set()
        for r in rows:
            got = _all_dropped(results, r["dataset"], r["_protocol"], methods)
            r["all_dropped"] = got[0] if got else None
            if got:
                sizes.add((r["dataset"], got[1]))
        columns.append(ValueColumn("all_dropped", "No modality left", None, 1))
        n_text = ", ".join(f"{ds}: {n}" for ds, n in sorted(sizes)) or "no masks found yet"
        notes.append(
            "No modality left: test samples from which the masks removed every available "
            "modality (mean over seeds; identical for all methods). They get the model's prior "
            f"prediction and stay in the metrics. Test samples: {n_text}."
        )
    return PaperTable(family, FAMILY_TITLES[family], header, ids, columns, rows, group, notes)


def _all_dropped(
    results: Path, ds: str, protocol: str, methods: Sequence[str]
) -> tuple[float, int] | None:
    """(mean over seeds of the test samples left with no modality, test size) from the masks
    saved with the run of the first method that has them (the masks are shared)."""
    from fusion.protocols import read_masks_report

    for method in methods:
        files = sorted((results / ds / "runs" / protocol / method).glob("seed*/masks.parquet"))
        tests = [read_masks_report(f).get("splits", {}).get("test") for f in files]
        tests = [t for t in tests if t]
        if tests:
            return float(np.mean([t["n_all_dropped"] for t in tests])), int(tests[0]["n"])
    return None


def protocol_label(name: str) -> str:
    """A readable description of a setting: ``MNAR (label) p=0.5, test split``."""
    from medmix.protocol_names import format_rate, parse_protocol

    spec = parse_protocol(name)
    if spec.kind == "full":
        return "full (no extra missingness)"
    where = {"train": "train+val", "test": "test", "all": "all splits"}[spec.scope]
    r = format_rate(spec.rate)
    if spec.kind == "drop_one":
        return f"drop {modality_label(spec.modality or '')} r={r}, {where}"
    if spec.kind == "random":
        return f"random drop p={r}, {where}"
    if spec.kind == "mnar":
        return f"MNAR ({spec.score}) p={r}, {where}"
    return f"replay observed patterns p={r}, {where}"


def build_structured_table(cfg: dict[str, Any], cells: Cells) -> PaperTable:
    """Beyond the paper: missing-not-at-random and replayed missingness (with the full row)."""
    from medmix.protocol_names import parse_protocol

    extra = [parse_protocol(str(s)).name for s in (cfg.get("protocols") or {}).get("extra") or []]
    rows = []
    for ds in training_datasets(cfg):
        for method in medmix_first(protocol_methods(cfg)):
            for p in ["full", *extra]:
                rows.append({"dataset": ds, "method": method_label(method),
                             "protocol": protocol_label(p), **cells.metric_row(ds, p, method),
                             "_protocol": p})  # fmt: skip
    header = (
        "Structured missingness beyond the paper: MNAR (drop probability rising with the label "
        "or a severity score, mean rate p) and the cohort's own observed missingness patterns "
        f"replayed onto complete samples; test split, {_seeds_text(cfg)}. "
        f"{run_header(cfg, training_datasets(cfg))}"
    )
    ids = [("dataset", "Dataset"), ("method", "Method"), ("protocol", "Protocol")]
    return PaperTable(
        "structured", "Structured missingness", header, ids, metric_columns(), rows,
        ["dataset", "protocol"],
    )  # fmt: skip


def _selection_note(results: Path, ds: str) -> str | None:
    path = results / ds / "runs" / "ablation" / "best_expert" / "selection.json"
    if not path.exists():
        return None
    sel = json.loads(path.read_text()).get("selection") or {}
    picks = ", ".join(f"{modality_label(m)}: {v['expert']}" for m, v in sel.items())
    return f"{ds} — best single expert per modality (validation linear probe): {picks}."


def build_ablation_table(cfg: dict[str, Any], cells: Cells, results: Path) -> PaperTable:
    """Table E7."""
    from medmix.ablation_plan import ablation_variants

    rows, notes = [], []
    for ds in training_datasets(cfg):
        for v in ablation_variants(cfg, ds):
            rows.append({"dataset": ds, "setting": v.label,
                         **cells.metric_row(ds, v.protocol, v.method),
                         "_run": f"{v.protocol}/{v.method}"})  # fmt: skip
        note = _selection_note(results, ds)
        if note:
            notes.append(note)
    lam = float((cfg.get("fusion") or {}).get("lambda_kd") or 0.0)
    if lam == 0.0:
        notes.append("Distillation is off in this config (fusion.lambda_kd = 0): "
                     "'w/o distillation' trains the same model as MedMIX.")  # fmt: skip
    header = f"Test split, {_seeds_text(cfg)}. {run_header(cfg, training_datasets(cfg))}"
    return PaperTable(
        "ablation", "Table E7 — structural ablations", header,
        [("dataset", "Dataset"), ("setting", "Setting")], metric_columns(), rows, ["dataset"],
        notes,
    )  # fmt: skip


def _task_types(results: Path, ds: str) -> str | None:
    for p in sorted((results / ds / "runs" / "full").glob("*/seed*/metrics.json")):
        try:
            return json.loads(p.read_text()).get("task_type")
        except (OSError, json.JSONDecodeError):
            continue
    return None


def build_per_task_table(
    cfg: dict[str, Any], cells: Cells, results: Path, task_types: dict[str, str] | None = None
) -> PaperTable:
    """Table E8: per-task results of the multi-task (binary, several labels) datasets."""
    datasets = []
    for ds in training_datasets(cfg):
        tt = (task_types or {}).get(ds) or _task_types(results, ds)
        tasks = sorted(
            set(
                cells.agg.loc[(cells.agg["dataset"] == ds) & (cells.agg["task"] != "macro"), "task"]
            )
        )
        if tt == "binary" and len(tasks) > 1:
            datasets.append((ds, tasks))
    has_mf1 = (
        any((cells.agg["task"] != "macro") & (cells.agg["metric"] == "macro_f1"))
        if len(cells.agg)
        else False
    )
    f1_key = "macro_f1" if has_mf1 else "f1"
    rows = []
    for ds, tasks in datasets:
        methods = table1_order(cells.agg.loc[(cells.agg["dataset"] == ds)
                                             & (cells.agg["protocol"] == "full"), "method"])  # fmt: skip
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
    header = f"Test split, {_seeds_text(cfg)}. {run_header(cfg, [d for d, _ in datasets] or None)}"
    return PaperTable(
        "per_task", "Table E8 — per-task results", header, ids, cols, rows,
        ["dataset", "task"], notes,
    )  # fmt: skip


def _unavailable_external(
    cfg: dict[str, Any], results: Path, source: str, protocol: str, have: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """method -> (short form, reason) for the methods of the comparison without an external
    evaluation because their run could not happen (its ``full`` run on the source, or the
    external run itself, marked unavailable: OneLLM without weights, AdaCoMed without a
    teacher)."""
    from fusion.run_status import unavailable_runs

    wanted = set(external_methods(cfg))
    out: dict[str, tuple[str, str]] = {}
    for e in unavailable_runs(results / source / "runs"):
        if e["protocol"] in ("full", protocol) and e["method"] in wanted - set(have):
            out.setdefault(e["method"], (e["kind"], e["reason"]))
    return out


def build_external_table(cfg: dict[str, Any], cells: Cells, results: Path) -> PaperTable:
    """Table 2: train on the source cohort, evaluate on the target (split ``external``)."""
    from medmix.plan import external_protocol

    pairs = [(e["source"], e["target"]) for e in cfg.get("external") or []]
    rows, notes = [], []
    for src, tgt in pairs:
        p = external_protocol(tgt)
        methods = method_order(
            cells.agg.loc[(cells.agg["dataset"] == src) & (cells.agg["protocol"] == p), "method"]
        )
        methods = [m for m in methods if not m.startswith("medmix-only-")]
        missing = _unavailable_external(cfg, results, src, p, methods)
        for method in method_order([*methods, *missing]):
            if method in missing:  # as Table 1 marks it: a row of n/a cells and a note
                kind, why = missing[method]
                rows.append({"pair": f"{src} → {tgt}", "method": f"{method_label(method)} ({kind})",
                             **dict.fromkeys(METRIC_COLUMNS), "_unavailable": why})  # fmt: skip
                notes.append(f"Not run: {method_label(method)} on {src} → {tgt}: {why}")
                continue
            rows.append({"pair": f"{src} → {tgt}", "method": method_label(method),
                         **cells.metric_row(src, p, method, split="external")})  # fmt: skip
        flagged, absent = set(), set()
        for s in (results / src / "runs" / p).glob("*/summary.json"):
            summary = json.loads(s.read_text())
            flagged |= set(summary.get("unaligned_experts") or [])
            absent |= set(summary.get("absent_modalities") or [])
        if absent:
            notes.append(
                f"{src} → {tgt}: the target cohort has no {', '.join(sorted(absent))}; "
                "evaluated as missing for every sample."
            )
        if flagged:
            notes.append(
                f"{src} → {tgt}: experts fitted per cohort, whose embedding spaces may differ "
                f"between the cohorts: {', '.join(sorted(flagged))}."
            )
    ids = [("method", "Method")]
    if len(pairs) > 1:
        ids.insert(0, ("pair", "Source → Target"))
    header = (
        "Trained on the source cohort, evaluated on the target cohort with the source's "
        f"standardisation and validation thresholds; {_seeds_text(cfg)}. "
        f"{run_header(cfg, [d for p in pairs for d in p])}"
    )
    return PaperTable(
        "external", "Table 2 — external validation", header, ids, metric_columns(), rows,
        ["pair"], notes,
    )  # fmt: skip


def _unit(values: Sequence[float], units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    """The largest unit in which the median positive value is at least 1 (the paper prints
    B / G / GB; a demo's tiny experts would all round to 0.000 there)."""
    pos = sorted(abs(v) for v in values if v is not None and math.isfinite(v) and v > 0)
    typical = pos[len(pos) // 2] if pos else 0.0
    for scale, name in units:
        if typical >= scale:
            return scale, name
    return units[-1]


PARAM_UNITS = ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1.0, ""))
FLOP_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"), (1.0, ""))
MEM_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1.0, "B"))


def efficiency_data(
    cfg: dict[str, Any], cells: Cells, costs: dict[str, dict[str, Any]]
) -> list[Any]:
    from fusion.efficiency import PERF_METRICS, efficiency_rows

    perfs = {}
    for ds, res in costs.items():
        for method in res.get("methods", {}):
            vals = [cells.get(ds, "full", method, m) for m in PERF_METRICS]
            if all(v is not None for v in vals):
                perfs[(ds, method)] = float(np.mean([v[0] for v in vals]))
    return efficiency_rows(costs, perfs)


def _deployed_text(costs: dict[str, dict[str, Any]]) -> str:
    """What the cost columns count: the experts each checkpoint reads, the fusion model and,
    for a method that runs its teachers at inference, those teachers (named)."""
    with_teachers: dict[str, set[str]] = {}
    for res in costs.values():
        for method, c in res.get("methods", {}).items():
            names = {t.split("/", 1)[-1] for t in c.get("teachers") or []}
            if names:
                with_teachers.setdefault(method, set()).update(names)
    text = "the experts the method reads + its fusion model"
    if with_teachers:
        runs = "; ".join(f"{method_label(m)}: {', '.join(sorted(t))}"
                         for m, t in sorted(with_teachers.items()))  # fmt: skip
        text += f", plus the teachers a method runs at inference ({runs})"
    return text + "; distillation-only teachers and the retrieval index are not counted"


def build_efficiency_table(
    cfg: dict[str, Any], cells: Cells, costs: dict[str, dict[str, Any]]
) -> PaperTable:
    """Table E6."""
    erows = efficiency_data(cfg, cells, costs)
    ps, pu = _unit([r.params for r in erows], PARAM_UNITS)
    fs, fu = _unit([r.flops for r in erows], FLOP_UNITS)
    ms, mu = _unit([r.memory_bytes for r in erows], MEM_UNITS)
    order = {m: i for i, m in enumerate(method_order([r.method for r in erows]))}
    erows = sorted(erows, key=lambda r: (r.dataset == "Average", list(costs).index(r.dataset)
                                         if r.dataset in costs else 0, order[r.method]))  # fmt: skip
    rows = [
        {"dataset": r.dataset, "method": method_label(r.method), "params": r.params / ps,
         "flops": r.flops / fs, "memory": r.memory_bytes / ms, "perf": r.perf,
         "eff": r.eff_score}
        for r in erows
    ]  # fmt: skip
    devices = sorted({str(c.get("device", "cpu")) for c in costs.values()})
    mem_kind = "Peak GPU Mem." if any(d.startswith("cuda") for d in devices) else "Peak Mem."
    cols = [
        ValueColumn("params", f"Params ({pu})", "min", None),
        ValueColumn("flops", f"FLOPs ({fu})", "min", None),
        ValueColumn("memory", f"{mem_kind} ({mu})", "min", None),
        ValueColumn("perf", "Perf", "max", 3),
        ValueColumn("eff", "EffScore", "max", 3),
    ]
    uncounted = sorted({e["name"].split("/", 1)[1] for c in costs.values()
                        for e in c.get("experts", []) if not e.get("torch", True)})  # fmt: skip
    notes = ["Perf = mean of AUROC, AUPRC, mF1 and Acc (test split, full protocol); "
             "EffScore = (Perf / Perf_MedMIX) / geomean of the params, FLOPs and memory ratios "
             "to MedMIX; Average rows average each column over datasets."]  # fmt: skip
    if uncounted:
        notes.append(f"Experts that are not torch models (0 params / FLOPs counted): "
                     f"{', '.join(uncounted)}.")  # fmt: skip
    header = (
        f"Deployed path per sample: {_deployed_text(costs)}. FLOPs by torch's "
        f"FlopCounterMode, memory on {', '.join(devices)}. {run_header(cfg, list(costs))}"
    )
    return PaperTable(
        "efficiency", "Table E6 — efficiency", header,
        [("dataset", "Dataset"), ("method", "Method")], cols, rows, ["dataset"], notes,
    )  # fmt: skip


# -- figures ---------------------------------------------------------------------------


def _plt():
    return figure_style.plt()


def _save(fig, out_dir: Path, stem: str, about: str | None = None) -> list[Path]:
    """Write ``stem``.png, .svg and .pdf atomically, ``about`` (what the marks mean, which data
    and experts) to the sidecar ``stem``.txt, and close the figure."""
    return figure_style.save_figure(fig, out_dir, stem, about)


def _empty(ax, text: str = "no runs yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


def _bar_style(method: str) -> dict[str, Any]:
    """Bar colours of Table 1's figure: MedMIX red, baselines blue, MedMIX on one modality
    green, the ``*-Large`` teacher references light grey and hatched."""
    if method == "medmix":
        return {"color": MEDMIX_RED, "edgecolor": MEDMIX_RED}
    if method.startswith("medmix-only-"):
        return {"color": figure_style.SINGLE_MODALITY_COLOR,
                "edgecolor": figure_style.SINGLE_MODALITY_COLOR}  # fmt: skip
    if is_teacher(method):
        return {"color": figure_style.TEACHER_COLOR, "edgecolor": "#555555",
                "hatch": figure_style.TEACHER_HATCH}  # fmt: skip
    return {"color": figure_style.BASELINE_COLOR, "edgecolor": figure_style.BASELINE_COLOR}


def plot_main_auroc(metrics: pd.DataFrame, out_dir: str | Path, header: str) -> list[Path]:
    """Bars of test AUROC (mean ± std over seeds) per dataset and method, drawn up from the
    chance level (AUROC 0.5, dashed), the teacher references apart and hatched."""
    from matplotlib.patches import Patch

    agg = summarise(metrics)
    agg = agg[agg["metric"] == "auroc"]
    datasets = list(agg["dataset"].drop_duplicates())
    methods = table1_order(agg["method"].unique())
    n_rows, n_cols = _grid(len(datasets))
    width = figure_style.DOUBLE_COLUMN if n_cols > 1 else figure_style.SINGLE_COLUMN
    bottom, top = figure_style.auroc_limits(agg["mean"] - agg["std"], agg["mean"] + agg["std"])
    with figure_style.style():
        fig, axes = _plt().subplots(n_rows, n_cols, figsize=(width, 2.5 * n_rows),
                                    squeeze=False, sharey=True)  # fmt: skip
        for k, ax in enumerate(axes.flat):
            if k >= len(datasets):
                ax.set_visible(False)
                continue
            ds = datasets[k]
            dsel = agg[agg["dataset"] == ds].set_index("method")
            ms = [m for m in methods if m in dsel.index]
            x = np.arange(len(ms), dtype=float)
            x += np.array([0.6 if is_teacher(m) else 0.0 for m in ms])  # a gap before them
            for xi, m in zip(x, ms, strict=True):
                mean, std = float(dsel.loc[m, "mean"]), float(dsel.loc[m, "std"])
                ax.bar(xi, mean - figure_style.CHANCE_AUROC, bottom=figure_style.CHANCE_AUROC,
                       width=0.72, linewidth=0.6, zorder=2, **_bar_style(m))  # fmt: skip
                ax.errorbar(xi, mean, yerr=std, color="black", lw=0.8, capsize=2, zorder=3)
            refs = [xi for xi, m in zip(x, ms, strict=True) if is_teacher(m)]
            if refs:
                ax.axvline(min(refs) - 0.8, color="#999999", lw=0.6, ls=":", zorder=1)
            figure_style.chance_line(ax)
            ax.set_xticks(x)
            # MedMIX on one modality: the modality's name (green bars, named in the legend)
            ax.set_xticklabels([modality_label(m.removeprefix("medmix-only-"))
                                if m.startswith("medmix-only-") else method_label(m)
                                for m in ms], rotation=50, ha="right", rotation_mode="anchor")  # fmt: skip
            ax.set_xlim(-0.6, (x.max() if len(x) else 0) + 0.6)
            ax.set_ylim(bottom, top)
            ax.set_title(ds)
            ax.grid(axis="y")
            if k % n_cols == 0:
                ax.set_ylabel("Test AUROC")
        handles = [Patch(color=MEDMIX_RED, label="MedMIX"),
                   Patch(color=figure_style.BASELINE_COLOR, label="fusion baselines")]  # fmt: skip
        if any(m.startswith("medmix-only-") for m in methods):
            handles.append(Patch(color=figure_style.SINGLE_MODALITY_COLOR,
                                 label="MedMIX on one modality (named)"))  # fmt: skip
        if any(is_teacher(m) for m in methods):
            handles.append(Patch(facecolor=figure_style.TEACHER_COLOR, edgecolor="#555555",
                                 hatch=figure_style.TEACHER_HATCH,
                                 label=figure_style.TEACHER_LABEL))  # fmt: skip
        handles.append(axes.flat[0].get_lines()[-1])  # the chance line
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=min(len(handles), 3), handlelength=1.6, columnspacing=1.2)  # fmt: skip
        fig.tight_layout(w_pad=0.4)
    about = (
        "Test AUROC per dataset and method: bars show the mean over seeds, drawn up from the "
        "chance level (AUROC 0.5, dashed line); error bars show ± one standard deviation. "
        "Green bars: MedMIX restricted to the named modality. Hatched grey bars, right of the "
        f"dotted rule, are the *-Large teacher references (not ranked). {header}"
    )
    return _save(fig, Path(out_dir), "main_auroc", about)


def plot_fusion_weights(prediction_files: dict[str, list[Path]], out_dir: str | Path,
                        header: str = "") -> list[Path]:  # fmt: skip
    """Distribution of MedMIX's per-sample modality weights β on the test split."""
    datasets = [d for d, files in prediction_files.items() if files]
    n_rows, n_cols = _grid(len(datasets))
    width = figure_style.DOUBLE_COLUMN if n_cols > 1 else figure_style.SINGLE_COLUMN
    with figure_style.style():
        fig, axes = _plt().subplots(n_rows, n_cols, figsize=(width, 2.3 * n_rows),
                                    squeeze=False, sharey=True)  # fmt: skip
        for k, ax in enumerate(axes.flat):
            if k >= len(datasets):
                if datasets:
                    ax.set_visible(False)
                else:
                    _empty(ax)
                continue
            ds = datasets[k]
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
    return _save(fig, Path(out_dir), "fusion_weights", about)


SWEEP_METRICS = (("auroc", "AUROC"), ("macro_f1", "mF1"))
FEW_POINTS = 3  # at most this many rates on a curve: dodged markers with error bars, no bands


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


def _sweep_panel(ax, series: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                 colors: dict[str, str], markers: dict[str, str], ticks: list[float]) -> bool:  # fmt: skip
    """One panel of a missing-rate sweep, a series per method. Few rates: markers with error
    bars, dodged so that no two overlap, joined by thin lines; more: lines with ± std bands.
    False when no series has two points."""
    drawn = [s for s in series if len(s[1]) > 0]
    if not any(len(s[1]) > 1 for s in drawn):
        return False
    n_x = max(len(s[1]) for s in drawn)
    gaps = np.diff(sorted(set(ticks))) if len(set(ticks)) > 1 else np.array([1.0])
    offsets = figure_style.dodge(len(drawn), 0.18 * float(gaps.min()))
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


def _method_legend(fig, methods: Sequence[str], colors, markers, n_x: int) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker=markers[m], ms=6 if m == "medmix" else 4,
                      lw=0.8 if n_x <= FEW_POINTS else 1.2, label=method_label(m))
               for m in methods]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=min(len(handles), 5))  # fmt: skip


def plot_drop_one(cfg: dict[str, Any], cells: Cells, ds: str, out_dir: Path) -> list[Path]:
    """Figure 2 / F1–F4: metric vs the drop rate of one modality. One panel per dropped
    modality (columns) and per setting × metric (rows: train-time, test-time; AUROC, mF1),
    a series per method."""
    from medmix.protocol_names import format_protocol

    section = cfg.get("protocols") or {}
    scopes = [s for s in ("train", "test") if section.get(f"{s}_drop_one")]
    mods = list(cfg["datasets"][ds]["modalities"])
    methods = medmix_first(protocol_methods(cfg))
    colors, markers = method_colors(methods), method_markers(methods)
    rows = [(scope, metric, mlabel) for scope in scopes for metric, mlabel in SWEEP_METRICS]
    n_x = 1
    with figure_style.style():
        fig, axes = _plt().subplots(max(len(rows), 1), len(mods),
                                    figsize=(figure_style.DOUBLE_COLUMN, 1.6 * max(len(rows), 1) + 0.4),
                                    squeeze=False, sharey="row")  # fmt: skip
        for r, (scope, metric, mlabel) in enumerate(rows):
            rates = sorted(float(x) for x in section[f"{scope}_drop_one"])
            for j, m in enumerate(mods):
                ax = axes[r][j]
                series = []
                for method in methods:
                    settings = [(x, format_protocol("drop_one", scope, x, modality=m))
                                for x in rates]  # fmt: skip
                    series.append((method, *_sweep(cells, ds, method, settings, metric)))
                    n_x = max(n_x, len(series[-1][1]))
                if not _sweep_panel(ax, series, colors, markers, [0.0, *rates]):
                    ax.set_xticks([0.0, *rates])
                    _empty(ax)
                if r == 0:
                    ax.set_title(f"drop {modality_label(m)}")
                if j == 0:
                    ax.set_ylabel(f"{scope}-time drop\ntest {mlabel}")
                if r == len(rows) - 1:
                    ax.set_xlabel("drop rate r")
        _method_legend(fig, methods, colors, markers, n_x)
        fig.tight_layout(h_pad=0.6, w_pad=0.8)
    about = (
        f"{ds}: test AUROC and macro-F1 as one modality (column) is dropped at rate r in the "
        "training and validation splits (train-time rows) or in the test split (test-time "
        "rows); r = 0 is the full protocol. Markers: mean over seeds; error bars or bands: "
        f"± one standard deviation. {run_header(cfg, [ds])}"
    )
    return _save(fig, out_dir, f"drop_one_{ds}", about)


def plot_random_drop(cfg: dict[str, Any], cells: Cells, ds: str, out_dir: Path) -> list[Path]:
    """Figure 3 / F5–F8: metric vs the random drop rate p, train- and test-time (rows),
    AUROC and mF1 (columns), a series per method."""
    from medmix.protocol_names import format_protocol

    section = cfg.get("protocols") or {}
    scopes = [s for s in ("train", "test") if section.get(f"{s}_random")]
    methods = medmix_first(protocol_methods(cfg))
    colors, markers = method_colors(methods), method_markers(methods)
    n_x = 1
    with figure_style.style():
        fig, axes = _plt().subplots(max(len(scopes), 1), len(SWEEP_METRICS),
                                    figsize=(figure_style.DOUBLE_COLUMN, 2.0 * max(len(scopes), 1) + 0.4),
                                    squeeze=False)  # fmt: skip
        for row, scope in enumerate(scopes):
            rates = sorted(float(r) for r in section[f"{scope}_random"])
            settings = [(r, format_protocol("random", scope, r)) for r in rates]
            for col, (metric, mlabel) in enumerate(SWEEP_METRICS):
                ax = axes[row][col]
                series = [(m, *_sweep(cells, ds, m, settings, metric)) for m in methods]
                n_x = max([n_x, *(len(s[1]) for s in series)])
                if not _sweep_panel(ax, series, colors, markers, [0.0, *rates]):
                    ax.set_xticks([0.0, *rates])
                    _empty(ax)
                where = "train + val" if scope == "train" else "test"
                ax.set_xlabel(f"drop rate p of every modality ({where})")
                ax.set_ylabel(f"test {mlabel}")
                ax.set_title(f"{scope}-time random drop: {mlabel}")
        _method_legend(fig, methods, colors, markers, n_x)
        fig.tight_layout(h_pad=0.8, w_pad=1.0)
    about = (
        f"{ds}: test AUROC and macro-F1 as every modality is dropped at random with probability "
        "p in the training and validation splits (train-time) or in the test split (test-time); "
        "p = 0 is the full protocol. Markers: mean over seeds; error bars or bands: ± one "
        f"standard deviation. {run_header(cfg, [ds])}"
    )
    return _save(fig, out_dir, f"random_drop_{ds}", about)


def plot_ablation(cfg: dict[str, Any], cells: Cells, out_dir: Path) -> list[Path]:
    """Figure 4: one row per ablation setting, mean ± std over seeds as a dot with error bars
    per metric (columns), MedMIX's mean as a dashed red line; one block per dataset."""
    from matplotlib.lines import Line2D

    from medmix.ablation_plan import ablation_variants

    datasets = training_datasets(cfg)
    metrics = list(METRIC_COLUMNS.items())
    counts = [len(ablation_variants(cfg, d)) for d in datasets] or [1]
    kinds = {"reference": (MEDMIX_RED, "*", 7), "single_modality": ("#7f7f7f", "s", 4)}
    with figure_style.style():
        fig, axes = _plt().subplots(
            max(len(datasets), 1), len(metrics),
            figsize=(figure_style.DOUBLE_COLUMN, 0.17 * sum(counts) + 0.55 * len(counts) + 0.3),
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
                    color, marker, ms = kinds.get(v.kind, ("#1f77b4", "o", 4))
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
                        ax.axvline(mean[0], color=MEDMIX_RED, lw=0.8, ls="--", zorder=1)
                    from matplotlib.ticker import MaxNLocator

                    ax.xaxis.set_major_locator(MaxNLocator(3))
                else:
                    _empty(ax)
                ax.set_yticks(y)
                ax.set_ylim(len(variants) - 0.5, -0.5)  # MedMIX on top
                if c == 0:
                    ax.set_yticklabels([v.label for v in variants])
                    ax.set_ylabel(ds, fontsize=9, fontweight="bold")
                if r == 0:
                    ax.set_title(f"test {mlabel}")
                ax.grid(axis="x")
        handles = [
            Line2D([], [], color=MEDMIX_RED, marker="*", ms=7, ls="--", lw=0.8,
                   label="MedMIX (dashed: its mean)"),
            Line2D([], [], color="#1f77b4", marker="o", ms=4, lw=0, label="component removed"),
            Line2D([], [], color="#7f7f7f", marker="s", ms=4, lw=0, label="single modality"),
        ]  # fmt: skip
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
        fig.tight_layout(h_pad=0.8, w_pad=0.6)
    about = (
        "Structural ablations: markers show the mean over seeds, error bars ± one standard "
        f"deviation; the dashed red line is full MedMIX. {run_header(cfg, datasets)}"
    )
    return _save(fig, out_dir, "ablation", about)


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


def plot_pareto(
    cfg: dict[str, Any], cells: Cells, costs: dict[str, dict[str, Any]], out_dir: Path
) -> list[Path]:
    """Figure 5: Perf vs relative deployment cost per dataset, the Pareto front drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from fusion.efficiency import geomean

    erows = [r for r in efficiency_data(cfg, cells, costs) if r.dataset != "Average"]
    datasets = list(costs) or ["(none)"]
    ordered = method_order([r.method for r in erows])
    colors, markers = method_colors(ordered), method_markers(ordered)
    n_rows, n_cols = _grid(len(datasets))
    width = figure_style.DOUBLE_COLUMN if n_cols > 1 else figure_style.SINGLE_COLUMN
    with figure_style.style():
        fig, axes = _plt().subplots(n_rows, n_cols, figsize=(width, 2.5 * n_rows),
                                    squeeze=False)  # fmt: skip
        for k, ax in enumerate(axes.flat):
            if k >= len(datasets):
                ax.set_visible(False)
                continue
            ds = datasets[k]
            ax.set_title(ds)
            rows = [r for r in erows if r.dataset == ds and math.isfinite(r.perf)]
            ref = next((r for r in rows if r.method == "medmix"), None)
            if not rows or ref is None:
                _empty(ax, "no efficiency results")
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
    return _save(fig, out_dir, "pareto", about)


def weight_protocols(cfg: dict[str, Any], ds: str) -> list[str]:
    """The settings shown in the α / β figure: full, then each family at its middle rate."""
    from medmix.protocol_names import format_protocol, parse_protocol

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
    with figure_style.style():
        cmap = _plt().get_cmap("Set2")
        fig, axes = _plt().subplots(2, len(mods),
                                    figsize=(figure_style.DOUBLE_COLUMN, max(0.48 * n_p + 1.9, 3.4)),
                                    squeeze=False, sharey=True)  # fmt: skip
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
                data = []
                for p in protocols:
                    df = frames.get(p)
                    cols = [f"alpha_{m}_{x}" for x in experts[m]]
                    if df is None or not all(c in df for c in cols):
                        data.append(np.zeros(0))
                        continue
                    avail = df[cols].sum(axis=1).to_numpy() > 0
                    data.append(df[f"alpha_{m}_{e}"].to_numpy()[avail])
                offs = (e_i - (k - 1) / 2) * width
                _hbox(ax, data, y + offs, width * 0.9, cmap(e_i % 8), label=e)
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
                _empty(ax)
        fig.suptitle(f"{ds}: MedMIX weights per protocol")
        fig.tight_layout(h_pad=0.8, w_pad=0.6)
    about = (
        f"{ds}: MedMIX's fusion weights β (top) and router weights α (bottom) per modality "
        "under each protocol, test split, all seeds pooled. Boxes: quartiles, whiskers 1.5 IQR, "
        "outliers hidden; a modality's weight is shown only for samples where it is available. "
        f"{run_header(cfg, [ds])}"
    )
    return _save(fig, out_dir, f"weights_{ds}", about)


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


# -- the paper command -----------------------------------------------------------------


def load_costs(cfg: dict[str, Any], results: Path) -> dict[str, dict[str, Any]]:
    costs = {}
    for ds in training_datasets(cfg):
        p = results / ds / "efficiency.json"
        if p.exists():
            costs[ds] = json.loads(p.read_text())
    return costs


def render_paper(
    cfg: dict[str, Any],
    tables_dir: str | Path,
    figures_dir: str | Path,
    metrics: pd.DataFrame | None = None,
) -> list[Path]:
    """Write every table and figure :func:`paper_outputs` lists for ``cfg``."""
    results = Path(cfg.get("results", "results"))
    if metrics is None:
        paths = [results / d / "metrics.parquet" for d in training_datasets(cfg)]
        metrics = load_metrics([p for p in paths if p.exists()]) if any(
            p.exists() for p in paths) else pd.DataFrame(columns=[
                "dataset", "protocol", "method", "seed", "split", "task", "metric", "value"])  # fmt: skip
    cells = Cells(metrics)
    plan = paper_outputs(cfg)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    costs = load_costs(cfg, results)
    written: list[Path] = []
    for stem in plan["tables"]:
        if stem == "experts":
            table = build_experts_table(cfg)
        elif stem in FAMILY_TITLES:
            table = build_protocol_table(cfg, cells, stem)
        elif stem == "structured":
            table = build_structured_table(cfg, cells)
        elif stem == "ablation":
            table = build_ablation_table(cfg, cells, results)
        elif stem == "per_task":
            table = build_per_task_table(cfg, cells, results)
        elif stem == "external":
            table = build_external_table(cfg, cells, results)
        elif stem == "efficiency":
            table = build_efficiency_table(cfg, cells, costs)
        else:
            raise ValueError(f"no renderer for table {stem!r}")
        written += write_paper_table(table, tables_dir)
    for stem in plan["figures"]:
        if stem.startswith("drop_one_"):
            written += plot_drop_one(cfg, cells, stem.removeprefix("drop_one_"), figures_dir)
        elif stem.startswith("random_drop_"):
            written += plot_random_drop(cfg, cells, stem.removeprefix("random_drop_"), figures_dir)
        elif stem.startswith("weights_"):
            written += plot_weights(cfg, results, stem.removeprefix("weights_"), figures_dir)
        elif stem == "ablation":
            written += plot_ablation(cfg, cells, figures_dir)
        elif stem == "pareto":
            written += plot_pareto(cfg, cells, costs, figures_dir)
        else:
            raise ValueError(f"no renderer for figure {stem!r}")
    return written


def main(argv: list[str] | None = None) -> int:
    from medmix.cli import add_version_argument

    parser = argparse.ArgumentParser(prog="python -m fusion.render")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, what in (
        ("tables", "Table 1 (main)"),
        ("figures", "the main AUROC and fusion-weight figures"),
    ):
        p = sub.add_parser(name, help=f"render {what} from metrics tables")
        p.add_argument(
            "--metrics", nargs="+", required=True, help="metrics.parquet file(s) of the datasets"
        )
        p.add_argument("--out-dir", required=True, help="folder to write into")
        p.add_argument(
            "--header", default="", help="header line describing the runs (default: none)"
        )
        if name == "figures":
            p.add_argument(
                "--predictions", nargs="*", default=[], help="MedMIX predictions.parquet files"
            )
    p = sub.add_parser("paper", help="every configured paper table and figure beyond Table 1")
    p.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    p.add_argument("--tables-dir", required=True, help="folder for the tables")
    p.add_argument("--figures-dir", required=True, help="folder for the figures")
    p = sub.add_parser("outputs", help="list the stems `paper` writes for a config")
    p.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    args = parser.parse_args(argv)
    if args.cmd in ("paper", "outputs"):
        from medmix.config import load_config_arg

        cfg = load_config_arg(args.config)
        if args.cmd == "outputs":
            print(json.dumps(paper_outputs(cfg), indent=1))
            return 0
        for p in render_paper(cfg, args.tables_dir, args.figures_dir):
            print(p)
        return 0
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
        by_ds, args.out_dir, args.header
    ):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
