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

The contract is enforced on both sides (:mod:`extractors.cache_checks`): the sharded writer
turns an all-zero, constant or non-finite (as stored) ``ok`` embedding into a ``failed``
sample; :func:`read_cache` refuses a file that is not Parquet, lacks a column, uses another
status vocabulary, has ``ok`` rows without a finite embedding (or other rows with one), or
whose metadata contradicts what the caller expects (dataset, modality, expert, dim).
Resuming is safe against leftovers of any earlier run: one writer at a time
(:mod:`extractors.cache_lock`), a plan fingerprint of everything that shapes a shard's content
or schema (dtype included), and every reused shard re-validated (readable, expected schema and
ids) or else discarded with a warning and extracted again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
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

from extractors.cache_checks import (
    STATUSES,
    CacheError,
    checked_table,
    first_line,
    meta_problem,
    refused_ok_rows,
    table_problem,
)
from extractors.cache_lock import CacheLock
from medmix.io import atomic_path, write_text_atomic

log = logging.getLogger("medmix.extract")

META_KEY = b"medmix.cache"
_DTYPES = {"float32": (pa.float32(), np.float32), "float16": (pa.float16(), np.float16)}
# Bumped when what a shard holds changes (v2: ok rows screened by cache_checks), so shards
# of older code are never resumed.
SHARD_FORMAT = 2


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
    with np.errstate(over="ignore", invalid="ignore"):
        stored = emb.astype(np_type)  # finiteness is judged on what is stored (float16: 2e5 -> inf)
    finite = np.isfinite(stored).all(axis=1)
    if (ok & ~finite).any():
        rows = np.flatnonzero(ok & ~finite)[:5]
        ids = [records.sample_ids[i] for i in rows]
        raise CacheError(
            f"expert {meta.expert}: non-finite embedding (as {meta.dtype}) for sample(s) {ids}"
        )
    flat = pa.array(stored.reshape(-1), type=pa_type)
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
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise CacheError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CacheError(f"{path}: not a MedMIX cache (no {META_KEY.decode()!r} metadata)")
    try:
        return CacheMeta(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise CacheError(
            f"{path}: unreadable {META_KEY.decode()!r} metadata ({first_line(exc)})"
        ) from None


def read_cache(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    modality: str | None = None,
    expert: str | None = None,
    dim: int | None = None,
) -> CacheData:
    """Read a cache, checked against the contract (docs/design.md §3.2).

    ``dataset`` / ``modality`` / ``expert`` / ``dim``: what the caller expects the cache to
    be; a cache whose metadata says otherwise is refused (a field the cache leaves empty is
    not). Any breach of the contract is a :class:`CacheError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: cache not found")
    meta = read_meta(path)
    problem = meta_problem(meta, dataset=dataset, modality=modality, expert=expert, dim=dim)
    if problem is None:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise CacheError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        problem, decoded = checked_table(table, meta.dim, meta.dtype)  # decoded once
    if problem is not None:
        raise CacheError(f"{path}: {problem}")
    assert decoded is not None  # the schema holds
    n = table.num_rows
    status = np.asarray(decoded.status, dtype=object)
    emb = np.zeros((n, meta.dim), dtype=np.float32)
    if n:
        # the non-null vectors fill their rows in order; a vector in a row that is not ok is
        # no data (status decides) and stays a zero row
        valid, ok = decoded.has_emb, status == "ok"
        emb[valid & ok] = decoded.flat[ok[valid]]
        stray = int((valid & ~ok).sum())
        if stray:
            log.warning("%s: %d row(s) not 'ok' carry an embedding; ignored", path, stray)
    return CacheData(
        sample_ids=np.asarray(decoded.ids, dtype=object),
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


def write_assembled(
    path: Path,
    tables: Sequence[pa.Table],
    meta: CacheMeta,
    row_group_size: int = 4096,
    where: Path | None = None,
) -> Path:
    """Write the cache at ``path`` (atomically) from shard tables in manifest order, with
    ``meta`` (stamped with the pipeline's version) as its metadata. The same tables, chunked
    the same way, give the same bytes (:mod:`extractors.shards` relies on it)."""
    stamp_version(meta)
    if tables:
        try:
            table = pa.concat_tables(tables)
        except pa.ArrowInvalid as exc:  # pragma: no cover - the callers check each schema
            raise CacheError(
                f"{where or path}: shards do not fit together ({first_line(exc)})"
            ) from None
    else:
        table = _table(CacheRecords.concat([], meta.dim), meta)
    table = table.replace_schema_metadata(
        {META_KEY: json.dumps(asdict(meta), sort_keys=True).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return path


class ShardedCacheWriter:
    """Shard-by-shard writer with resume, one writer at a time.

    ``plan`` fingerprints the work (the sample ids and values, shard size, ...); the writer adds
    everything of ``meta`` that shapes a shard's content or schema (expert, model id and
    revision, preprocessing hash, dim, dtype, pooling) and :data:`SHARD_FORMAT`. Shards written
    under another plan are discarded; a shard that is reused is first validated
    (:meth:`done`). The plan also pins ``created_at`` so that a resumed run produces the same
    metadata as the run it continues. ``plan["extra_column"]`` says whether shards carry the
    ``extra`` column.

    The writer holds the cache's :class:`~extractors.cache_lock.CacheLock` from construction
    (or uses ``lock``, already held by the caller) until :meth:`finalize` or :meth:`close`; a
    second writer fails at once with ``CacheLockedError``. ``fresh=True`` (``--force``)
    discards every shard of earlier runs.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: CacheMeta,
        plan: dict,
        lock: CacheLock | None = None,
        fresh: bool = False,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.shard_dir = self.path.parent / f".{self.path.name}.shards"
        self.plan = {
            "format": SHARD_FORMAT,
            "expert": meta.expert,
            "model_id": meta.model_id,
            "revision": meta.revision,
            "preprocess_hash": meta.preprocess_hash,
            "dim": meta.dim,
            "dtype": meta.dtype,
            "pooling": meta.pooling,
            **plan,
        }
        self._own_lock = lock is None
        self.lock = (lock or CacheLock(self.path)).acquire()
        self._valid: set[int] = set()
        try:
            self._open(fresh)
        except BaseException:
            self.close()
            raise

    def _open(self, fresh: bool) -> None:
        # Temp files of a writer killed while writing the final file (``atomic_path`` cannot
        # remove them after SIGKILL); only this cache's own ``.{name}.*.tmp`` are touched.
        for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        plan_file = self.shard_dir / "plan.json"
        if self.shard_dir.exists() and (fresh or not plan_file.exists()):
            # Shards without their plan (a run killed while removing the folder) cannot be
            # trusted to belong to this work; ``fresh`` asks to start over anyway.
            self._discard_all("a fresh start was asked for" if fresh else "no plan.json")
        if plan_file.exists():
            try:
                stored = json.loads(plan_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                stored = {}
            if isinstance(stored, dict) and {k: stored.get(k) for k in self.plan} == self.plan:
                self.meta.created_at = stored.get("created_at", self.meta.created_at)
                return
            changed = sorted(
                k
                for k in self.plan
                if not isinstance(stored, dict) or stored.get(k) != self.plan[k]
            )
            self._discard_all(f"written under another plan: {', '.join(changed)} differ")
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.meta.created_at = self.meta.created_at or created_at_now()
        write_text_atomic(
            plan_file, json.dumps({**self.plan, "created_at": self.meta.created_at}, sort_keys=True)
        )

    def _discard_all(self, why: str) -> None:
        n = len(list(self.shard_dir.glob("shard-*.parquet")))
        if n:
            log.warning("%s: discarding %d shard(s) of an earlier run (%s)", self.path, n, why)
        shutil.rmtree(self.shard_dir)

    def shard_path(self, index: int) -> Path:
        return self.shard_dir / f"shard-{index:06d}.parquet"

    def _expected_schema(self) -> pa.Schema:
        empty = CacheRecords([], np.zeros((0, self.meta.dim), np.float32), [], [])
        if self.plan.get("extra_column"):
            empty.extra = []
        return _table(empty, self.meta).schema.remove_metadata()

    def _shard_problem(self, index: int, ids: Sequence[str] | None) -> str | None:
        try:
            table = pq.read_table(self.shard_path(index))
        except (pa.ArrowException, OSError) as exc:
            return f"not a readable Parquet file: {first_line(exc, 120)}"
        schema = table.schema.remove_metadata()
        want = self._expected_schema()
        if not schema.equals(want):
            return f"schema {schema.types} differs from the expected {want.types}"
        if ids is not None and table.column("sample_id").to_pylist() != list(ids):
            return "its sample ids are not this shard's"
        return table_problem(table, self.meta.dim, self.meta.dtype)

    def done(self, index: int, ids: Sequence[str] | None = None) -> bool:
        """Whether shard ``index`` is on disk and valid (readable Parquet, the expected schema,
        the contract, and, when given, exactly the sample ``ids``). A shard that is not is
        removed with a warning, so it is extracted again."""
        if index in self._valid:
            return True
        path = self.shard_path(index)
        if not path.exists():
            return False
        problem = self._shard_problem(index, ids)
        if problem is not None:
            log.warning(
                "%s: discarding shard %d of an earlier run (%s); it is extracted again",
                self.path,
                index,
                problem,
            )
            path.unlink(missing_ok=True)
            return False
        self._valid.add(index)
        return True

    def write_shard(self, index: int, records: CacheRecords) -> None:
        """Write one shard atomically; ``ok`` rows the contract refuses (all-zero, constant,
        non-finite as stored) become ``failed`` with the reason."""
        table = _table(self._screen(index, records), self.meta)
        with atomic_path(self.shard_path(index)) as tmp:
            pq.write_table(table, tmp)
        self._valid.add(index)

    def _screen(self, index: int, records: CacheRecords) -> CacheRecords:
        ok = np.array([s == "ok" for s in records.status], dtype=bool)
        emb = np.asarray(records.embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.meta.dim:
            return records  # _table names the wrong shape
        refused = refused_ok_rows(emb, ok, self.meta.dtype)
        rows = [i for i, r in enumerate(refused) if r is not None]
        if not rows:
            return records
        emb = emb.copy()
        status, reason = list(records.status), list(records.reason)
        extra = list(records.extra) if records.extra is not None else None
        for i in rows:
            emb[i] = 0.0
            status[i], reason[i] = "failed", refused[i]
            if extra is not None:
                extra[i] = None
        log.warning(
            "%s: shard %d: %d embedding(s) refused as ok (%s)",
            self.path,
            index,
            len(rows),
            "; ".join(sorted({str(refused[i]) for i in rows})),
        )
        return CacheRecords(list(records.sample_ids), emb, status, reason, extra)

    def finalize(self, n_shards: int, row_group_size: int = 4096) -> Path:
        """Assemble shards 0..n-1 into the final file (atomically), remove the shard folder and
        release the lock."""
        try:
            missing = [i for i in range(n_shards) if not self.done(i)]
            if missing:
                raise CacheError(f"{self.path}: cannot finalize, shards {missing[:5]} not written")
            tables = [pq.read_table(self.shard_path(i)) for i in range(n_shards)]
            write_assembled(self.path, tables, self.meta, row_group_size, where=self.shard_dir)
            shutil.rmtree(self.shard_dir, ignore_errors=True)
        finally:
            self.close()
        return self.path

    def close(self) -> None:
        """Release the lock (when this writer took it); shards stay for a later resume."""
        if self._own_lock:
            self.lock.release()
