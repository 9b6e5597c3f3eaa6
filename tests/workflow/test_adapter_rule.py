"""The adapter job's inputs: the small files an adapter's options name (a published split, a
column mapping) are inputs, so editing one reruns the cohort; data folders are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _dry_run(tmp_path: Path, args: dict) -> str:
    cfg = {
        "results": str(tmp_path / "results"),
        "seeds": [0],
        "datasets": {
            "openi": {"adapter": "openi", "args": args, "modalities": {"report": ["tfidf-svd"]}}
        },
        "experts": {"tfidf-svd": {"type": "tfidf-svd", "n_components": 8}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    target = tmp_path / "results" / "openi" / "manifest.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", str(target), "-n", "--configfile", str(tmp_path / "c.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_split_file_is_an_input_of_the_adapter_job(tmp_path: Path) -> None:
    split = tmp_path / "split.csv"
    split.write_text("id,split\n1,train\n")
    out = _dry_run(
        tmp_path,
        {"reports": str(tmp_path / "r.csv"), "projections": str(tmp_path / "p.csv"),
         "split_file": str(split)},
    )  # fmt: skip
    (line,) = [x for x in out.splitlines() if x.strip().startswith("input:")]
    assert line.split("input:")[1].strip() == str(split)


def test_without_file_options_the_adapter_job_has_no_inputs(tmp_path: Path) -> None:
    out = _dry_run(
        tmp_path, {"reports": str(tmp_path / "r.csv"), "projections": str(tmp_path / "p.csv")}
    )
    assert "rule adapter_cohort" in out
    assert not [x for x in out.splitlines() if x.strip().startswith("input:")]


def test_a_missing_split_file_is_left_to_the_adapter(tmp_path: Path) -> None:
    """Not a dry-run MissingInputException: the adapter itself refuses it in one line."""
    out = _dry_run(
        tmp_path,
        {"reports": str(tmp_path / "r.csv"), "projections": str(tmp_path / "p.csv"),
         "split_file": str(tmp_path / "absent.csv")},
    )  # fmt: skip
    assert "rule adapter_cohort" in out
    assert not [x for x in out.splitlines() if x.strip().startswith("input:")]
