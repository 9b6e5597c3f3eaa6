"""Gather the parts of a sharded extraction into one cache, identical to an unsharded run's.

Each shard job (``python -m extractors extract --shard I/N``) writes a part file: the cache's
rows of a contiguous block of its resume shards (:mod:`medmix.extract_shards`), with the
cache metadata plus ``extra.part`` (which part, its rows, and the plan all parts share). The
gather checks the parts (all N present, each once, one plan, written from the manifest as it
is now, each holding exactly its rows) and assembles the cache from the same resume-shard
tables, in the same order, as :meth:`~extractors.cache.ShardedCacheWriter.finalize` of an
unsharded run: the file is byte-identical to that run's (same rows, embeddings, status and
reasons, Parquet schema and metadata).

Metadata that describes the run rather than the work is merged: ``created_at`` is the
earliest part's (the time the extraction began; ``SOURCE_DATE_EPOCH`` pins it as usual);
``medmix_version`` / ``medmix_commit`` are the gathering code's, as an unsharded cache
carries those of the code that assembled it (a checkout edited while shard jobs ran does not
invalidate their parts);
``device``, ``device_name`` and ``precision`` are the parts' common value, or, when shard jobs
ran on different hardware, their distinct non-empty values joined with ``"; "`` in part order;
``item_info`` is recomputed over the whole cache. ``max_failed_fraction`` is judged here, on
the whole cache, exactly as an unsharded extraction judges it (a part is never judged alone).
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cohorts.manifest import ManifestError, read_manifest
from extractors.batching import summarise_info
from extractors.cache import CacheMeta, read_meta, write_assembled
from extractors.cache_checks import CacheError
from extractors.cache_lock import CacheLock
from extractors.extract import (
    ExtractSummary,
    judge_failures,
    manifest_fingerprint,
    part_info,
    shard_bounds,
    summarise_cache,
)
from medmix.extract_shards import part_path

log = logging.getLogger("medmix.extract")

# Metadata of the run, not of the work: may differ between parts (merged, see the docstring).
RUN_FIELDS = ("created_at", "device", "device_name", "precision", "medmix_version", "medmix_commit")
# extra keys that are per part (recomputed or dropped by the gather)
PART_EXTRA = ("part", "item_info")


@dataclass
class Part:
    path: Path
    meta: CacheMeta
    info: dict  # extra.part: index, of, shards, rows, plan


def read_part(path: str | Path) -> Part:
    """A part file's metadata; a missing or foreign file is a one-line :class:`CacheError`."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: part not found (its shard job has not finished: rerun it)")
    meta = read_meta(path)
    info = meta.extra.get("part")
    if not isinstance(info, dict) or not {"index", "of", "shards", "rows", "plan"} <= set(info):
        raise CacheError(f"{path}: not a part of a sharded extraction (no extra.part metadata)")
    return Part(path, meta, info)


def _work_meta(meta: CacheMeta) -> dict:
    """The metadata that must agree between parts (everything but the run's own)."""
    d = asdict(meta)
    for k in RUN_FIELDS:
        d.pop(k)
    d["extra"] = {k: v for k, v in meta.extra.items() if k not in PART_EXTRA}
    return d


def check_parts(
    parts: list[Part], out_path: str | Path, dataset: str, modality: str, expert: str
) -> list[Part]:
    """The parts in order, after checking that they are exactly parts 1..N of one cache of
    ``dataset``/``modality``/``expert``, written under one plan. Each problem is a one-line
    :class:`CacheError` naming the part."""
    if not parts:
        raise CacheError(f"{out_path}: no parts to gather")
    for p in parts:
        got = (p.meta.dataset, p.meta.modality, p.meta.expert)
        if got != (dataset, modality, expert):
            raise CacheError(
                f"{p.path}: a part of {'/'.join(got)}, not of {dataset}/{modality}/{expert}"
            )
    first = parts[0]
    n = first.info["of"]
    by_index: dict[int, Part] = {}
    for p in parts:
        if p.info["of"] != n:
            raise CacheError(
                f"{p.path}: part {p.info['index']} of {p.info['of']}, but {first.path} is a "
                f"part of {n}: parts of two different splits"
            )
        if p.info["index"] in by_index:
            raise CacheError(
                f"{p.path}: part {p.info['index']} of {n} given twice "
                f"(also {by_index[p.info['index']].path})"
            )
        by_index[p.info["index"]] = p
    missing = [i for i in range(1, n + 1) if i not in by_index]
    if missing:
        where = part_path(out_path, missing[0], n)
        raise CacheError(
            f"{where}: part {missing[0]} of {n} is missing"
            + (f" (missing parts: {missing})" if len(missing) > 1 else "")
        )
    ordered = [by_index[i] for i in range(1, n + 1)]
    want, want_meta = first.info["plan"], _work_meta(first.meta)
    for p in ordered:
        if p.info["plan"] != want or _work_meta(p.meta) != want_meta:
            have = {**p.info["plan"], **_work_meta(p.meta)}
            ref = {**want, **want_meta}
            keys = sorted(k for k in set(have) | set(ref) if have.get(k) != ref.get(k))
            raise CacheError(
                f"{p.path}: written under another plan than {first.path} ({', '.join(keys)} "
                "differ): rerun the shard jobs of this cache"
            )
    return ordered


def _merged(values: list[str]) -> str:
    """The one value, or the distinct non-empty ones in order (a CPU part has no GPU name)."""
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else "; ".join(v for v in distinct if v)


def _gathered_meta(parts: list[Part], tables: list[pa.Table]) -> CacheMeta:
    meta = CacheMeta(**asdict(parts[0].meta))
    meta.extra = {k: v for k, v in meta.extra.items() if k != "part"}
    meta.created_at = min(p.meta.created_at for p in parts)
    meta.medmix_version = meta.medmix_commit = ""  # stamped with the gathering code's
    for key in ("device", "device_name", "precision"):
        setattr(meta, key, _merged([getattr(p.meta, key) for p in parts]))
    if "item_info" in meta.extra:
        extras = [e for t in tables if "extra" in t.column_names for e in t["extra"].to_pylist()]
        meta.extra["item_info"] = summarise_info(extras)
    return meta


def _as_shard_file(table: pa.Table) -> pa.Table:
    """One resume shard's rows as the unsharded run reads its shard file back (written with
    the same defaults, read back the same way): same chunking, hence the same output bytes."""
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(None), buf)
    return pq.read_table(pa.BufferReader(buf.getvalue()))


def _shard_tables(part: Part, ids: list[str], bounds: list[tuple[int, int, int]]) -> list[pa.Table]:
    """The part's rows, split back into its resume shards (checked: exactly its sample ids)."""
    lo, hi = part.info["rows"]
    if hi == lo:
        return []
    try:
        table = pq.read_table(part.path)
    except (pa.ArrowException, OSError) as exc:
        raise CacheError(f"{part.path}: not a readable Parquet file ({exc})") from None
    if table.column("sample_id").to_pylist() != ids[lo:hi]:
        raise CacheError(
            f"{part.path}: its sample ids are not manifest rows {lo}-{hi}: rerun its shard job"
        )
    s0, s1 = part.info["shards"]
    return [_as_shard_file(table.slice(a - lo, b - a)) for _, a, b in bounds[s0:s1]]


def gather(
    manifest_path: str | Path,
    part_files: list[str | Path],
    out_path: str | Path,
    *,
    dataset: str,
    modality: str,
    expert: str,
    max_failed_fraction: float = 0.5,
) -> ExtractSummary:
    """Assemble the cache at ``out_path`` from its parts (see the module docstring); raises
    :class:`~extractors.extract.TooManyFailures` like :func:`~extractors.extract.extract`."""
    parts = check_parts([read_part(f) for f in part_files], out_path, dataset, modality, expert)
    df, mmeta = read_manifest(manifest_path)
    if modality not in mmeta.modalities:
        raise ManifestError(f"{manifest_path}: no modality {modality!r}")
    ids = df["sample_id"].astype(str).tolist()
    fingerprint = manifest_fingerprint(ids, df["split"].astype(str).tolist(), df[modality].tolist())
    plan = parts[0].info["plan"]
    bounds = shard_bounds(len(ids), int(plan["shard_size"]))
    tables: list[pa.Table] = []
    schema: pa.Schema | None = None
    for p in parts:
        if p.meta.manifest_sha256 != fingerprint:
            raise CacheError(
                f"{p.path}: extracted from another version of {manifest_path}: rerun the shard "
                "jobs of this cache"
            )
        want = part_info(
            bounds, (p.info["index"], p.info["of"]), plan, len(ids), plan["shard_size"]
        )
        if (p.info["shards"], p.info["rows"]) != (want["shards"], want["rows"]):
            raise CacheError(
                f"{p.path}: holds rows {p.info['rows']}, part {p.info['index']} of "
                f"{p.info['of']} should hold {want['rows']}"
            )
        for t in _shard_tables(p, ids, bounds):
            schema = schema or t.schema
            if not t.schema.equals(schema):
                raise CacheError(f"{p.path}: its columns differ from the other parts'")
            tables.append(t)
    meta = _gathered_meta(parts, tables)
    lock = CacheLock(out_path).acquire()
    try:
        path = write_assembled(Path(out_path), tables, meta)
    finally:
        lock.release()
    summary = summarise_cache(path, len(bounds), 0)
    label = f"{dataset}/{modality}/{expert}"
    log.info(
        "%s: gathered %d parts: %d ok, %d missing, %d failed",
        label,
        len(parts),
        summary.ok,
        summary.missing,
        summary.failed,
    )
    judge_failures(summary, label, max_failed_fraction)
    return summary
