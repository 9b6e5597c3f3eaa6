"""Sample status table: how many samples each expert cache holds as ok / missing / failed, and
why they failed (failures are counted in the run's summary table).

The counts come from the caches themselves (every cache row has ``status`` and ``reason``,
docs/design.md §3.2), so the table is always in step with what the fusion stage reads. Command
line (rule ``sample_status``)::

    python -m extractors.status --caches results/*/embeddings/*/*.parquet \\
        --teachers results/*/teachers/*.parquet --md sample_status.md --csv sample_status.csv \\
        --html sample_status.html

Markdown: one table per dataset, rows ``modality / expert``; HTML (the report shows it
inline): the same, one block per dataset; CSV: one long table with a ``dataset`` column. Only ids-free reason summaries are shown (reasons never hold note text).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from extractors.cache import STATUSES, CacheError, read_meta
from medmix.cli import run_cli
from medmix.io import write_text_atomic
from medmix.table_html import Block, Cell, render_html_table

TOP_REASONS = 3
COLUMNS = ["dataset", "modality", "expert", "role", "n", "ok", "missing", "failed", "top_reasons"]


def reason_key(reason: object) -> str:
    """A failure reason with its sample-specific details (numbers, quoted paths or values)
    collapsed, so that reasons of the same kind are counted together."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", str(reason))
    return re.sub(r"\d+(?:\.\d+)?", "N", text).strip()[:80]


def count_reasons(reasons: Iterable[object]) -> Counter[str]:
    return Counter(reason_key(r) for r in reasons)


@dataclass
class StatusRow:
    """The counts of one cache."""

    dataset: str
    modality: str
    expert: str
    role: str  # "expert" or "teacher"
    n: int
    ok: int
    missing: int
    failed: int
    top_reasons: str  # "reason (count); …", most frequent first

    @property
    def label(self) -> str:
        return f"{self.modality} / {self.expert}"


def _names(path: Path, role: str) -> tuple[str, str, str]:
    """(dataset, modality, expert) from the cache layout (docs/design.md §3.2), else from its metadata:
    ``{dataset}/embeddings/{modality}/{expert}.parquet`` or ``{dataset}/teachers/{modality}.parquet``."""
    meta = read_meta(path)
    stem = path.name.removesuffix(".parquet")
    if role == "teacher" and path.parent.name == "teachers":
        return path.parent.parent.name, stem, f"teacher ({meta.expert})"
    if path.parent.parent.name == "embeddings":
        return path.parent.parent.parent.name, path.parent.name, stem
    expert = meta.expert if role == "expert" else f"teacher ({meta.expert})"
    return meta.dataset or "?", meta.modality or "?", expert


def cache_status(path: str | Path, role: str = "expert") -> StatusRow:
    """Count one cache's rows by status, and its failure reasons."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: cache not found")
    dataset, modality, expert = _names(path, role)
    table = pq.read_table(path, columns=["status", "reason"])
    status = table.column("status").to_pylist()
    unknown = sorted(set(status) - set(STATUSES))
    if unknown:
        raise CacheError(f"{path}: column 'status' has unknown value(s) {unknown}")
    reasons = table.column("reason").to_pylist()
    reasons = [r for s, r in zip(status, reasons, strict=True) if s == "failed"]
    counts = Counter(status)
    top = count_reasons(reasons).most_common(TOP_REASONS)
    return StatusRow(
        dataset=dataset,
        modality=modality,
        expert=expert,
        role=role,
        n=len(status),
        ok=counts["ok"],
        missing=counts["missing"],
        failed=counts["failed"],
        top_reasons="; ".join(f"{r} ({k})" for r, k in top),
    )


def status_table(caches: Sequence[str | Path], teachers: Sequence[str | Path] = ()) -> pd.DataFrame:
    """One row per cache, datasets in order of first appearance, experts before teachers."""
    rows = [cache_status(p, "expert") for p in caches]
    rows += [cache_status(p, "teacher") for p in teachers]
    frame = pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)
    order = {d: i for i, d in enumerate(dict.fromkeys(frame["dataset"]))}
    frame["_d"] = frame["dataset"].map(order)
    frame["_r"] = (frame["role"] == "teacher").astype(int)
    frame = frame.sort_values(["_d", "_r"], kind="stable").drop(columns=["_d", "_r"])
    return frame.reset_index(drop=True)


def to_markdown(frame: pd.DataFrame) -> str:
    """One Markdown table per dataset."""
    out = [
        "# Sample status per expert cache",
        "",
        "Rows: modality / expert (teachers: training-only distillation or the large branch). "
        "`failed` samples are treated as a missing expert downstream.",
        "",
    ]
    if frame.empty:
        return "\n".join([*out, "no caches", ""])
    for dataset, part in frame.groupby("dataset", sort=False):
        out += [
            f"## {dataset}",
            "",
            "| modality / expert | ok | missing | failed | top failure reasons |",
            "|---|---:|---:|---:|---|",
        ]
        for r in part.itertuples(index=False):
            reasons = str(r.top_reasons).replace("|", "\\|") or "–"
            out.append(
                f"| {r.modality} / {r.expert} | {r.ok} | {r.missing} | {r.failed} | {reasons} |"
            )
        out.append("")
    return "\n".join(out)


HTML_TITLE = "Sample status per expert cache"
HTML_LABELS = ["dataset", "modality / expert", "ok", "missing", "failed", "top failure reasons"]


def to_html(frame: pd.DataFrame) -> str:
    """The table as one HTML page: a block per dataset (the Snakemake report shows it inline)."""
    blocks = []
    for dataset, part in frame.groupby("dataset", sort=False):
        rows = [
            [
                Cell(str(dataset)),
                Cell(f"{r.modality} / {r.expert}"),
                *(Cell(str(v), numeric=True) for v in (r.ok, r.missing, r.failed)),
                Cell(str(r.top_reasons) or "–"),
            ]
            for r in part.itertuples(index=False)
        ]
        blocks.append(Block(rows=rows))
    notes = [
        "Teachers: training-only distillation or the large branch.",
        "A failed sample is treated as a missing expert downstream.",
    ]
    if frame.empty:
        notes.insert(0, "no caches")
    numeric = [False, False, True, True, True, False]
    return render_html_table(HTML_TITLE, "", HTML_LABELS, numeric, blocks, notes)


def write_status(
    caches: Sequence[str | Path],
    teachers: Sequence[str | Path],
    md: str | Path,
    csv: str | Path,
    html: str | Path | None = None,
) -> pd.DataFrame:
    """Write the Markdown, CSV and (optionally) HTML tables, each atomically."""
    frame = status_table(caches, teachers)
    write_text_atomic(csv, frame.to_csv(index=False))
    write_text_atomic(md, to_markdown(frame))
    if html is not None:
        write_text_atomic(html, to_html(frame))
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extractors.status", description=__doc__)
    parser.add_argument("--caches", nargs="*", default=[], help="expert caches")
    parser.add_argument("--teachers", nargs="*", default=[], help="teacher caches")
    parser.add_argument("--md", required=True, help="Markdown output")
    parser.add_argument("--csv", required=True, help="CSV output")
    parser.add_argument("--html", help="HTML output (the report's inline view)")
    args = parser.parse_args(argv)
    frame = write_status(args.caches, args.teachers, args.md, args.csv, args.html)
    failed = int(frame["failed"].sum()) if not frame.empty else 0
    print(f"{args.md}: {len(frame)} caches, {failed} failed samples in all")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
