"""The per-adapter summary: samples, modality availability, label prevalence per split, drops.

Written next to the manifest as ``summary.csv`` (long format: ``section, item, split, count,
fraction``) and ``summary.md`` (one small table per section), and shown in the report.
Sections: ``samples``, ``availability``, ``label``, ``redecoded`` (rows per input file whose
text was not valid UTF-8 and was decoded as cp1252, kept; from ``meta.extra["redecoded"]``)
and ``dropped``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from cohorts.manifest import ManifestMeta, write_manifest
from medmix.io import write_text_atomic

SPLIT_ORDER = ("train", "val", "test", "external")


def redecoded_remarks(redecoded: dict[str, int]) -> list[str]:
    """One remark per input file with rows whose text was not valid UTF-8."""
    return [
        f"{name}: {n} row(s) with text that is not valid UTF-8, decoded as cp1252 (rows kept)"
        for name, n in sorted(redecoded.items())
        if n
    ]


class Drops:
    """Samples an adapter left out, counted per reason (ids kept for the first few)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, ids: list | pd.Series | pd.Index) -> None:
        ids = [str(i) for i in ids]
        if not ids:
            return
        self.counts[reason] += len(ids)
        self.examples.setdefault(reason, []).extend(
            ids[: max(0, 5 - len(self.examples.get(reason, [])))]
        )

    def total(self) -> int:
        return sum(self.counts.values())


def summarize(df: pd.DataFrame, meta: ManifestMeta, drops: Drops | None = None) -> pd.DataFrame:
    """The summary as a long table (see the module docstring)."""
    splits = [s for s in SPLIT_ORDER if s in set(df["split"])]
    groups = [(s, df[df["split"] == s]) for s in splits] + [("all", df)]
    rows: list[dict] = []
    for split, part in groups:
        n = len(part)
        rows.append(_row("samples", "samples", split, n, 1.0 if n else float("nan")))
        rows.append(_row("samples", "patients", split, part["patient_id"].nunique(), float("nan")))
        for mod in meta.modalities:
            k = int(part[mod].notna().sum())
            rows.append(_row("availability", mod, split, k, k / n if n else float("nan")))
        n_all = int(part[list(meta.modalities)].notna().all(axis=1).sum())
        rows.append(
            _row("availability", "all modalities", split, n_all, n_all / n if n else float("nan"))
        )
        for name in meta.labels:
            col = pd.to_numeric(part[f"label_{name}"], errors="coerce")
            known = int(col.notna().sum())
            if meta.task_type == "multiclass":
                for cls, k in col.value_counts().sort_index().items():
                    rows.append(
                        _row(
                            "label",
                            f"{name}={int(cls)}",
                            split,
                            int(k),
                            k / known if known else float("nan"),
                        )
                    )
            else:
                pos = int((col == 1).sum())
                rows.append(_row("label", name, split, pos, pos / known if known else float("nan")))
    for name, k in sorted((meta.extra.get("redecoded") or {}).items()):
        if k:
            rows.append(_row("redecoded", name, "all", k, float("nan")))
    for reason, k in sorted((drops.counts if drops else {}).items(), key=lambda kv: -kv[1]):
        rows.append(_row("dropped", reason, "all", k, float("nan")))
    return pd.DataFrame(rows, columns=["section", "item", "split", "count", "fraction"])


def _row(section: str, item: str, split: str, count: int, fraction: float) -> dict:
    return {
        "section": section,
        "item": item,
        "split": split,
        "count": int(count),
        "fraction": fraction,
    }


def to_markdown(summary: pd.DataFrame, meta: ManifestMeta, drops: Drops | None = None) -> str:
    """One Markdown table per section: rows = items, columns = splits (``count (pct)``)."""
    out = [
        f"# {meta.dataset}: cohort summary",
        "",
        f"adapter `{meta.adapter}` v{meta.adapter_version}, "
        f"task `{meta.task_type}`, dataset root `{meta.root}`",
        "",
    ]
    titles = {
        "samples": "Samples and patients",
        "availability": "Modality availability",
        "label": "Label prevalence (positives, % of samples with a known label)",
        "redecoded": "Rows with text not valid UTF-8 (decoded as cp1252, kept), per input file",
    }
    for section, title in titles.items():
        part = summary[summary["section"] == section]
        if part.empty:
            continue
        splits = list(dict.fromkeys(part["split"]))
        out += [
            f"## {title}",
            "",
            "| | " + " | ".join(splits) + " |",
            "|---" * (len(splits) + 1) + "|",
        ]
        for item in dict.fromkeys(part["item"]):
            cells = []
            for s in splits:
                r = part[(part["item"] == item) & (part["split"] == s)]
                if r.empty:
                    cells.append("")
                    continue
                c, f = int(r["count"].iloc[0]), float(r["fraction"].iloc[0])
                show_pct = section != "samples" and f == f
                cells.append(f"{c} ({100 * f:.1f} %)" if show_pct else str(c))
            out.append(f"| {item} | " + " | ".join(cells) + " |")
        out.append("")
    remarks = meta.extra.get("remarks") or []
    if remarks:
        out += ["## Remarks", "", *(f"- {r}" for r in remarks), ""]
    out += ["## Dropped samples", ""]
    if drops is None or not drops.counts:
        out += ["none", ""]
    else:
        out += ["| reason | count | first ids |", "|---|---|---|"]
        for reason, k in sorted(drops.counts.items(), key=lambda kv: -kv[1]):
            out.append(f"| {reason} | {k} | {', '.join(drops.examples.get(reason, []))} |")
        out.append("")
    return "\n".join(out)


def write_summary(
    df: pd.DataFrame, meta: ManifestMeta, out_dir: str | os.PathLike, drops: Drops | None = None
) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``out_dir`` (the manifest's folder)."""
    out_dir = Path(out_dir)
    summary = summarize(df, meta, drops)
    csv_path = write_text_atomic(out_dir / "summary.csv", summary.to_csv(index=False))
    md_path = write_text_atomic(out_dir / "summary.md", to_markdown(summary, meta, drops))
    return csv_path, md_path


def write_cohort(
    df: pd.DataFrame,
    meta: ManifestMeta,
    out_dir: str | os.PathLike,
    drops: Drops | None = None,
    log: logging.Logger | None = None,
) -> Path:
    """An adapter's outputs: ``manifest.parquet`` (validated) plus the summary beside it;
    ``log`` (the adapter's logger) says how many samples were written and dropped."""
    out_dir = Path(out_dir)
    path = write_manifest(df, out_dir / "manifest.parquet", meta)
    write_summary(df, meta, out_dir, drops)
    if log is not None:
        dropped = drops.total() if drops is not None else 0
        log.info("%s: %d samples written to %s (%d dropped)", meta.adapter, len(df), path, dropped)
    return path
