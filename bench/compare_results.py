"""Compare two results folders: are every table, prediction, metric and cache identical?

``python bench/compare_results.py BEFORE/results/smoke AFTER/results/smoke``

Use it around a refactor: run the same config (e.g. ``config/smoke.yaml``) on the old and the
new code into two folders, then compare. Compared, by relative path:

* tables (``tables/*.md|csv|tex|html``): byte for byte;
* parquet files (predictions, metrics, masks, manifests, embedding caches): the same columns
  and values (Arrow equality; the file bytes may differ in writer metadata);
* JSON files (run summaries, per-seed metrics and configs, cache sidecars): the same content
  once the keys that record *when* or *how long* (``seconds``, ``created``, timings) and
  absolute paths of the two checkouts are left out;
* model checkpoints (``*.safetensors``): byte for byte.

Logs, benchmarks, figures (PNG/SVG/PDF embed dates and renderer details) and the config
slices are not compared. Prints one line per difference and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

SKIP_DIRS = {"logs", "benchmarks", "figures", ".medmix", "raw", "knowledge"}
# JSON keys whose values are wall-clock facts, not results
VOLATILE = re.compile(r"(seconds|_s$|time|created|date|duration|elapsed|host|pid|peak_)", re.I)


def _files(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not SKIP_DIRS.intersection(rel.parts[:-1]):
            out[rel.as_posix()] = p
    return out


def _scrub(obj: Any, roots: tuple[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: _scrub(v, roots) for k, v in obj.items() if not VOLATILE.search(str(k))}
    if isinstance(obj, list):
        return [_scrub(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(r, "<root>")
        return obj
    return obj


def compare_file(rel: str, a: Path, b: Path, roots: tuple[str, str]) -> str | None:
    """Why the two files differ, or None."""
    suffix = a.suffix
    if suffix == ".parquet":
        ta, tb = pq.read_table(a), pq.read_table(b)
        if ta.schema.names != tb.schema.names:
            return f"columns {ta.schema.names} vs {tb.schema.names}"
        if not ta.equals(tb):
            bad = [c for c in ta.schema.names if not ta.column(c).equals(tb.column(c))]
            return f"values differ in columns {bad[:6]}"
        return None
    if suffix == ".json":
        ja = _scrub(json.loads(a.read_text()), roots)
        jb = _scrub(json.loads(b.read_text()), roots)
        return None if ja == jb else "JSON content differs"
    if a.read_bytes() != b.read_bytes():
        return "bytes differ"
    return None


COMPARED = {".md", ".csv", ".tex", ".html", ".parquet", ".json", ".safetensors", ".tsv"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    fa, fb = _files(args.before), _files(args.after)
    roots = (str(args.before.resolve().parent.parent), str(args.after.resolve().parent.parent))
    problems = []
    for rel in sorted(set(fa) | set(fb)):
        if Path(rel).suffix not in COMPARED:
            continue
        if rel not in fb:
            problems.append(f"{rel}: only in {args.before}")
        elif rel not in fa:
            problems.append(f"{rel}: only in {args.after}")
        else:
            why = compare_file(rel, fa[rel], fb[rel], roots)
            if why:
                problems.append(f"{rel}: {why}")
    n = sum(1 for r in set(fa) & set(fb) if Path(r).suffix in COMPARED)
    for line in problems:
        print(line)
    print(f"{n} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
