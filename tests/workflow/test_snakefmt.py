"""The Snakefile and every rule file are formatted by snakefmt (its defaults: line length 88,
directives sorted, shell strings formatted): `snakefmt Snakefile workflow/rules/` fixes them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_workflow_is_snakefmt_formatted() -> None:
    if importlib.util.find_spec("snakefmt") is None:
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    files = [REPO / "Snakefile", REPO / "workflow" / "rules"]
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "--compact-diff", *map(str, files)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (
        "run `snakefmt Snakefile workflow/rules/`:\n" + (proc.stdout + proc.stderr)[-5000:]
    )
