"""The embedding cache contract.

``results/{dataset}/embeddings/{modality}/{expert}.parquet``: one row per manifest sample with
``sample_id``, ``embedding`` (``fixed_size_list<float32|float16>[D]``, null unless ok),
``status`` (ok / missing / failed) and ``reason`` (null when ok). The schema metadata
(key ``medmix.cache``) records the expert, model id and revision, dim, pooling, a hash of the
preprocessing config, package versions and the creation time; the MedMIX version and git
commit that wrote it (``medmix_version``, ``medmix_commit``: empty outside a git checkout);
and, for caches written by :func:`extractors.extract.extract`, a fingerprint of the manifest
rows it covers (``manifest_sha256``) and the device and compute precision the forward passes
actually ran on (``device``, ``device_name``, ``precision``; next to the configured
``device_requested`` / ``precision_requested``). Caches written before these keys existed
read back with them empty. Experts that report per-sample facts (a note's chunk count, a
series' window count) add an optional ``extra`` column of JSON strings (null unless ok); caches
without it are read as before (``CacheData.extra`` is None).

Extraction writes shards into a hidden folder beside the target (``.{name}.shards/``), each
shard atomically. A crashed run resumes from the finished shards; the final file is assembled
from the shards in manifest order and renamed into place, so the result is identical whether
or not the run was interrupted.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medmix.io import atomic_path, write_text_atomic

META_KEY = b"medmix.cache"
STATUSES = ("ok", "missing", "failed")
_DTYPES = {"float32": (pa.float32(), np.float32), "float16": (pa.float16(), np.float16)}


class CacheError(ValueError):
    """A cache file that does not follow the contract."""


def config_hash(cfg: dict) -> str:
    """Stable short hash of a JSON-able preprocessing/config dict."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions(names: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def created_at_now() -> str:
    """ISO timestamp; ``SOURCE_DATE_EPOCH`` pins it for byte-identical reruns."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = float(epoch) if epoch else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class CacheMeta:
    expert: str
    model_id: str  # HF id, local dir, or ``offline:<name>``
    dim: int
    pooling: str
    preprocess_hash: str
    revision: str | None = None
    dtype: str = "float32"
    dataset: str = ""
    modality: str = ""
    packages: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    extra: dict = field(default_factory=dict)
    # provenance (empty in caches written before these keys existed)
    medmix_version: str = ""
    medmix_commit: str = ""  # git commit of the checkout (``-dirty`` when modified), or ""
    manifest_sha256: str = ""  # extract.manifest_fingerprint of the rows the cache covers
    device: str = ""  # where the forward passes ran (``cpu``, ``cuda:0``)
    device_name: str = ""  # the GPU's name on CUDA
    precision: str = ""  # the compute precision they ran in (``fp32``, ``bf16``, ``fp16``)
    device_requested: str = ""  # as configured (``auto``, ``cuda``, ...)
    precision_requested: str = ""


@dataclass
class CacheRecords:
    """Rows of a cache in memory. ``embeddings`` rows of non-ok samples are ignored (stored null)."""

    sample_ids: list[str]
    embeddings: np.ndarray  # (N, D)
    status: list[str]
    reason: list[str | None]
    # Optional per-sample JSON (e.g. a note's chunk count); written as an ``extra`` column only
    # when given, so caches without it are unchanged.
    extra: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.sample_ids)
        if not (self.embeddings.shape[0] == len(self.status) == len(self.reason) == n):
            raise CacheError(
                "cache records: sample_ids, embeddings, status and reason differ in length"
            )
        if self.extra is not None and len(self.extra) != n:
            raise CacheError("cache records: extra differs in length from sample_ids")
        bad = set(self.status) - set(STATUSES)
        if bad:
            raise CacheError(f"cache records: unknown status value(s) {sorted(bad)}")

    @classmethod
    def concat(cls, parts: Sequence[CacheRecords], dim: int) -> CacheRecords:
        if not parts:
            return cls([], np.zeros((0, dim), np.float32), [], [])
        extra = None
        if any(p.extra is not None for p in parts):
            extra = [e for p in parts for e in (p.extra or [None] * len(p.sample_ids))]
        return cls(
            [s for p in parts for s in p.sample_ids],
            np.concatenate([p.embeddings for p in parts], axis=0),
            [s for p in parts for s in p.status],
            [r for p in parts for r in p.reason],
            extra,
        )


@dataclass
class CacheData:
    """A cache read back: dense float32 embeddings (zeros where not ok) plus status."""

    sample_ids: np.ndarray
    embeddings: np.ndarray  # (N, D) float32, zero rows where status != ok
    status: np.ndarray
    reason: np.ndarray
    meta: CacheMeta
    extra: np.ndarray | None = None  # per-sample JSON strings, when the cache has them

    @property
    def ok(self) -> np.ndarray:
        return self.status == "ok"


def stamp_version(meta: CacheMeta) -> CacheMeta:
    """Fill ``medmix_version`` / ``medmix_commit`` with the running pipeline's (once)."""
    from medmix.version import git_commit, medmix_version

    if not meta.medmix_version:
        meta.medmix_version = medmix_version()
        meta.medmix_commit = git_commit() or ""
    return meta


def _table(records: CacheRecords, meta: CacheMeta) -> pa.Table:
    pa_type, np_type = _DTYPES[meta.dtype]
    emb = np.asarray(records.embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != meta.dim:
        raise CacheError(
            f"expert {meta.expert}: embeddings have shape {emb.shape}, expected (N, {meta.dim})"
        )
    ok = np.array([s == "ok" for s in records.status], dtype=bool)
    if ok.any() and not np.isfinite(emb[ok]).all():
        rows = np.where(ok & ~np.isfinite(emb).all(axis=1))[0][:5]
        ids = [records.sample_ids[i] for i in rows]
        raise CacheError(f"expert {meta.expert}: non-finite embedding for sample(s) {ids}")
    flat = pa.array(emb.astype(np_type).reshape(-1), type=pa_type)
    values = pa.FixedSizeListArray.from_arrays(flat, meta.dim)
    if not ok.all():
        values = pa.FixedSizeListArray.from_arrays(flat, meta.dim, mask=pa.array(~ok))
    columns = {
        "sample_id": pa.array(records.sample_ids, type=pa.string()),
        "embedding": values,
        "status": pa.array(records.status, type=pa.string()),
        "reason": pa.array(records.reason, type=pa.string()),
    }
    if records.extra is not None:
        columns["extra"] = pa.array(records.extra, type=pa.string())
    return pa.table(columns).replace_schema_metadata(
        {META_KEY: json.dumps(asdict(meta), sort_keys=True).encode()}
    )


def write_cache(
    path: str | os.PathLike, records: CacheRecords, meta: CacheMeta, row_group_size: int = 4096
) -> Path:
    """Write a whole cache atomically (``meta`` is stamped with the pipeline's version)."""
    table = _table(records, stamp_version(meta))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return Path(path)


def read_meta(path: str | os.PathLike) -> CacheMeta:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CacheError(f"{path}: not a MedMIX cache (no {META_KEY.decode()!r} metadata)")
    return CacheMeta(**json.loads(raw))


def read_cache(path: str | os.PathLike) -> CacheData:
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: cache not found")
    meta = read_meta(path)
    table = pq.read_table(path)
    n = table.num_rows
    col = table.column("embedding").combine_chunks()
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    emb = np.zeros((n, meta.dim), dtype=np.float32)
    if n:
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        valid = ~np.asarray(col.is_null().to_pylist(), dtype=bool)
        # flatten() drops the values of null slots, so fill valid rows in order.
        emb[valid] = flat.reshape(-1, meta.dim)
    return CacheData(
        sample_ids=np.asarray(table.column("sample_id").to_pylist(), dtype=object),
        embeddings=emb,
        status=status,
        reason=np.asarray(table.column("reason").to_pylist(), dtype=object),
        meta=meta,
        extra=(
            np.asarray(table.column("extra").to_pylist(), dtype=object)
            if "extra" in table.column_names
            else None
        ),
    )


class ShardedCacheWriter:
    """Shard-by-shard writer with resume.

    ``plan`` is a fingerprint of the work (expert config hash + sample ids); shards written
    under another plan are discarded. The plan also pins ``created_at`` so that a resumed run
    produces the same metadata as the run it continues.
    """

    def __init__(self, path: str | os.PathLike, meta: CacheMeta, plan: dict) -> None:
        self.path = Path(path)
        self.meta = meta
        self.shard_dir = self.path.parent / f".{self.path.name}.shards"
        self.plan = {"preprocess_hash": meta.preprocess_hash, "expert": meta.expert, **plan}
        self._open()

    def _open(self) -> None:
        # Temp files of a writer killed while writing the final file (``atomic_path`` cannot
        # remove them after SIGKILL); only this cache's own ``.{name}.*.tmp`` are touched.
        for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        plan_file = self.shard_dir / "plan.json"
        if self.shard_dir.exists() and not plan_file.exists():
            # Shards without their plan (a run killed while removing the folder) cannot be
            # trusted to belong to this work: start over.
            shutil.rmtree(self.shard_dir)
        if plan_file.exists():
            try:
                stored = json.loads(plan_file.read_text())
            except json.JSONDecodeError:
                stored = {}
            if {k: stored.get(k) for k in self.plan} == self.plan:
                self.meta.created_at = stored.get("created_at", self.meta.created_at)
                return
            shutil.rmtree(self.shard_dir)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.meta.created_at = self.meta.created_at or created_at_now()
        write_text_atomic(
            plan_file, json.dumps({**self.plan, "created_at": self.meta.created_at}, sort_keys=True)
        )

    def shard_path(self, index: int) -> Path:
        return self.shard_dir / f"shard-{index:06d}.parquet"

    def done(self, index: int) -> bool:
        return self.shard_path(index).exists()

    def write_shard(self, index: int, records: CacheRecords) -> None:
        table = _table(records, self.meta)
        with atomic_path(self.shard_path(index)) as tmp:
            pq.write_table(table, tmp)

    def finalize(self, n_shards: int, row_group_size: int = 4096) -> Path:
        """Assemble shards 0..n-1 into the final file (atomically) and remove the shard folder."""
        missing = [i for i in range(n_shards) if not self.done(i)]
        if missing:
            raise CacheError(f"{self.path}: cannot finalize, shards {missing[:5]} not written")
        stamp_version(self.meta)
        tables = [pq.read_table(self.shard_path(i)) for i in range(n_shards)]
        if tables:
            table = pa.concat_tables(tables)
        else:
            table = _table(CacheRecords.concat([], self.meta.dim), self.meta)
        table = table.replace_schema_metadata(
            {META_KEY: json.dumps(asdict(self.meta), sort_keys=True).encode()}
        )
        with atomic_path(self.path) as tmp:
            pq.write_table(table, tmp, row_group_size=row_group_size)
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        return self.path
