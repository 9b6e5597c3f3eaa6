"""bench/compare_results.py: the refactor check finds a changed number, a missing file and a
changed table, and ignores wall-clock fields and absolute checkout paths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "compare_results", REPO / "bench" / "compare_results.py"
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _results(root: Path, prob: float, seconds: float) -> Path:
    res = root / "results" / "smoke"
    run = res / "demo" / "runs" / "full" / "medmix" / "seed0"
    run.mkdir(parents=True)
    pq.write_table(
        pa.table({"sample_id": ["a", "b"], "prob": [0.25, prob]}), run / "predictions.parquet"
    )
    (run / "metrics.json").write_text(
        json.dumps({"auroc": 0.75, "train_seconds": seconds, "out": str(root / "x")})
    )
    (res / "tables").mkdir()
    (res / "tables" / "main.md").write_text("| MedMIX | 0.750 |\n")
    (res / "logs").mkdir()
    (res / "logs" / "train.log").write_text(f"took {seconds} s\n")
    return res


def test_identical_runs_compare_equal_despite_timings_and_paths(tmp_path: Path, capsys) -> None:
    a = _results(tmp_path / "a", 0.5, 1.0)
    b = _results(tmp_path / "b", 0.5, 9.0)
    assert compare.main([str(a), str(b)]) == 0
    assert "3 files compared, 0 differences" in capsys.readouterr().out


def test_a_changed_prediction_table_or_missing_file_is_reported(tmp_path: Path, capsys) -> None:
    a = _results(tmp_path / "a", 0.5, 1.0)
    b = _results(tmp_path / "b", 0.5000001, 1.0)
    (b / "tables" / "main.md").write_text("| MedMIX | 0.751 |\n")
    (a / "tables" / "main.csv").write_text("method,auroc\nmedmix,0.75\n")
    assert compare.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "predictions.parquet: values differ in columns ['prob']" in out
    assert "tables/main.md: bytes differ" in out
    assert "tables/main.csv: only in" in out
