"""Table 1 (``main.*``): every method of the main comparison per dataset, test split, the
``*-Large`` teacher references in a block of their own, never ranked.

Runs that could not happen (``summary.json`` marked unavailable: OneLLM without weights,
AdaCoMed without a teacher) are rows of ``n/a`` cells, the short form in the method cell and
the reason as a note. The "Δ AUROC vs MedMIX [95 % CI]" column (and "vs probe" where the
``linear-probe`` baseline ran) holds each row's seed-averaged test macro AUROC minus the
reference's, with a paired test-bootstrap percentile interval (:mod:`fusion.paired`, from the
run folders' ``predictions.parquet`` and the dataset's ``manifest.parquet``); † marks an
interval that excludes 0. The CSV has ``delta_auroc_vs_{medmix,probe}`` with ``_lo``, ``_hi``,
``_significant``, ``_skipped_draws`` and ``_note``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion import paired
from fusion.report.cells import (
    METRIC_COLUMNS,
    SeedsOf,
    load_metrics,
    metric_columns,
    seeds_by_dataset,
    summarise,
)
from fusion.report.registry import MAIN, register_table
from fusion.report.table_model import (
    SIGNIFICANT_MARK,
    BoldRule,
    Interval,
    Layout,
    SeedMean,
    Table,
    Text,
    ValueColumn,
)
from fusion.report.table_render import tex_escape, write_table
from fusion.run_status import unavailable_runs
from medmix.methods import is_teacher, method_label, table1_order

log = logging.getLogger("medmix.fusion.render")

TEACHER_BLOCK = "Teacher references (not ranked)"
DELTA_KEYS = {"medmix": "medmix", "linear-probe": "probe"}  # reference -> csv / header name
NAN = math.nan
# Table 1 bolds a dataset's best even where a single method was compared, within numpy's
# default closeness
MAIN_BOLD = BoldRule(min_rows=1, rtol=1e-5, atol=1e-8)

Key = tuple[str, str]  # (dataset, method)


def _ref_name(ref: str) -> str:
    return "MedMIX" if ref == "medmix" else DELTA_KEYS.get(ref, ref)


def delta_column(ref: str) -> ValueColumn:
    name = _ref_name(ref)
    return ValueColumn(f"delta_{DELTA_KEYS.get(ref, ref)}", f"Δ AUROC vs {name} [95 % CI]", None,
                       tex_label=f"$\\Delta$ AUROC vs {tex_escape(name)} [95\\,\\% CI]")  # fmt: skip


def summary_rows(metrics: Any, expected: SeedsOf | None = None) -> list[dict[str, Any]]:
    """One row per (dataset, method) of the full protocol: mean and std per metric, seeds; a
    cell not over every ``expected`` seed (:func:`run_seeds`) says why (a ``SeedMean``)."""
    agg = summarise(metrics, expected=expected)
    rows = []
    for ds in agg["dataset"].drop_duplicates():
        dsel = agg[agg["dataset"] == ds]
        for method in table1_order(dsel["method"].unique()):
            row: dict[str, Any] = {"dataset": ds, "method": method, "seeds": 0}
            for metric in METRIC_COLUMNS:
                cell = dsel[(dsel["method"] == method) & (dsel["metric"] == metric)]
                found = len(cell) > 0
                row[metric] = ((float(cell["mean"].iloc[0]), float(cell["std"].iloc[0]))
                               if found else (NAN, NAN))  # fmt: skip
                flag = cell["flag"].iloc[0] if found else None
                if isinstance(flag, str):  # not over every seed of the run: marked, never bold
                    row[metric] = SeedMean(*row[metric], flag)
                row["seeds"] = int(cell["count"].iloc[0]) if found else 0  # the last metric's
            rows.append(row)
    return rows


def run_seeds(metrics: Any, roots: dict[str, Path]) -> SeedsOf:
    """The seeds each full-protocol run was trained with: its ``summary.json`` beside the
    metrics (``roots[dataset]/runs/full/{method}``), else every seed of its dataset."""
    fallback = seeds_by_dataset(metrics)
    cache: dict[tuple[str, str], list[int] | None] = {}

    def seeds(ds: str, protocol: str, method: str) -> list[int]:
        if (ds, method) not in cache:
            cache[(ds, method)] = _summary_seeds(roots.get(ds), method)
        own = cache[(ds, method)]
        return own if own is not None and protocol == "full" else fallback(ds, protocol, method)

    return seeds


def _summary_seeds(root: Path | None, method: str) -> list[int] | None:
    path = None if root is None else root / "runs" / "full" / method / "summary.json"
    if path is None or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        return [int(s) for s in summary["seeds"]] if summary.get("status") == "ok" else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s): expecting every seed of the dataset", path, e)
        return None


def add_unavailable(
    rows: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], dict[Key, str], dict[Key, str]]:
    """Rows for the full-protocol runs marked unavailable (``runs``: dataset -> the list of
    :func:`fusion.run_status.unavailable_runs`), placed with their dataset in method order.
    Returns the rows, (dataset, method) -> reason and -> the short form for the cell."""
    have = {(r["dataset"], r["method"]) for r in rows}
    extra, why, markers = [], {}, {}
    for ds, entries in runs.items():
        for e in entries:
            if e["protocol"] != "full" or (ds, e["method"]) in have:
                continue
            extra.append({"dataset": ds, "method": e["method"], "seeds": 0,
                          **{m: (NAN, NAN) for m in METRIC_COLUMNS}})  # fmt: skip
            why[(ds, e["method"])] = e["reason"]
            markers[(ds, e["method"])] = e.get("kind") or "not run"
    if not extra:
        return rows, why, markers
    both = rows + extra
    ordered = []
    for ds in dict.fromkeys(r["dataset"] for r in both):
        mine = [r for r in both if r["dataset"] == ds]
        for method in table1_order([r["method"] for r in mine]):
            ordered.append(next(r for r in mine if r["method"] == method))
    return ordered, why, markers


def paired_deltas(
    rows: list[dict[str, Any]], roots: dict[str, Path], n_boot: int, seed: int
) -> dict[tuple[str, str, str], Any]:
    """(dataset, method, reference) -> :class:`fusion.paired.PairedDelta`, or why it is n/a,
    from ``roots[dataset]/runs/full/*/seed*/predictions.parquet`` and
    ``roots[dataset]/manifest.parquet`` (:func:`fusion.paired.dataset_deltas`)."""
    deltas: dict[tuple[str, str, str], Any] = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        methods = [r["method"] for r in rows if r["dataset"] == ds]
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
    return deltas


def _about(n_boot: int, seed: int) -> str:
    return (
        "Δ AUROC: the row's test macro AUROC (averaged over its seeds) minus the reference's, "
        f"with the 95 % percentile interval of {n_boot:,} paired bootstrap resamples of the "
        f"test samples (seed {seed}; both methods scored on the same resamples); "
        f"{SIGNIFICANT_MARK}: the interval excludes 0. A label with one class in a resample is "
        "left out of that resample (counted in the CSV). The interval measures test-sample "
        "uncertainty with the trained models fixed; the ± is the spread over training seeds."
    )


def _delta_cell(v: Any, method: str, ref: str) -> Text | Interval:
    if method == ref:
        return Text("—", tex="---")
    if v is None:
        return Text(f"n/a (no {_ref_name(ref)} run)")
    if isinstance(v, str):
        return Text(f"n/a ({v})")
    return Interval(v.delta, v.lo, v.hi, bool(v.significant))


def _delta_extras(v: Any, method: str, ref: str) -> dict[str, Any]:
    """The CSV's numbers of one Δ cell: difference, interval, significance, skips, note."""
    col = f"_delta_auroc_vs_{DELTA_KEYS.get(ref, ref)}"
    num = v if v is not None and not isinstance(v, str) else None
    note = "reference" if method == ref else (
        v if isinstance(v, str) else "" if v is not None else f"no {_ref_name(ref)} run")  # fmt: skip
    return {
        col: NAN if num is None else num.delta,
        f"{col}_lo": NAN if num is None else num.lo,
        f"{col}_hi": NAN if num is None else num.hi,
        f"{col}_significant": num is not None and num.significant,
        f"{col}_skipped_draws": 0 if num is None else num.skipped_label_draws,
        f"{col}_note": note,
    }


def _csv_columns(refs: Sequence[str]) -> list[str]:
    cols = ["dataset", "method", "method_label"]
    for k, m in enumerate(METRIC_COLUMNS):
        cols += [f"{m}_mean", f"{m}_std"] + (["seeds"] if k == 0 else [])
    cols += ["reference", *(f"{m}_best" for m in METRIC_COLUMNS), "unavailable"]
    for ref in refs:
        col = f"delta_auroc_vs_{DELTA_KEYS.get(ref, ref)}"
        cols += [col, *(f"{col}_{k}" for k in ("lo", "hi", "significant", "skipped_draws",
                                              "note"))]  # fmt: skip
    return cols


def _notes(why: dict[Key, str]) -> list[str]:
    """One note per (method, reason), naming every dataset it applies to."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for (ds, m), reason in why.items():
        grouped.setdefault((m, reason), []).append(ds)
    return [f"Not run: {method_label(m)} on {', '.join(dss)}: {reason}"
            for (m, reason), dss in grouped.items()]  # fmt: skip


def main_table(
    rows: list[dict[str, Any]],
    header: str,
    why: dict[Key, str],
    markers: dict[Key, str],
    deltas: dict[tuple[str, str, str], Any],
    about: str,
) -> Table:
    """Table 1 from its rows (:func:`summary_rows`, :func:`add_unavailable`) and deltas: one
    Δ column per reference with an interval on some dataset."""
    refs = [r for r in paired.REFERENCES
            if any(k[2] == r and not isinstance(v, str) for k, v in deltas.items())]  # fmt: skip
    out = []
    for r in rows:
        ds, m = r["dataset"], r["method"]
        label = method_label(m)
        row = {"dataset": ds, "method": f"{label} ({markers.get((ds, m), 'not run')})"
               if why.get((ds, m)) else label, **{k: r[k] for k in METRIC_COLUMNS}}  # fmt: skip
        row |= {"_dataset": ds, "_method": m, "_method_label": label, "_seeds": r["seeds"],
                "_reference": is_teacher(m), "_unavailable": why.get((ds, m), "")}  # fmt: skip
        for ref in refs:
            v = deltas.get((ds, m, ref))
            row[delta_column(ref).key] = _delta_cell(v, m, ref)
            row |= _delta_extras(v, m, ref)
        out.append(row)
    layout = Layout(title_in_text=False, bullet_notes=True, tex_notes=False,
                    reference_heading=TEACHER_BLOCK)  # fmt: skip
    return Table(
        "main", header, [("dataset", "Dataset"), ("method", "Method")],
        [*metric_columns(), *(delta_column(r) for r in refs)], out, ["dataset"],
        notes=_notes(why), about=about if refs else "", bold=MAIN_BOLD, layout=layout,
        csv_columns=_csv_columns(refs),
    )  # fmt: skip


@register_table("main", caption="Table 1 — main comparison", inputs=("metrics_paths", "header"),
                command=MAIN)  # fmt: skip
def build_main_table(
    metrics_paths: Sequence[str | Path],
    header: str,
    n_boot: int | None = None,
    boot_seed: int | None = None,
) -> Table:
    """Table 1 from ``results/{dataset}/metrics.parquet`` files, with the runs beside them
    (``results/{dataset}/runs``) for the unavailable rows and the paired intervals."""
    metrics = load_metrics(metrics_paths)
    roots = {Path(p).parent.name: Path(p).parent for p in metrics_paths}
    rows = summary_rows(metrics, run_seeds(metrics, roots))
    runs = {name: unavailable_runs(root / "runs") for name, root in roots.items()}
    rows, why, markers = add_unavailable(rows, runs)
    n_boot = paired.N_BOOT if n_boot is None else int(n_boot)
    seed = paired.SEED if boot_seed is None else int(boot_seed)
    t0 = time.perf_counter()
    deltas = paired_deltas(rows, roots, n_boot, seed)
    log.info("paired bootstrap (%d resamples): %.2fs", n_boot, time.perf_counter() - t0)
    return main_table(rows, header, why, markers, deltas, _about(n_boot, seed))


def write_tables(
    metrics_paths: Sequence[str | Path],
    out_dir: str | Path,
    header: str,
    stem: str = "main",
    n_boot: int | None = None,
    boot_seed: int | None = None,
) -> list[Path]:
    """Write Table 1 as ``<stem>.md``, ``.tex``, ``.csv`` and ``.html``."""
    table = build_main_table(metrics_paths, header, n_boot=n_boot, boot_seed=boot_seed)
    return write_table(table, out_dir, stem)
