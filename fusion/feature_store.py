"""Out-of-core expert features: embedding caches read through memory maps, standardised per batch.

Each embedding cache (Parquet, docs/design.md §3.2) gets, once, a raw copy of its embedding
column as a ``.npy`` file in the cache's own dtype (float32 → float32, ``extraction.dtype:
float16`` → float16; rows in cache order, zero rows where the status is not ``ok``), in a
hidden ``.memmap/`` folder beside the cache: ``.memmap/{cache stem}.{key}.npy``. The key hashes
the cache file's size, mtime and metadata, so a rewritten cache gets a new file (the stale one
is removed) and an unchanged cache is never decoded again. The file is written atomically
(temp file + rename): jobs that build the same one at once each write their own temp file and
the last rename wins (same bytes); a killed writer leaves only a hidden temp file, never read.
Building decodes the cache once with :func:`extractors.cache.read_cache` (the whole contract
checked; that one cache is in memory as float32 while its file is written). A cache folder
that cannot be written to gets its rows in memory instead (a warning says so). The copy costs
as much disk as the embedding column uncompressed.

:class:`FeatureRows` holds one expert's rows: the raw array (memory-mapped; read-only in use),
the manifest-row → cache-row index, and the train-fitted mean μ and std σ. :meth:`FeatureRows.rows`
gathers rows and standardises them on the fly, ``(x − μ) / σ`` in float32, zero where the
caller's availability mask is 0. The values are bit-identical to standardising the whole
float32 matrix at once, for both cache dtypes: the same IEEE operations per element, on the
same numbers (a float16 value widens to float32 exactly; a float16 cache's rounding, relative
error ≤ 2⁻¹¹ against a float32 extraction, happened when it was written, not here). The
statistics are fitted in chunks to the same bits as numpy on the whole subset
(:func:`fit_stats`).
The whole cohort is never held as float32: memory is the raw pages the OS maps in, and
those are handed back (``madvise(MADV_DONTNEED)``) before they pass about
:data:`MAPPED_BUDGET` per file, so the process's resident size stays bounded however large
the cache (resident file pages count in RSS; handed back, they stay in the OS page cache,
and reading them again costs a minor fault, not a disk read, while the page cache holds
them). The bound is approximate: it counts rows read, each charged :data:`FAULT_BYTES`.

On a GPU (:meth:`FeatureRows.to`) the raw rows are copied to the device in the cache's dtype
(read in chunks; float16 halves the float32 footprint) and gathered there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from extractors.cache import read_cache
from extractors.cache_checks import NUMPY_DTYPES
from medmix.io import atomic_path

log = logging.getLogger("medmix.fusion.feature_store")

MEMMAP_DIR = ".memmap"
MEMMAP_FORMAT = "medmix-memmap/1"  # part of the key: a format change rebuilds every file
# Resident file pages allowed per mapped file before they are handed back. Reading a row maps
# in more than the row: the kernel maps ~64 KB around each page fault (FAULT_BYTES, an
# estimate), so the pages are handed back every MAPPED_BUDGET // FAULT_BYTES rows read. A file
# no larger than the budget stays mapped (no refaults: small cohorts read at in-memory speed).
MAPPED_BUDGET = 256 * 2**20
FAULT_BYTES = 64 * 2**10
STATS_CHUNK = 8192  # rows per chunk when fitting the standardisation statistics
STD_FLOOR = 1e-6


class MappedArray:
    """A ``.npy`` file mapped read-only (copy-on-write: the file is never written), with a
    way to hand its resident pages back to the OS."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            header = np.load(self.path, mmap_mode="r")  # shape, dtype and data offset
        except ValueError:  # no rows: nothing to map
            self._mm, self.array = None, np.load(self.path)
            return
        shape, dtype, offset = header.shape, header.dtype, int(getattr(header, "offset", 0))
        if len(shape) != 2 or not header.flags.c_contiguous:
            raise ValueError(f"{self.path}: expected a C-order 2-d array, got shape {shape}")
        del header
        n = int(shape[0]) * int(shape[1])
        with open(self.path, "rb") as fh:
            self._mm = (
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
                if n
                else None  # an empty file cannot be mapped
            )
        if self._mm is None:
            self.array = np.zeros(shape, dtype=dtype)
        else:
            self.array = np.frombuffer(self._mm, dtype=dtype, count=n, offset=offset).reshape(shape)

    def release(self) -> None:
        """Hand the mapped pages back (the data stays in the page cache; no write-back:
        nothing is ever written through this map)."""
        if self._mm is not None and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED)


class FeatureRows:
    """One expert's rows for the N samples of a :class:`fusion.data.FusionData`.

    ``raw`` ``(R, D)`` in the storage dtype (rows of the cache, memory-mapped or in memory);
    ``pos`` ``(N,)`` the raw row of each sample (None: sample i is raw row i); ``mean`` /
    ``std`` ``(D,)`` float32. Immutable: views (:meth:`take`) share the raw rows.
    """

    def __init__(
        self,
        raw: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        pos: torch.Tensor | None = None,
        mapped: MappedArray | None = None,
        standardised: bool = False,
    ) -> None:
        if raw.shape[0] == 0:  # every sample absent: one zero row to point at
            raw = torch.zeros(1, raw.shape[1], dtype=raw.dtype, device=raw.device)
        self.raw = raw
        self.mean = mean.to(device=raw.device, dtype=torch.float32)
        self.std = std.to(device=raw.device, dtype=torch.float32)
        self.pos = pos
        self.mapped = mapped
        self.standardised = standardised and raw.dtype == torch.float32
        self._n = int(pos.shape[0]) if pos is not None else int(raw.shape[0])
        self._per_row: dict[Callable, torch.Tensor] = {}
        self._read = 0  # rows read from the map since the pages were last handed back
        self._stage: torch.Tensor | None = None  # raw-dtype gather buffer (not float32 rows)

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> FeatureRows:
        """Rows already standardised, in memory (μ = 0, σ = 1: the gather copies them)."""
        d = x.shape[1]
        zeros = torch.zeros(d, dtype=torch.float32, device=x.device)
        ones = torch.ones(d, dtype=torch.float32, device=x.device)
        return cls(x.float(), zeros, ones, standardised=True)

    @classmethod
    def from_mapped(
        cls, mapped: MappedArray, mean: np.ndarray, std: np.ndarray, pos: np.ndarray | None
    ) -> FeatureRows:
        raw = torch.from_numpy(mapped.array)
        p = None if pos is None else torch.from_numpy(np.asarray(pos, dtype=np.int64))
        return cls(raw, torch.from_numpy(mean), torch.from_numpy(std), p, mapped)

    # -- tensor-like facts ------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, int(self.raw.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.raw.device

    @property
    def is_mapped(self) -> bool:
        """The rows are read from a file mapping (not held in memory)."""
        return self.mapped is not None and self.raw.device.type == "cpu"

    def __len__(self) -> int:
        return self._n

    # -- rows -------------------------------------------------------------------------------

    def raw_index(self, idx: torch.Tensor) -> torch.Tensor:
        """Raw rows of samples ``idx`` (absent samples point at row 0; their mask is 0)."""
        if self.pos is None:
            return idx
        return self.pos.index_select(0, idx).clamp_min(0)

    def rows(
        self, idx: torch.Tensor, mask: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(b, D)`` float32: rows ``idx`` standardised, zero where ``mask`` (b,) is 0.

        ``out``: a float32 ``(b, D)`` tensor (e.g. a view into a step buffer) to write into.
        """
        out = self.gather(idx, out)
        out.masked_fill_(~mask.to(device=out.device, dtype=torch.bool).unsqueeze(-1), 0.0)
        return out

    def gather(self, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(b, D)`` float32: rows ``idx`` standardised, *not* masked (:meth:`rows` without
        the zeroing; a caller that zeroes the masked rows itself, e.g. only those rows)."""
        idx = idx.to(self.raw.device)
        if out is None:
            out = torch.empty(len(idx), self.raw.shape[1], device=self.raw.device)
        ridx = self.raw_index(idx)
        every = self.release_every
        if every is None:
            self._gather(ridx, out)
        else:  # a bounded number of rows mapped in between two hand-backs
            a = 0
            while a < len(ridx):
                b = min(len(ridx), a + every - self._read)
                self._gather(ridx[a:b], out[a:b])
                self._read += b - a
                a = b
                if self._read >= every:
                    self.release()
        return out

    def _gather(self, ridx: torch.Tensor, out: torch.Tensor) -> None:
        """Raw rows ``ridx`` standardised into ``out`` (float32)."""
        if self.raw.dtype == torch.float32:  # straight into ``out``, then standardised in place
            torch.index_select(self.raw, 0, ridx, out=out)
            if not self.standardised:
                out.sub_(self.mean).div_(self.std)
            return
        # through a reused staging buffer in the raw dtype (widening to float32 is exact)
        if self._stage is None or self._stage.shape[0] < len(ridx):
            shape = (len(ridx), self.raw.shape[1])
            self._stage = torch.empty(shape, dtype=self.raw.dtype, device=self.raw.device)
        stage = self._stage[: len(ridx)]
        torch.index_select(self.raw, 0, ridx, out=stage)
        torch.sub(stage, self.mean, out=out).div_(self.std)

    def per_row(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn`` of every standardised row, ``(N, ...)``, computed once in chunks (a full
        pass over the rows, pages handed back as it goes) and kept. Rows of samples the
        caller will mask are included as they are (their result is the caller's to replace)."""
        if fn not in self._per_row:
            parts = []
            for a in range(0, self._n, STATS_CHUNK):
                idx = torch.arange(a, min(a + STATS_CHUNK, self._n), device=self.raw.device)
                parts.append(fn(self.rows(idx, torch.ones_like(idx, dtype=torch.bool))))
            self._per_row[fn] = torch.cat(parts) if parts else fn(torch.zeros(0, self.shape[1]))
            self.release()
            self._stage = None  # sized for the pass's chunks: let it go
        return self._per_row[fn]

    @property
    def release_every(self) -> int | None:
        """Rows read between two hand-backs of the mapped pages (None: never needed)."""
        if not self.is_mapped or self.raw.numel() * self.raw.element_size() <= MAPPED_BUDGET:
            return None
        return max(1, MAPPED_BUDGET // FAULT_BYTES)

    def release(self) -> None:
        """Hand the mapped pages read so far back to the OS (no-op in memory)."""
        self._read = 0
        if self.mapped is not None:
            self.mapped.release()

    def take(self, idx: torch.Tensor) -> FeatureRows:
        """The rows ``idx`` as a new view over the same raw rows (nothing copied)."""
        idx = idx.to(self.raw.device)
        base = self.pos if self.pos is not None else torch.arange(self._n, device=idx.device)
        pos = base.index_select(0, idx)
        return FeatureRows(self.raw, self.mean, self.std, pos, self.mapped, self.standardised)

    def to(self, device: str | torch.device) -> FeatureRows:
        """The same rows on ``device`` (raw rows copied there in their dtype, chunk by chunk)."""
        device = torch.device(device)
        if device == self.raw.device:
            return self
        raw = torch.empty(self.raw.shape, dtype=self.raw.dtype, device=device)
        step = max(1, (256 * 2**20) // max(1, self.raw.shape[1] * self.raw.element_size()))
        for a in range(0, self.raw.shape[0], step):
            raw[a : a + step].copy_(self.raw[a : a + step])
            self.release()
        pos = self.pos.to(device) if self.pos is not None else None
        on_cpu = device.type == "cpu"
        mapped = self.mapped if on_cpu else None
        return FeatureRows(raw, self.mean, self.std, pos, mapped, self.standardised)


# -- standardisation statistics -------------------------------------------------------------


def fit_stats(
    source: MappedArray | np.ndarray, rows: np.ndarray, chunk: int = STATS_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std ``(D,)`` float32 of ``raw[rows]`` (std below :data:`STD_FLOOR` → 1), read
    ``chunk`` rows at a time in float64.

    The same numbers as numpy's ``x.mean(0)`` / ``x.std(0)`` on the whole float64 subset:
    numpy sums the outer axis row after row, and so does this, carrying the running sum
    into each chunk's sum; the std is numpy's two-pass formula (squared deviations from the
    mean, averaged, square-rooted). No rows: mean 0, std 1."""
    raw = raw_array(source)
    release = source.release if isinstance(source, MappedArray) else (lambda: None)
    rows = np.asarray(rows, dtype=np.int64)
    d = raw.shape[1]
    if len(rows) == 0:
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    n = len(rows)

    def running_sum(part) -> np.ndarray:
        acc = None
        for a in range(0, n, chunk):
            block = part(raw[rows[a : a + chunk]].astype(np.float64))
            if acc is not None:
                block = np.concatenate([acc[None], block])
            acc = np.add.reduce(block, axis=0)
            release()
        assert acc is not None
        return acc

    mean = running_sum(lambda b: b) / n
    var = running_sum(lambda b: np.square(b - mean)) / n
    std = np.sqrt(var)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


# -- the memmap of a cache ------------------------------------------------------------------


def memmap_key(path: str | os.PathLike) -> str:
    """16 hex digits naming the memmap of cache ``path``: its size, mtime and metadata."""
    st = os.stat(path)
    meta = pq.read_schema(path).metadata or {}
    h = hashlib.sha256()
    for part in (MEMMAP_FORMAT, str(st.st_size), str(st.st_mtime_ns)):
        h.update(part.encode() + b"\0")
    for k in sorted(meta):
        h.update(k + b"\0" + meta[k] + b"\0")
    return h.hexdigest()[:16]


def memmap_path(path: str | os.PathLike) -> Path:
    """Where the memmap of cache ``path`` lives (for its current contents)."""
    path = Path(path)
    return path.parent / MEMMAP_DIR / f"{path.stem}.{memmap_key(path)}.npy"


def _remove_stale(target: Path, stem: str) -> None:
    """Remove memmaps of earlier versions of the cache (a job still mapping one keeps its
    pages: the file is only unlinked)."""
    pattern = re.compile(rf"{re.escape(stem)}\.[0-9a-f]{{16}}\.npy")
    for old in target.parent.glob("*.npy"):
        if old != target and pattern.fullmatch(old.name):
            with contextlib.suppress(OSError):
                old.unlink()


def cache_rows(path: str | os.PathLike, dtype: str) -> MappedArray | np.ndarray:
    """The raw embedding rows of cache ``path`` (cache order, zero rows where not ok, dtype
    ``dtype``): its memmap, built first if missing. A folder that cannot be written to gets
    the rows in memory instead (with a warning)."""
    path = Path(path)
    target = memmap_path(path)
    if target.exists():
        return MappedArray(target)
    emb = read_cache(path).embeddings.astype(NUMPY_DTYPES[dtype])  # values are exact in dtype
    try:
        with atomic_path(target, suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, emb, allow_pickle=False)
    except OSError as exc:
        log.warning("%s: cannot write its memmap (%s); rows kept in memory", path, exc)
        return emb
    _remove_stale(target, path.stem)
    log.info("%s: memmap %s built (%s, %.1f MB)", path, target.name, dtype, emb.nbytes / 1e6)
    del emb
    return MappedArray(target)


def open_rows(
    source: MappedArray | np.ndarray, mean: np.ndarray, std: np.ndarray, pos: np.ndarray | None
) -> FeatureRows:
    """:class:`FeatureRows` over rows from :func:`cache_rows`."""
    if isinstance(source, MappedArray):
        return FeatureRows.from_mapped(source, mean, std, pos)
    p = None if pos is None else torch.from_numpy(np.asarray(pos, dtype=np.int64))
    return FeatureRows(torch.from_numpy(source), torch.from_numpy(mean), torch.from_numpy(std), p)


def raw_array(source: MappedArray | np.ndarray) -> np.ndarray:
    return source.array if isinstance(source, MappedArray) else source


__all__ = [
    "MEMMAP_DIR",
    "FeatureRows",
    "MappedArray",
    "cache_rows",
    "fit_stats",
    "memmap_key",
    "memmap_path",
    "open_rows",
    "raw_array",
]
