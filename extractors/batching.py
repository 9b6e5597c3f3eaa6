"""The extraction pipeline: a DataLoader feeding the model, shards written as they complete.

``run_shards`` is what :func:`extractors.extract.extract` runs for the shards not yet on disk:

* **Decode and preprocess in workers.** A map-style dataset whose items are whole batches (a
  batch never crosses a shard boundary); each worker process calls the expert's ``load`` on the
  batch's samples (reading, decoding, resizing, tokenising) and, when the expert defines
  ``collate``, stacks the loaded samples into tensors there. ``num_workers`` comes from the
  expert's ``num_workers`` attribute (FM experts take it as a parameter; it is not part of the
  preprocessing hash), else ``MEDMIX_EXTRACT_WORKERS``, else one less than the
  CPU cores this process may use (``os.sched_getaffinity``; at most 8); 0 runs everything in
  this process. Workers are forked where the platform allows, so experts need not pickle.
* **Pinned memory.** For a CUDA expert the collated tensors are pinned (``pin_memory=True``) and
  the expert copies them with ``non_blocking=True``.
* **Mixed precision, no autograd.** Every forward pass runs under ``torch.inference_mode`` and,
  on a GPU, autocast to bf16 (fp16 where bf16 is unsupported); ``precision: fp32`` turns it off
  (:func:`extractors.experts.fm_common.inference`).
* **Shards written while the model runs.** When the last batch of a shard is embedded the shard
  is written (atomically, as its own Parquet file) and the workers keep decoding the next
  batches meanwhile. A crashed run resumes at shard granularity: finished shards are skipped.
* **Failure isolation.** A sample whose ``load`` raises is ``failed`` with a reason; a batch
  whose forward pass raises is retried sample by sample, so one bad sample fails alone. The
  reason is a :class:`SampleError`'s own message, else only the exception type and a size
  (:func:`safe_reason`): other messages can quote the note. A ``LoadingError`` (the model is
  refused or missing) is no sample's fault and stops the run.
* **Progress.** A tqdm bar in samples, with samples/s, drawn only on a terminal
  (:mod:`medmix.progress`: never into a Snakemake job's log).

Experts may implement, besides ``load``/``embed``: ``collate(items)`` (in the worker) +
``forward(collated)`` (in the main process), and ``item_info(item) -> dict`` — small per-sample
facts (a note's chunk count, a series' window count) stored in the cache's ``extra`` column and
summarised in its metadata.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Expert, SampleError
from extractors.loading import LoadingError

log = logging.getLogger("medmix.extract")

MISSING_REASON = "modality not recorded"


def safe_reason(exc: BaseException, where: str, subject: str | None = None) -> str:
    """The cache's ``reason`` for a sample that raised ``exc``; never patient content.

    Our own :class:`SampleError` messages are written to name no sample content and are kept.
    Any other exception's message is withheld: a tokenizer's, a model's or a library's text
    can quote the note it failed on. The reason is then the exception type, ``where`` it
    happened and ``subject``, a size such as ``"text of 812 characters"``, never content.
    """
    if isinstance(exc, SampleError):
        return str(exc)[:300]
    size = f"{subject}; " if subject else ""
    return f"{type(exc).__name__} in {where} ({size}message withheld)"


def size_of(item: Any) -> str | None:
    """A content-free size of a sample's value or loaded item, for :func:`safe_reason`."""
    if isinstance(item, str):
        return f"input of {len(item)} characters"
    shape = getattr(item, "shape", None)
    if isinstance(shape, tuple):
        return f"input of shape {shape}"
    return None


def reason_of(exc: BaseException, where: str = "the expert", item: Any = None) -> str:
    """:func:`safe_reason` for a sample the expert failed on while in ``where``."""
    return safe_reason(exc, where, size_of(item))


def load_one(expert: Expert, value: Any, root: Path) -> tuple[Any, str | None]:
    """``(loaded, None)`` or ``(None, reason)``. A model the loading policy refuses (a
    ``LoadingError``) is no bad sample: it stops the run with the policy's message."""
    try:
        return expert.load(value, root), None
    except LoadingError:
        raise
    except Exception as exc:  # a bad sample never crashes the job
        return None, reason_of(exc, "load", value)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def has_info(expert: Expert) -> bool:
    return callable(getattr(expert, "item_info", None))


def has_collate(expert: Expert) -> bool:
    return callable(getattr(expert, "collate", None)) and callable(getattr(expert, "forward", None))


def embed_safe(expert: Expert, items: list[Any]) -> list[tuple[np.ndarray | None, str | None]]:
    """Embed a batch; if the batch fails, retry one by one to isolate the bad sample.

    A ``LoadingError`` (the model itself is refused or missing) stops the run instead."""
    if not items:
        return []
    try:
        out = np.asarray(expert.embed(items), dtype=np.float32)
        if out.shape != (len(items), expert.dim):
            raise SampleError(
                f"embed returned shape {out.shape}, expected ({len(items)}, {expert.dim})"
            )
        return [(row, None) for row in out]
    except LoadingError:
        raise
    except Exception as exc:
        if len(items) == 1:
            return [(None, reason_of(exc, "embed", items[0]))]
        return [r for item in items for r in embed_safe(expert, [item])]


# -- the dataset of batches --------------------------------------------------------------------


@dataclass
class LoadedBatch:
    """One batch as the workers hand it over: per-sample status, the loaded items, maybe collated."""

    shard: int
    lo: int  # manifest index of the first sample
    status: list[str]
    reason: list[str | None]
    info: list[str | None] | None
    slots: list[int]  # positions (in the batch) of the ok samples, in items order
    items: list[Any]
    collated: Any = None

    def pin_memory(self) -> LoadedBatch:  # called by the DataLoader's pin-memory thread
        c = self.collated
        if c is not None and hasattr(c, "pin_memory"):
            self.collated = c.pin_memory()
        return self


class BatchDataset:
    """Map-style dataset: item ``k`` is the ``k``-th planned batch, loaded (and collated)."""

    def __init__(
        self, expert: Expert, values: Sequence[Any], root: Path, plan: list[tuple[int, int, int]]
    ) -> None:
        self.expert = expert
        self.values = values
        self.root = root
        self.plan = plan  # (shard, lo, hi)
        self.info = has_info(expert)
        self.collate = has_collate(expert)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> LoadedBatch:
        shard, lo, hi = self.plan[k]
        status: list[str] = []
        reason: list[str | None] = []
        info: list[str | None] | None = [] if self.info else None
        slots, items = [], []
        for i in range(lo, hi):
            v = self.values[i]
            extra = None
            if is_missing(v):
                status.append("missing")
                reason.append(MISSING_REASON)
            else:
                item, err = load_one(self.expert, v, self.root)
                if err is not None:
                    status.append("failed")
                    reason.append(err)
                else:
                    status.append("ok")
                    reason.append(None)
                    slots.append(i - lo)
                    items.append(item)
                    if info is not None:
                        try:
                            extra = json.dumps(self.expert.item_info(item), sort_keys=True)
                        except Exception:  # info is a courtesy, never a failure
                            extra = None
            if info is not None:
                info.append(extra)
        collated = None
        if self.collate and items:
            try:
                collated = self.expert.collate(items)
            except Exception:  # e.g. mixed shapes: the main process falls back to embed()
                collated = None
        return LoadedBatch(shard, lo, status, reason, info, slots, items, collated)


def _identity(x: Any) -> Any:
    return x


# -- resources -----------------------------------------------------------------------------------


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def resolve_workers(expert: Expert, n_batches: int) -> int:
    """Worker processes for decoding (see the module docstring); 0 when there is one batch."""
    cfg = getattr(expert, "num_workers", None)
    env = os.environ.get("MEDMIX_EXTRACT_WORKERS")
    if cfg is not None:
        n = int(cfg)
    elif env not in (None, ""):
        n = int(env)
    else:
        n = min(8, available_cpus() - 1)
    return max(0, min(n, n_batches - 1))


def expert_device(expert: Expert) -> str:
    from extractors.experts.fm_common import resolve_device

    return resolve_device(str(getattr(expert, "device", "cpu")))


def precision_of(expert: Expert) -> str:
    p = getattr(expert, "precision", None)
    if isinstance(p, str):
        return p
    return (
        str(expert.params.get("precision", "auto")) if isinstance(expert.params, dict) else "auto"
    )


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class RunStats:
    batches: int = 0
    samples: int = 0
    forward_s: float = 0.0  # time inside the model calls (embed / forward)
    wait_s: float = 0.0  # time waiting for the workers
    write_s: float = 0.0  # time writing shards
    workers: int = 0
    info_summary: dict = field(default_factory=dict)


def plan_batches(shards: list[tuple[int, int, int]], batch_size: int) -> list[tuple[int, int, int]]:
    """(shard, lo, hi) batches of at most ``batch_size``, never crossing a shard."""
    out = []
    for s, lo, hi in shards:
        for b0 in range(lo, hi, max(1, batch_size)):
            out.append((s, b0, min(hi, b0 + batch_size)))
    return out


def _embed_batch(
    expert: Expert, lb: LoadedBatch, device: str, precision: str
) -> list[tuple[np.ndarray | None, str | None]]:
    from extractors.experts.fm_common import inference

    with inference(device, precision):
        if lb.collated is not None:
            try:
                out = np.asarray(expert.forward(lb.collated), dtype=np.float32)  # type: ignore[attr-defined]
                if out.shape == (len(lb.items), expert.dim):
                    return [(row, None) for row in out]
            except Exception:
                pass  # retried below, sample by sample
        return embed_safe(expert, lb.items)


def run_shards(
    expert: Expert,
    ids: Sequence[str],
    values: Sequence[Any],
    root: Path,
    shards: list[tuple[int, int, int]],
    write_shard: Callable[[int, Any], None],
    progress: Any = None,
    num_workers: int | None = None,
) -> RunStats:
    """Embed the samples of ``shards`` ((index, lo, hi) each) and hand each finished shard's
    :class:`~extractors.cache.CacheRecords` to ``write_shard(index, records)``."""
    import torch
    from torch.utils.data import DataLoader

    from extractors.cache import CacheRecords

    stats = RunStats()
    plan = plan_batches(shards, expert.batch_size)
    if not plan:
        return stats
    device = expert_device(expert)
    precision = precision_of(expert)
    workers = (
        resolve_workers(expert, len(plan)) if num_workers is None else max(0, int(num_workers))
    )
    stats.workers = workers
    dataset = BatchDataset(expert, values, root, plan)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        kwargs["prefetch_factor"] = 2
        if sys.platform.startswith("linux"):
            import multiprocessing

            kwargs["multiprocessing_context"] = multiprocessing.get_context("fork")
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=device.startswith("cuda") and torch.cuda.is_available(),
        **kwargs,
    )
    bounds = {s: (lo, hi) for s, lo, hi in shards}
    buffers: dict[int, dict[str, Any]] = {}
    want_info = has_info(expert)
    t_wait = time.perf_counter()
    for lb in loader:
        stats.wait_s += time.perf_counter() - t_wait
        lo, hi = bounds[lb.shard]
        buf = buffers.setdefault(
            lb.shard,
            {
                "emb": np.zeros((hi - lo, expert.dim), dtype=np.float32),
                "status": [None] * (hi - lo),
                "reason": [None] * (hi - lo),
                "extra": [None] * (hi - lo),
                "done": 0,
            },
        )
        status, reason = list(lb.status), list(lb.reason)
        t0 = time.perf_counter()
        results = _embed_batch(expert, lb, device, precision) if lb.items else []
        stats.forward_s += time.perf_counter() - t0
        for slot, (vec, err) in zip(lb.slots, results, strict=True):
            if err is None and vec is not None and not np.isfinite(vec).all():
                err = "non-finite embedding"
            if err is not None:
                status[slot], reason[slot] = "failed", err
            else:
                buf["emb"][lb.lo - lo + slot] = vec
        n = len(status)
        off = lb.lo - lo
        buf["status"][off : off + n] = status
        buf["reason"][off : off + n] = reason
        if lb.info is not None:
            buf["extra"][off : off + n] = [
                e if s == "ok" else None for e, s in zip(lb.info, status, strict=True)
            ]
        buf["done"] += n
        stats.batches += 1
        stats.samples += n
        if progress is not None:
            progress.update(n)
        if buf["done"] == hi - lo:
            t1 = time.perf_counter()
            write_shard(
                lb.shard,
                CacheRecords(
                    list(ids[lo:hi]),
                    buf["emb"],
                    buf["status"],
                    buf["reason"],
                    buf["extra"] if want_info else None,
                ),
            )
            stats.write_s += time.perf_counter() - t1
            del buffers[lb.shard]
        t_wait = time.perf_counter()
    if buffers:  # pragma: no cover - every planned batch arrives
        raise RuntimeError(f"extraction ended with unfinished shards {sorted(buffers)}")
    return stats


def summarise_info(values: Sequence[str | None]) -> dict[str, Any]:
    """Per key of the per-sample ``extra`` JSON: count, mean, max (numbers only)."""
    acc: dict[str, list[float]] = {}
    for v in values:
        if not v:
            continue
        try:
            d = json.loads(v)
        except (TypeError, json.JSONDecodeError):
            continue
        for k, x in d.items():
            if isinstance(x, int | float) and not isinstance(x, bool):
                acc.setdefault(k, []).append(float(x))
    out = {}
    for k, xs in sorted(acc.items()):
        arr = np.asarray(xs)
        out[k] = {"n": int(arr.size), "mean": round(float(arr.mean()), 4), "max": float(arr.max())}
        if k.startswith("n_chunks") or k == "n_windows":
            out[k]["n_gt_1"] = int((arr > 1).sum())
    return out
