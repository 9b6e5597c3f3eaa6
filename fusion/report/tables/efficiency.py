"""Table E6: parameters, FLOPs and peak memory of each method's deployed path, its Perf and
EffScore (:mod:`fusion.efficiency`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fusion.report.cells import Cells, efficiency_data, perf_flags
from fusion.report.registry import register_table
from fusion.report.table_model import FlaggedNumber, Table, ValueColumn
from medmix.methods import method_label, method_order
from medmix.plan import run_header

PARAM_UNITS = ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1.0, ""))
FLOP_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"), (1.0, ""))
MEM_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1.0, "B"))


def _unit(values: Sequence[float], units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    """The largest unit in which the median positive value is at least 1 (the paper prints
    B / G / GB; a demo's tiny experts would all round to 0.000 there)."""
    pos = sorted(abs(v) for v in values if v is not None and math.isfinite(v) and v > 0)
    typical = pos[len(pos) // 2] if pos else 0.0
    for scale, name in units:
        if typical >= scale:
            return scale, name
    return units[-1]


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


def _flag_perf(rows: list[dict[str, Any]], erows: list[Any],
               flags: dict[tuple[str, str], str]) -> None:  # fmt: skip
    """Mark Perf and EffScore where Perf is over incomplete cells: the row's own, its
    dataset's MedMIX (EffScore's reference), any dataset's for an ``Average`` row."""
    if not flags:
        return
    for row, r in zip(rows, erows, strict=True):
        if r.dataset == "Average":
            own = [f"{d}: {f}" for (d, m), f in flags.items() if m == r.method]
            ref = [f"{d}: {f}" for (d, m), f in flags.items() if m == "medmix"]
        else:
            own = [flags[(r.dataset, r.method)]] if (r.dataset, r.method) in flags else []
            ref = [flags[(r.dataset, "medmix")]] if (r.dataset, "medmix") in flags else []
        if own:
            row["perf"] = FlaggedNumber(row["perf"], "; ".join(dict.fromkeys(own)))
        why = list(dict.fromkeys(own + [f"MedMIX {f}" for f in ref if f not in own]))
        if why and row["eff"] is not None:
            row["eff"] = FlaggedNumber(row["eff"], "EffScore from " + "; ".join(why))


@register_table("efficiency", caption="Table E6 — efficiency", inputs=("cfg", "cells", "costs"))
def build_efficiency_table(
    cfg: dict[str, Any], cells: Cells, costs: dict[str, dict[str, Any]]
) -> Table:
    """Table E6."""
    erows = efficiency_data(cells, costs)
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
    _flag_perf(rows, erows, perf_flags(cells, costs))
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
    return Table("efficiency", header, [("dataset", "Dataset"), ("method", "Method")], cols,
                 rows, ["dataset"], notes)  # fmt: skip
