"""Table E1: the expert committee of each dataset and modality, by family, and the teacher."""

from __future__ import annotations

from typing import Any

from fusion.report.registry import register_table
from fusion.report.table_model import Table
from medmix.ablation_plan import FAMILY_ORDER, expert_families
from medmix.plan import run_header
from medmix.protocol_names import modality_label


@register_table("experts", caption="Table E1 — expert committee", inputs=("cfg",))
def build_experts_table(cfg: dict[str, Any]) -> Table:
    """Table E1: the experts of each dataset and modality, by family, and the teacher."""
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
    return Table("experts", run_header(cfg), ids, [], rows, [])
