"""Run folders' status without torch: which runs could not happen, and why.

A run that cannot happen (OneLLM without its weights, a teacher-reading method without a
teacher) still writes ``runs/{protocol}/{method}/summary.json`` with ``"status":
"unavailable"`` and the reason, so the DAG completes and the tables can say so (the report
env has no torch, hence this module).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def unavailable_runs(runs_root: str | os.PathLike) -> list[dict[str, Any]]:
    """The runs marked unavailable (``summary.json`` status), for the tables' notes."""
    out = []
    for path in sorted(Path(runs_root).glob("*/*/summary.json")):
        if any(p.startswith(".") for p in path.parts[-3:-1]):
            continue
        s = json.loads(path.read_text())
        if s.get("status") == "unavailable":
            out.append({"protocol": path.parent.parent.name, "method": path.parent.name,
                        "reason": s.get("reason", ""),
                        "kind": s.get("unavailable_kind") or "not run"})  # fmt: skip
    return out
