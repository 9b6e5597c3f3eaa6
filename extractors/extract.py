"""Run one expert over one modality of a manifest into a sharded, resumable cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cohorts.manifest import PATH_KINDS, ManifestError, read_manifest
from extractors.base import Expert, SampleError
from extractors.cache import CacheRecords, ShardedCacheWriter, config_hash

log = logging.getLogger("medmix.extract")


class TooManyFailures(RuntimeError):
    pass


@dataclass
class ExtractSummary:
    path: Path
    n: int
    ok: int
    missing: int
    failed: int
    shards_total: int
    shards_resumed: int
    failure_reasons: dict[str, int]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SampleError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:300]


def _load_one(expert: Expert, value: Any, root: Path) -> tuple[Any, str | None]:
    try:
        return expert.load(value, root), None
    except Exception as exc:  # a bad sample never crashes the job
        return None, _reason(exc)


def _embed_safe(expert: Expert, items: list[Any]) -> list[tuple[np.ndarray | None, str | None]]:
    """Embed a batch; if the batch fails, retry one by one to isolate the bad sample."""
    if not items:
        return []
    try:
        out = np.asarray(expert.embed(items), dtype=np.float32)
        if out.shape != (len(items), expert.dim):
            raise ValueError(f"embed returned shape {out.shape}, expected ({len(items)}, {expert.dim})")
        return [(row, None) for row in out]
    except Exception as exc:
        if len(items) == 1:
            return [(None, _reason(exc))]
        return [r for item in items for r in _embed_safe(expert, [item])]


def extract(
    manifest_path: str | Path,
    modality: str,
    expert: Expert,
    out_path: str | Path,
    shard_size: int = 256,
    max_failed_fraction: float = 0.5,
    root: str | Path | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> ExtractSummary:
    """Extract ``expert`` over ``modality`` of the manifest into ``out_path``.

    Every manifest row gets a cache row: ``missing`` where the modality is null, ``failed``
    with a reason where reading or embedding failed, ``ok`` otherwise. Resumes from finished
    shards. Raises TooManyFailures (after writing the cache) when more than
    ``max_failed_fraction`` of the present samples failed.
    """
    df, mmeta = read_manifest(manifest_path)
    if modality not in mmeta.modalities:
        raise ManifestError(f"{manifest_path}: no modality {modality!r}; has {list(mmeta.modalities)}")
    kind = mmeta.modalities[modality]
    if expert.kind != kind:
        raise ValueError(f"expert {expert.name!r} reads {expert.kind!r} inputs but modality {modality!r} is {kind!r}")
    data_root = Path(root if root is not None else mmeta.root)
    if kind in PATH_KINDS and not data_root.exists():
        raise ManifestError(f"{manifest_path}: dataset root {data_root} does not exist")

    ids = df["sample_id"].astype(str).tolist()
    values = df[modality].tolist()
    splits = df["split"].astype(str).tolist()

    if expert.requires_fit:
        train_vals = [v for v, s in zip(values, splits, strict=True) if s == "train" and v is not None and v == v]
        loaded = [x for x, err in (_load_one(expert, v, data_root) for v in train_vals) if err is None]
        if not loaded:
            raise SampleError(f"expert {expert.name}: no loadable training samples in {modality!r} to fit on")
        expert.fit(loaded)

    meta = expert.cache_meta(dataset=mmeta.dataset, modality=modality, dtype=dtype)
    plan = {"samples": config_hash({"ids": ids, "values_present": [v is not None for v in values]}), "shard_size": shard_size}
    writer = ShardedCacheWriter(out_path, meta, plan)
    n_shards = max(1, (len(ids) + shard_size - 1) // shard_size)
    resumed = sum(writer.done(i) for i in range(n_shards))

    bar = tqdm(total=len(ids), desc=f"{mmeta.dataset}/{modality}/{expert.name}", unit="sample", disable=not progress)
    for s in range(n_shards):
        lo, hi = s * shard_size, min(len(ids), (s + 1) * shard_size)
        if writer.done(s):
            bar.update(hi - lo)
            continue
        status: list[str] = []
        reason: list[str | None] = []
        emb = np.zeros((hi - lo, expert.dim), dtype=np.float32)
        for b0 in range(lo, hi, expert.batch_size):
            b1 = min(hi, b0 + expert.batch_size)
            slots, items = [], []
            for i in range(b0, b1):
                v = values[i]
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    status.append("missing")
                    reason.append("modality not recorded")
                    continue
                item, err = _load_one(expert, v, data_root)
                if err is not None:
                    status.append("failed")
                    reason.append(err)
                    continue
                status.append("ok")
                reason.append(None)
                slots.append(i - lo)
                items.append(item)
            for slot, (vec, err) in zip(slots, _embed_safe(expert, items), strict=True):
                if err is None and vec is not None and not np.isfinite(vec).all():
                    err = "non-finite embedding"
                if err is not None:
                    status[slot], reason[slot] = "failed", err
                else:
                    emb[slot] = vec
            bar.update(b1 - b0)
        writer.write_shard(s, CacheRecords(ids[lo:hi], emb, status, reason))
    bar.close()
    path = writer.finalize(n_shards)

    from extractors.cache import read_cache  # local: only for the summary

    data = read_cache(path)
    failed_mask = data.status == "failed"
    reasons: dict[str, int] = {}
    for r in data.reason[failed_mask]:
        key = str(r).split(":")[0][:80]
        reasons[key] = reasons.get(key, 0) + 1
    summary = ExtractSummary(
        path=path,
        n=len(ids),
        ok=int(data.ok.sum()),
        missing=int((data.status == "missing").sum()),
        failed=int(failed_mask.sum()),
        shards_total=n_shards,
        shards_resumed=resumed,
        failure_reasons=reasons,
    )
    present = summary.ok + summary.failed
    log.info(
        "%s/%s/%s: %d ok, %d missing, %d failed (%d/%d shards resumed)",
        mmeta.dataset, modality, expert.name, summary.ok, summary.missing, summary.failed, resumed, n_shards,
    )
    if present and summary.failed / present > max_failed_fraction:
        raise TooManyFailures(
            f"{mmeta.dataset}/{modality}/{expert.name}: {summary.failed} of {present} present samples failed "
            f"(> max_failed_fraction={max_failed_fraction}); reasons: {reasons}"
        )
    return summary
