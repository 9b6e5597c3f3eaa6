"""Tables E2–E5 (one or every modality dropped at rate r, in training or at test time) and
the structured-missingness table beyond the paper (MNAR, replayed patterns)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusion.protocols import read_masks_report
from fusion.report.cells import Cells, metric_columns, seeds_text
from fusion.report.registry import register_table, register_tables
from fusion.report.table_model import Table, ValueColumn
from medmix.methods import medmix_first, method_label
from medmix.plan import protocol_methods, run_header, training_datasets
from medmix.protocol_names import format_protocol, format_rate, modality_label, parse_protocol


@register_tables(
    {
        "train_drop_one": "Table E2 — single-modality drop at training time",
        "test_drop_one": "Table E3 — single-modality drop at test time",
        "train_random": "Table E4 — random multi-modality drop at training time",
        "test_random": "Table E5 — random multi-modality drop at test time",
    },
    inputs=("cfg", "cells", "stem"),
)
def build_protocol_table(cfg: dict[str, Any], cells: Cells, family: str) -> Table:
    """Tables E2–E5 in the paper's layout."""
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
        f"test split, {seeds_text(cfg)}. {run_header(cfg, training_datasets(cfg))}"
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
    return Table(family, header, ids, columns, rows, group, notes)


def _all_dropped(
    results: Path, ds: str, protocol: str, methods: Sequence[str]
) -> tuple[float, int] | None:
    """(mean over seeds of the test samples left with no modality, test size) from the masks
    saved with the run of the first method that has them (the masks are shared)."""
    for method in methods:
        files = sorted((results / ds / "runs" / protocol / method).glob("seed*/masks.parquet"))
        tests = [read_masks_report(f).get("splits", {}).get("test") for f in files]
        tests = [t for t in tests if t]
        if tests:
            return float(np.mean([t["n_all_dropped"] for t in tests])), int(tests[0]["n"])
    return None


def protocol_label(name: str) -> str:
    """A readable description of a setting: ``MNAR (label) p=0.5, test split``."""
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


@register_table("structured", caption="Structured missingness", inputs=("cfg", "cells"))
def build_structured_table(cfg: dict[str, Any], cells: Cells) -> Table:
    """Beyond the paper: missing-not-at-random and replayed missingness (with the full row)."""
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
        f"replayed onto complete samples; test split, {seeds_text(cfg)}. "
        f"{run_header(cfg, training_datasets(cfg))}"
    )
    ids = [("dataset", "Dataset"), ("method", "Method"), ("protocol", "Protocol")]
    return Table("structured", header, ids, metric_columns(), rows, ["dataset", "protocol"])
