"""The knowledge index: article-encoder embeddings of the docs in a faiss index.

Built once from the knowledge base alone (no cohort, split or label enters it) and shared by
every dataset. A built index is a folder:

* ``index.faiss``: the faiss index over L2-normalised article embeddings. ``flat`` (default):
  exact inner product = exact cosine. ``ivf``: ``IndexIVFFlat`` (inner product, ``nlist``
  k-means cells trained on the doc vectors themselves, ``nprobe`` probed at search time).
  ``hnsw``: ``IndexHNSWFlat`` (inner product, ``hnsw_m`` links, ``ef_search``).
* ``docs.parquet``: the docs table plus ``embedding`` (the normalised vectors, row i = faiss id i).
* ``index.json``: what was built: knowledge base name and source, a hash of the docs, the
  article encoder, the index type and parameters, faiss version, dim, count.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from extractors.cache import created_at_now
from extractors.rag.encoders import l2_normalise
from extractors.rag.knowledge import DOC_COLUMNS, validate_docs
from medmix.io import atomic_path, write_text_atomic

INDEX_TYPES = ("flat", "ivf", "hnsw")


class IndexError_(RuntimeError):
    """A knowledge index that is missing, inconsistent or incompatible."""


@dataclass
class KnowledgeIndex:
    index: Any  # faiss.Index
    docs: pd.DataFrame  # DOC_COLUMNS, row i = faiss id i
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row indices) for L2-normalised queries; best first."""
        if k > len(self):
            raise IndexError_(f"k={k} exceeds the {len(self)} documents of the knowledge index")
        q = np.ascontiguousarray(l2_normalise(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise IndexError_(
                f"query dim {q.shape[1]} != index dim {self.dim} (query and article encoders differ?)"
            )
        scores, idx = self.index.search(q, int(k))
        if (idx < 0).any():
            raise IndexError_("faiss returned fewer than k neighbours (raise nprobe / ef_search)")
        return scores.astype(np.float32), idx.astype(np.int64)


def docs_hash(docs: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for doc_id, title, text in zip(docs["doc_id"], docs["title"], docs["text"], strict=True):
        h.update(f"{doc_id}\x1f{title}\x1f{text}\x1e".encode())
    return h.hexdigest()[:16]


def make_faiss_index(
    emb: np.ndarray, kind: str = "flat", **params: Any
) -> tuple[Any, dict[str, Any]]:
    import faiss

    if kind not in INDEX_TYPES:
        raise ValueError(f"index type {kind!r} not in {INDEX_TYPES}")
    n, d = emb.shape
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        used: dict[str, Any] = {}
    elif kind == "ivf":
        nlist = int(params.get("nlist") or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(params.get("seed", 1234))
        index.train(emb)
        index.nprobe = int(params.get("nprobe") or min(nlist, 8))
        used = {"nlist": nlist, "nprobe": int(index.nprobe), "seed": int(index.cp.seed)}
    else:
        m = int(params.get("hnsw_m", 32))
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params.get("ef_construction", 200))
        index.hnsw.efSearch = int(params.get("ef_search", 128))
        used = {
            "hnsw_m": m,
            "ef_construction": int(index.hnsw.efConstruction),
            "ef_search": int(index.hnsw.efSearch),
        }
    index.add(emb)
    return index, used


def _apply_search_params(index: Any, meta: dict[str, Any]) -> None:
    params = meta.get("index_params", {})
    if meta.get("index_type") == "ivf" and "nprobe" in params:
        index.nprobe = int(params["nprobe"])
    if meta.get("index_type") == "hnsw" and "ef_search" in params:
        index.hnsw.efSearch = int(params["ef_search"])


def build_index(
    docs: pd.DataFrame,
    encoder: Any,
    kind: str = "flat",
    name: str = "kb",
    source: str = "",
    threads: int | None = None,
    **params: Any,
) -> KnowledgeIndex:
    """Encode every doc with the article encoder and index the normalised vectors."""
    import faiss

    validate_docs(docs)
    if threads:
        faiss.omp_set_num_threads(int(threads))
    docs = docs[list(DOC_COLUMNS)].reset_index(drop=True)
    emb = l2_normalise(encoder.encode_articles(docs["title"].tolist(), docs["text"].tolist()))
    if not np.isfinite(emb).all():
        raise IndexError_("article encoder produced non-finite embeddings")
    index, used = make_faiss_index(emb, kind=kind, **params)
    meta = {
        "name": name,
        "source": str(source),
        "n_docs": len(docs),
        "n_topics": int(docs["topic_id"].nunique()),
        "docs_hash": docs_hash(docs),
        "dim": int(emb.shape[1]),
        "metric": "inner_product on L2-normalised vectors (cosine)",
        "index_type": kind,
        "index_params": used,
        "article_encoder": encoder.describe(),
        "faiss": faiss.__version__,
        "created_at": created_at_now(),
    }
    return KnowledgeIndex(index=index, docs=docs, embeddings=emb, meta=meta)


def save_index(ki: KnowledgeIndex, out_dir: str | os.PathLike) -> Path:
    import faiss

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "index.faiss") as tmp:
        faiss.write_index(ki.index, str(tmp))
    d = ki.dim
    table = pa.Table.from_pandas(ki.docs[list(DOC_COLUMNS)], preserve_index=False)
    flat = pa.array(ki.embeddings.astype(np.float32).reshape(-1), type=pa.float32())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, d))
    with atomic_path(out / "docs.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    write_text_atomic(out / "index.json", json.dumps(ki.meta, indent=2, sort_keys=True) + "\n")
    return out


def load_index(out_dir: str | os.PathLike) -> KnowledgeIndex:
    import faiss

    out = Path(out_dir)
    for name in ("index.faiss", "docs.parquet", "index.json"):
        if not (out / name).exists():
            raise IndexError_(
                f"knowledge index {out}: {name} missing (run `python -m extractors.rag index`)"
            )
    meta = json.loads((out / "index.json").read_text())
    index = faiss.read_index(str(out / "index.faiss"))
    _apply_search_params(index, meta)
    table = pq.read_table(out / "docs.parquet")
    col = table.column("embedding").combine_chunks()
    emb = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1)
    docs = table.drop_columns(["embedding"]).to_pandas()
    if index.ntotal != len(docs) or emb.shape[1] != meta["dim"]:
        raise IndexError_(
            f"knowledge index {out}: faiss has {index.ntotal} vectors, docs.parquet {len(docs)}"
        )
    if docs_hash(docs) != meta["docs_hash"]:
        raise IndexError_(
            f"knowledge index {out}: docs.parquet does not match index.json (docs hash)"
        )
    return KnowledgeIndex(index=index, docs=docs, embeddings=emb, meta=meta)
