"""The repository explains itself: no file points at material a clone does not have (the
original design notes, a sibling folder, an issue tracker's numbers). The design lives in
docs/design.md, which every section reference must name."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|DESIGN(?:\.md| ?§)|\b[Ii]ssue #?\d+\b")
SECTION_REF = re.compile(r"docs/design\.md §(\d+(?:\.\d+)?)")


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in out.splitlines():
        path = REPO / name
        if path.suffix in {".parquet", ".png", ".gz", ".faiss"} or not path.is_file():
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def test_no_file_points_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    hits = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()[:100]}"
        for p in tracked_text_files()
        if p.resolve() != me
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "references to material outside the repository:\n" + "\n".join(hits)


def test_every_design_section_cited_exists() -> None:
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", design, re.M))
    cited = {
        (m, f"{p.relative_to(REPO)}")
        for p in tracked_text_files()
        for m in SECTION_REF.findall(p.read_text(encoding="utf-8"))
    }
    assert len(cited) >= 10
    missing = sorted(f"§{s} (cited in {where})" for s, where in cited if s not in sections)
    assert not missing, "docs/design.md lacks: " + ", ".join(missing)
