"""Table E7: the structural ablations of MedMIX per dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fusion.report.cells import Cells, metric_columns, seeds_text
from fusion.report.registry import register_table
from fusion.report.table_model import Table
from medmix.ablation_plan import ablation_variants
from medmix.hparams import FusionHParams
from medmix.plan import run_header, training_datasets
from medmix.protocol_names import modality_label


def _selection_note(results: Path, ds: str) -> str | None:
    path = results / ds / "runs" / "ablation" / "best_expert" / "selection.json"
    if not path.exists():
        return None
    sel = json.loads(path.read_text()).get("selection") or {}
    picks = ", ".join(f"{modality_label(m)}: {v['expert']}" for m, v in sel.items())
    return f"{ds} — best single expert per modality (validation linear probe): {picks}."


@register_table("ablation", caption="Table E7 — structural ablations",
                inputs=("cfg", "cells", "results"))  # fmt: skip
def build_ablation_table(cfg: dict[str, Any], cells: Cells, results: Path) -> Table:
    """Table E7."""
    rows, notes = [], []
    for ds in training_datasets(cfg):
        for v in ablation_variants(cfg, ds):
            rows.append({"dataset": ds, "setting": v.label,
                         **cells.metric_row(ds, v.protocol, v.method),
                         "_run": f"{v.protocol}/{v.method}"})  # fmt: skip
        note = _selection_note(results, ds)
        if note:
            notes.append(note)
    lam = FusionHParams.of(cfg).lambda_kd
    if lam == 0.0:
        notes.append("Distillation is off in this config (fusion.lambda_kd = 0): "
                     "'w/o distillation' trains the same model as MedMIX.")  # fmt: skip
    header = f"Test split, {seeds_text(cfg)}. {run_header(cfg, training_datasets(cfg))}"
    return Table("ablation", header, [("dataset", "Dataset"), ("setting", "Setting")],
                 metric_columns(), rows, ["dataset"], notes)  # fmt: skip
