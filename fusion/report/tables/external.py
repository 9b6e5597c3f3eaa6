"""Table 2: trained on the source cohort, evaluated on the target (split ``external``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion.report.cells import METRIC_COLUMNS, Cells, metric_columns, seeds_text
from fusion.report.registry import register_table
from fusion.report.table_model import Table
from fusion.run_status import unavailable_runs
from medmix.methods import method_label, method_order
from medmix.plan import external_methods, external_protocol, run_header


def _unavailable_external(
    cfg: dict[str, Any], results: Path, source: str, protocol: str, have: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """method -> (short form, reason) for the methods of the comparison without an external
    evaluation because their run could not happen (its ``full`` run on the source, or the
    external run itself, marked unavailable: OneLLM without weights, AdaCoMed without a
    teacher)."""
    wanted = set(external_methods(cfg))
    out: dict[str, tuple[str, str]] = {}
    for e in unavailable_runs(results / source / "runs"):
        if e["protocol"] in ("full", protocol) and e["method"] in wanted - set(have):
            out.setdefault(e["method"], (e["kind"], e["reason"]))
    return out


def _cohort_notes(results: Path, src: str, tgt: str, protocol: str) -> list[str]:
    """What the target cohort lacks, and the experts fitted per cohort."""
    flagged, absent = set(), set()
    for s in (results / src / "runs" / protocol).glob("*/summary.json"):
        summary = json.loads(s.read_text())
        flagged |= set(summary.get("unaligned_experts") or [])
        absent |= set(summary.get("absent_modalities") or [])
    notes = []
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
    return notes


@register_table("external", caption="Table 2 — external validation",
                inputs=("cfg", "cells", "results"))  # fmt: skip
def build_external_table(cfg: dict[str, Any], cells: Cells, results: Path) -> Table:
    """Table 2: one block of methods per source → target pair."""
    pairs = [(e["source"], e["target"]) for e in cfg.get("external") or []]
    agg = cells.agg
    rows, notes = [], []
    for src, tgt in pairs:
        p = external_protocol(tgt)
        methods = method_order(agg.loc[(agg["dataset"] == src) & (agg["protocol"] == p), "method"])
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
        notes += _cohort_notes(results, src, tgt, p)
    ids = [("method", "Method")]
    if len(pairs) > 1:
        ids.insert(0, ("pair", "Source → Target"))
    header = (
        "Trained on the source cohort, evaluated on the target cohort with the source's "
        f"standardisation and validation thresholds; {seeds_text(cfg)}. "
        f"{run_header(cfg, [d for p in pairs for d in p])}"
    )
    return Table("external", header, ids, metric_columns(), rows, ["pair"], notes)
