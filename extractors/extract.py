"""Run one expert over one modality of a manifest into a sharded, resumable cache.

The work itself (DataLoader workers, mixed precision, shards written as they complete) is
:func:`extractors.batching.run_shards`."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cohorts.manifest import (
    PATH_KINDS,
    ManifestError,
    ManifestMeta,
    read_manifest,
    validate_manifest,
)
from extractors.base import Expert, SampleError
from extractors.batching import (
    embed_safe,
    expert_device,
    has_info,
    is_missing,
    load_one,
    precision_of,
    reason_of,
    run_shards,
    summarise_info,
)
from extractors.cache import CacheMeta, ShardedCacheWriter, read_cache
from extractors.cache_lock import CacheLock
from extractors.status import count_reasons
from medmix.config import ConfigError
from medmix.extract_shards import part_range
from medmix.progress import progress as progress_bar

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("medmix.extract")


class TooManyFailures(RuntimeError):
    """More than ``max_failed_fraction`` of the present samples failed. The cache is not left
    at its path (it would look complete to anything run later, outside Snakemake too): it is
    moved to ``rejected`` (``{expert}.rejected.parquet``) for inspection."""

    def __init__(self, message: str, summary: ExtractSummary, rejected: Path) -> None:
        super().__init__(message)
        self.summary = summary
        self.rejected = rejected


def rejected_path(cache_path: str | Path) -> Path:
    """Where a cache that failed ``max_failed_fraction`` is kept: beside it, under a name no
    expert cache can have (expert names have no dot)."""
    p = Path(cache_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".rejected.parquet")


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
    timings: dict[str, float] = field(
        default_factory=dict
    )  # this run: model / data wait / write (s)


# Kept for callers of the old private helpers; the pipeline lives in extractors.batching.
_reason = reason_of
_load_one = load_one
_embed_safe = embed_safe


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
    validate: bool = True,
    fit_manifest: str | Path | None = None,
    force: bool = False,
    part: tuple[int, int] | None = None,
) -> ExtractSummary:
    """Extract ``expert`` over ``modality`` of the manifest into ``out_path``.

    Every manifest row gets a cache row: ``missing`` where the modality is null, ``failed``
    with a reason where reading or embedding failed, ``ok`` otherwise. Resumes from finished
    shards. Raises TooManyFailures when more than ``max_failed_fraction`` of the present
    samples failed; the cache is then moved to :func:`rejected_path`, so nothing at
    ``out_path`` looks like a finished cache.

    ``fit_manifest``: experts that learn from data (``requires_fit``: TF-IDF+SVD, a learnt
    variable list) fit on THAT manifest's training split instead of this one's — an external
    validation cohort is embedded in its source cohort's space (the cache's metadata records
    ``fit_source``).

    One extraction at a time per cache: a second one into the same ``out_path`` stops at once
    with ``CacheLockedError`` (:mod:`extractors.cache_lock`). Shards of an earlier run are
    resumed only under the same plan and after validation; ``force=True`` discards them all
    and starts clean.

    ``part=(i, n)``: only part ``i`` of ``n`` (1-based) of the samples, as one job of a
    sharded extraction (:mod:`medmix.extract_shards`): ``out_path`` is then a part file for
    :func:`extractors.shards.gather`, whose metadata says which rows it holds (``extra.part``),
    and ``max_failed_fraction`` is left to the gather, which judges the whole cache. The fit
    of a ``requires_fit`` expert is the unsharded one in every part (each part fits on the
    whole training split), so the parts agree.
    """
    df, mmeta = read_manifest(manifest_path)
    if len(df) == 0:
        raise ManifestError(f"{manifest_path}: no samples to extract (the manifest has no rows)")
    if validate:  # fatal manifest problems stop the job before any model is loaded
        validate_manifest(df, mmeta, path=manifest_path, root=root)
    if modality not in mmeta.modalities:
        raise ManifestError(
            f"{manifest_path}: no modality {modality!r}; has {list(mmeta.modalities)}"
        )
    kind = mmeta.modalities[modality]
    if expert.kind != kind:
        raise ConfigError(
            f"expert {expert.name!r} reads {expert.kind!r} inputs but modality {modality!r} is {kind!r}"
        )
    data_root = Path(root if root is not None else mmeta.root)
    if kind in PATH_KINDS and not data_root.exists():
        raise ManifestError(f"{manifest_path}: dataset root {data_root} does not exist")

    lock = CacheLock(out_path).acquire()  # before fitting or loading a model: fail fast
    try:
        return _extract_locked(
            manifest_path, df, mmeta, modality, expert, out_path, lock,
            shard_size=shard_size, max_failed_fraction=max_failed_fraction, dtype=dtype,
            data_root=data_root, progress=progress, fit_manifest=fit_manifest, force=force,
            part=part,
        )  # fmt: skip
    finally:
        lock.release()


def _extract_locked(
    manifest_path: str | Path,
    df: pd.DataFrame,
    mmeta: ManifestMeta,
    modality: str,
    expert: Expert,
    out_path: str | Path,
    lock: CacheLock,
    *,
    shard_size: int,
    max_failed_fraction: float,
    dtype: str,
    data_root: Path,
    progress: bool,
    fit_manifest: str | Path | None,
    force: bool,
    part: tuple[int, int] | None = None,
) -> ExtractSummary:
    kind = mmeta.modalities[modality]
    ids = df["sample_id"].astype(str).tolist()
    values = df[modality].tolist()
    splits = df["split"].astype(str).tolist()

    fit_source, fit_hash = None, None
    if expert.requires_fit:
        fit_values, fit_splits, fit_root = values, splits, data_root
        if fit_manifest is not None:
            fdf, fmeta = read_manifest(fit_manifest)
            if modality not in fmeta.modalities or fmeta.modalities[modality] != kind:
                raise ManifestError(
                    f"{fit_manifest}: fit manifest has no {kind} modality {modality!r}"
                )
            fit_values, fit_splits = fdf[modality].tolist(), fdf["split"].astype(str).tolist()
            fit_root, fit_source = Path(fmeta.root), fmeta.dataset
        train_vals = [
            v
            for v, s in zip(fit_values, fit_splits, strict=True)
            if s == "train" and v is not None and v == v
        ]
        loaded = [
            x for x, err in (_load_one(expert, v, fit_root) for v in train_vals) if err is None
        ]
        if not loaded:
            raise SampleError(
                f"expert {expert.name}: no loadable training samples in {modality!r} to fit on"
                + (f" (fit manifest {fit_manifest})" if fit_manifest is not None else "")
            )
        expert.fit(loaded)
        # what the expert learnt from shapes every shard: part of the resume fingerprint
        fit_hash = samples_hash([str(i) for i in range(len(train_vals))], train_vals, fit_root)

    meta = expert.cache_meta(dataset=mmeta.dataset, modality=modality, dtype=dtype)
    if fit_source is not None:
        meta.extra["fit_source"] = fit_source
    plan = {
        "samples": samples_hash(ids, values, data_root),
        "shard_size": shard_size,
        "extra_column": has_info(expert),
        "fit": fit_hash,
        "fit_source": fit_source,
    }
    bounds = shard_bounds(len(ids), shard_size)
    label = f"{mmeta.dataset}/{modality}/{expert.name}"
    if part is not None:
        meta.extra["part"] = part_info(bounds, part, plan, len(ids), shard_size)
        lo, hi = meta.extra["part"]["rows"]
        label += f" part {part[0]}/{part[1]} (rows {lo}-{hi})"
        kept = bounds[slice(*meta.extra["part"]["shards"])]
        bounds = [(j, lo, hi) for j, (_, lo, hi) in enumerate(kept)]  # local shard indices
        plan["part"] = list(part)
    writer = ShardedCacheWriter(out_path, meta, plan, lock=lock, fresh=force)
    n_shards = len(bounds)
    reused = {i for i, lo, hi in bounds if writer.done(i, ids[lo:hi])}
    resumed = len(reused)
    pending = [b for b in bounds if b[0] not in reused]
    done_samples = sum(hi - lo for i, lo, hi in bounds if i in reused)
    device_requested = str(getattr(expert, "device", "cpu"))
    _resolve_auto_device(expert)
    bar = progress_bar(
        total=sum(hi - lo for _, lo, hi in bounds),
        initial=done_samples,
        desc=label,
        unit="sample",
        dynamic_ncols=True,
        enabled=progress,
    )
    stats = run_shards(expert, ids, values, data_root, pending, writer.write_shard, progress=bar)
    bar.close()
    if hasattr(expert, "item_info"):
        writer.meta.extra["item_info"] = summarise_info(_shard_extras(writer, n_shards))
    writer.meta.manifest_sha256 = manifest_fingerprint(ids, splits, values)
    _record_run_device(writer.meta, expert, device_requested)
    log.info(
        "%s: %d samples in %d batches, %d workers; model %.1fs, waiting for data %.1fs, writing %.1fs",
        label,
        stats.samples,
        stats.batches,
        stats.workers,
        stats.forward_s,
        stats.wait_s,
        stats.write_s,
    )
    path = writer.finalize(n_shards)
    summary = summarise_cache(path, n_shards, resumed)
    summary.timings = {
        "forward_s": stats.forward_s,
        "wait_s": stats.wait_s,
        "write_s": stats.write_s,
        "workers": float(stats.workers),
    }
    log.info(
        "%s: %d ok, %d missing, %d failed (%d/%d shards resumed)",
        label,
        summary.ok,
        summary.missing,
        summary.failed,
        resumed,
        n_shards,
    )
    if part is None:  # a part is judged with the whole cache, by the gather
        judge_failures(summary, label, max_failed_fraction)
    return summary


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(index, lo, hi) of the resume shards of ``n`` manifest rows (at least one shard)."""
    n_shards = max(1, (n + shard_size - 1) // shard_size)
    return [(i, i * shard_size, min(n, (i + 1) * shard_size)) for i in range(n_shards)]


def part_info(
    bounds: list[tuple[int, int, int]], part: tuple[int, int], plan: dict, n: int, shard_size: int
) -> dict:
    """What a part file records of itself (``extra.part``): which part, its resume shards
    and rows, and the plan every part of one cache shares (checked by the gather)."""
    shards = part_range(len(bounds), *part)
    lo, hi = min(n, shards.start * shard_size), min(n, shards.stop * shard_size)
    return {
        "index": part[0],
        "of": part[1],
        "shards": [shards.start, shards.stop],
        "rows": [lo, hi],
        "plan": dict(plan),
    }


def summarise_cache(path: Path, shards_total: int, shards_resumed: int) -> ExtractSummary:
    """The counts of a finished cache (or part): ok / missing / failed and failure reasons."""
    data = read_cache(path)
    failed_mask = data.status == "failed"
    return ExtractSummary(
        path=path,
        n=len(data.sample_ids),
        ok=int(data.ok.sum()),
        missing=int((data.status == "missing").sum()),
        failed=int(failed_mask.sum()),
        shards_total=shards_total,
        shards_resumed=shards_resumed,
        failure_reasons=dict(count_reasons(data.reason[failed_mask]).most_common()),
    )


def judge_failures(summary: ExtractSummary, label: str, max_failed_fraction: float) -> None:
    """Raise :class:`TooManyFailures` (the cache moved to :func:`rejected_path`) when more than
    ``max_failed_fraction`` of the present samples failed; else drop a stale rejected file."""
    path = summary.path
    present = summary.ok + summary.failed
    rejected = rejected_path(path)
    reasons = summary.failure_reasons
    if present and summary.failed / present > max_failed_fraction:
        os.replace(path, rejected)
        summary.path = rejected
        raise TooManyFailures(
            f"{label}: {summary.failed} of {present} present samples failed "
            f"(> max_failed_fraction={max_failed_fraction}); reasons: {reasons}. No cache was "
            f"written to {path}; the rows with their reasons are in {rejected}",
            summary,
            rejected,
        )
    rejected.unlink(missing_ok=True)  # a rejected attempt's rows are stale now


def samples_hash(ids: list[str], values: list, root: Path) -> str:
    """Fingerprint of the work: every sample id with its value (a path or a note's text) and
    the data root. Shards of a crashed run are resumed only under the same fingerprint, so an
    edited note or a re-pointed file with the same ids never mixes old embeddings into the
    new cache."""
    h = hashlib.sha256(str(root).encode("utf-8", "surrogatepass") + b"\x00")
    for sid, value in zip(ids, values, strict=True):
        for part in (sid, None if is_missing(value) else str(value)):
            data = b"\xff" if part is None else part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def manifest_fingerprint(ids: list[str], splits: list[str], values: list) -> str:
    """sha256 of the manifest rows a cache covers: each row's sample id, split and value of
    the modality (a path relative to the dataset root, or a note's text), in manifest order.
    Unlike :func:`samples_hash` it leaves out the data root, so the same manifest gives the
    same fingerprint wherever the dataset lives."""
    h = hashlib.sha256(b"medmix-manifest-rows-v1\x00")
    for sid, split, value in zip(ids, splits, values, strict=True):
        for part in (sid, split, None if is_missing(value) else str(value)):
            data = b"\xff" if part is None else part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _record_run_device(meta: CacheMeta, expert: Expert, requested: str) -> None:
    """The device and compute precision this run used, not just those configured: the
    resolved device (``auto`` -> cuda or cpu; ``cuda`` -> ``cuda:0`` with the GPU's name) and
    the autocast dtype of the forward passes (``fp32`` off the GPU or with ``precision:
    fp32``). A resumed run records its own device."""
    from extractors.experts.fm_common import autocast_dtype

    meta.device_requested = requested
    meta.precision_requested = precision_of(expert)
    device = expert_device(expert)
    meta.device, meta.device_name = device, ""
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.device(device).index
                index = torch.cuda.current_device() if index is None else index
                meta.device = f"cuda:{index}"
                meta.device_name = torch.cuda.get_device_name(index)
        except Exception:  # noqa: BLE001 - the name is a nicety; the device string stands
            pass
    try:
        dtype = autocast_dtype(device, meta.precision_requested)
    except ValueError:
        dtype = None
    names = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}
    meta.precision = "fp32" if dtype is None else names.get(str(dtype), str(dtype))


def _resolve_auto_device(expert: Expert) -> None:
    """``device: auto`` -> cuda when visible, else cpu (also for a wrapped inner expert)."""
    from extractors.experts.fm_common import resolve_device

    for e in (expert, getattr(expert, "inner", None)):
        if e is not None and getattr(e, "device", None) == "auto":
            e.device = resolve_device("auto")


def _shard_extras(writer: ShardedCacheWriter, n_shards: int) -> list[str | None]:
    import pyarrow.parquet as pq

    out: list[str | None] = []
    for i in range(n_shards):
        table = pq.read_table(writer.shard_path(i))
        if "extra" in table.column_names:
            out += table.column("extra").to_pylist()
    return out
