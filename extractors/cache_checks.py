"""The cache contract (docs/design.md §3.2), checked where caches are written and read.

* :func:`refused_ok_rows` — the write side: an ``ok`` embedding must carry information and be
  storable. All-zero, constant (every component equal) and non-finite vectors are refused,
  judged on the value that is *stored* (after the cast to ``extraction.dtype``: 2e5 is
  finite in float32 and ``inf`` in float16). The sharded writer turns such rows into
  ``failed`` samples with the reason returned here, so every expert gets the same check.
* :func:`table_problem` — the read side: the columns and their types, the status vocabulary,
  and status/embedding consistency: an ``ok`` row has a finite embedding of the cache's dim.
  A vector stored in a row that is not ok is never data: the reader drops it (a zero row,
  with a warning) — only ``status`` decides availability.
* :func:`meta_problem` — the cache's metadata against what the caller expects (dataset,
  modality, expert, dim), so a cache copied from another cohort or another expert is refused
  instead of being joined by ``sample_id``.

The checks return a problem as text (or None); the caller raises :class:`CacheError` naming
the file. This module imports nothing else of ``extractors``, so the cache, its lock and the
readers all build on it without import cycles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from medmix.errors import UserError

STATUSES = ("ok", "missing", "failed")
REQUIRED_COLUMNS = ("sample_id", "embedding", "status", "reason")
ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}

REASON_NON_FINITE = "non-finite embedding"
REASON_ALL_ZERO = "all-zero embedding (carries no information)"
REASON_CONSTANT = "constant embedding (all components equal; carries no information)"


class CacheError(UserError, ValueError):
    """A cache file that does not follow the contract (defined here, re-exported by
    :mod:`extractors.cache`)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first message line, shortened (library errors can span pages)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _examples(ids: Sequence[object], mask: np.ndarray, k: int = 3) -> list[object]:
    return [ids[i] for i in np.flatnonzero(mask)[:k]]


# -- write side ---------------------------------------------------------------------------


def refused_ok_rows(emb: np.ndarray, ok: np.ndarray, dtype: str) -> list[str | None]:
    """Per row, why an ``ok`` embedding may not be stored as ok (None: it may).

    ``emb`` is ``(N, D)`` as computed; the checks look at it cast to ``dtype`` (what the
    cache holds). Rows that are not ok are never refused here."""
    emb = np.asarray(emb, dtype=np.float32)
    reasons: list[str | None] = [None] * emb.shape[0]
    if not ok.any():
        return reasons
    with np.errstate(over="ignore", invalid="ignore"):
        stored = emb.astype(NUMPY_DTYPES[dtype]).astype(np.float32)
    finite_in = np.isfinite(emb).all(axis=1)
    finite_out = np.isfinite(stored).all(axis=1)
    zero = finite_out & (stored == 0).all(axis=1)
    constant = np.zeros(len(emb), bool)
    if emb.shape[1] > 1:  # a 1-d embedding is trivially "constant"
        constant = finite_out & ~zero & (stored == stored[:, :1]).all(axis=1)
    for i in np.flatnonzero(ok):
        if not finite_in[i]:
            reasons[i] = REASON_NON_FINITE
        elif not finite_out[i]:
            reasons[i] = f"{REASON_NON_FINITE} after the cast to {dtype} (out of its range)"
        elif zero[i]:
            reasons[i] = REASON_ALL_ZERO
        elif constant[i]:
            reasons[i] = REASON_CONSTANT
    return reasons


# -- read side ----------------------------------------------------------------------------


def meta_problem(
    meta: object,
    dataset: str | None = None,
    modality: str | None = None,
    expert: str | None = None,
    dim: int | None = None,
) -> str | None:
    """What in ``meta`` (a CacheMeta) contradicts the caller's expectation. A field the cache
    leaves empty (written before it existed) is not held against it."""
    for field, want, hint in (
        ("dataset", dataset, "a cache copied from another dataset?"),
        ("modality", modality, "a cache of another modality?"),
        ("expert", expert, "a cache of another expert?"),
    ):
        have = getattr(meta, field, "")
        if want is not None and have and str(have) != str(want):
            return f"cache of {field} {have!r}, expected {want!r} ({hint})"
    have_dim = int(getattr(meta, "dim", 0))
    if dim is not None and have_dim != int(dim):
        return f"cache of dim {have_dim}, expected {int(dim)}"
    if have_dim < 1:
        return f"metadata gives dim {have_dim}"
    if getattr(meta, "dtype", "float32") not in ARROW_DTYPES:
        return f"metadata gives dtype {getattr(meta, 'dtype', '')!r}, expected one of {list(ARROW_DTYPES)}"
    return None


@dataclass(frozen=True)
class DecodedTable:
    """A cache table's columns as arrays, decoded once for the checks and for the reader."""

    ids: list[object]
    status: list[object]
    has_emb: np.ndarray  # (N,) bool: the embedding cell is not null
    flat: np.ndarray  # the non-null embeddings, (n_non_null, dim) float32

    @classmethod
    def of(cls, table: pa.Table, dim: int) -> DecodedTable:
        col = table.column("embedding").combine_chunks()
        n = len(col)
        has_emb = ~col.is_null().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
        # flatten() drops the values of null slots: rows of ``flat`` follow the non-null cells
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32) if n else None
        return cls(
            table.column("sample_id").to_pylist(),
            table.column("status").to_pylist(),
            np.asarray(has_emb, dtype=bool),
            np.zeros((0, dim), np.float32) if flat is None else flat.reshape(-1, dim),
        )


def table_problem(table: pa.Table, dim: int, dtype: str) -> str | None:
    """What in ``table`` breaks the contract for a cache of ``dim`` / ``dtype`` (None: nothing)."""
    return checked_table(table, dim, dtype)[0]


def checked_table(table: pa.Table, dim: int, dtype: str) -> tuple[str | None, DecodedTable | None]:
    """:func:`table_problem` and, once the schema holds, the table decoded (for the reader)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        return f"lacks the {missing[0]!r} column (has {table.column_names})", None
    got = table.schema.field("embedding").type
    if not (
        pa.types.is_fixed_size_list(got)
        and got.list_size == dim
        and got.value_type == ARROW_DTYPES[dtype]
    ):
        return (
            f"column 'embedding' is {got}, expected fixed_size_list<{dtype}>[{dim}] "
            "(the metadata's dim and dtype)"
        ), None
    for name in ("sample_id", "status", "reason") + (
        ("extra",) if "extra" in table.column_names else ()
    ):
        t = table.schema.field(name).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            return f"column {name!r} is {t}, expected string", None
    dec = DecodedTable.of(table, dim)
    return _row_problem(dec), dec


def _row_problem(dec: DecodedTable) -> str | None:
    """Ids, the status vocabulary, and an ``ok`` row's embedding: present and finite."""
    ids, status, has_emb = dec.ids, dec.status, dec.has_emb
    null_ids = np.array([s is None for s in ids], dtype=bool)
    if null_ids.any():
        return f"null sample_id in row(s) {np.flatnonzero(null_ids)[:3].tolist()}"
    unknown = sorted({s for s in status if s not in STATUSES}, key=repr)
    if unknown:
        bad = np.array([s not in STATUSES for s in status], dtype=bool)
        return (
            f"column 'status' has unknown value(s) {unknown[:5]} (e.g. sample(s) "
            f"{_examples(ids, bad)}); allowed: {', '.join(STATUSES)}"
        )
    ok = np.array([s == "ok" for s in status], dtype=bool)
    if (ok & ~has_emb).any():
        k = int((ok & ~has_emb).sum())
        return f"{k} 'ok' row(s) without an embedding (e.g. {_examples(ids, ok & ~has_emb)})"
    if ok.any():
        finite = np.zeros(len(ids), bool)
        finite[has_emb] = np.isfinite(dec.flat).all(axis=1)
        bad = ok & ~finite
        if bad.any():
            return (
                f"non-finite embedding in {int(bad.sum())} 'ok' row(s) (e.g. {_examples(ids, bad)})"
            )
    return None
