"""Stage 2a: retrieve the top-k knowledge documents for each bridged text.

The query encoder (MedCPT query side) embeds the bridged text; the k nearest documents under
cosine similarity come from the knowledge index; their (normalised) article embeddings are
mean-pooled into one retrieval context vector per sample. ``k`` is one number from the config,
the same for every dataset and modality.

Each sample is retrieved on its own text only: the index is static, so nothing about any other
sample, its split or its label can change what a sample retrieves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from extractors.rag.encoders import l2_normalise
from extractors.rag.index import IndexError_, KnowledgeIndex


@dataclass
class Retrieval:
    doc_ids: list[list[str]]  # per sample, best first
    titles: list[list[str]]
    scores: np.ndarray  # (N, k) cosine similarities, best first
    pooled: np.ndarray  # (N, D) mean of the retrieved docs' normalised article embeddings


class Retriever:
    def __init__(
        self, index: KnowledgeIndex, query_encoder: Any, k: int, batch_size: int = 64
    ) -> None:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if int(k) > len(index):
            raise IndexError_(
                f"k={k} exceeds the {len(index)} documents of knowledge base {index.meta.get('name')!r}"
            )
        self.index = index
        self.encoder = query_encoder
        self.k = int(k)
        self.batch_size = int(batch_size)
        self._doc_ids = index.docs["doc_id"].astype(str).to_numpy()
        self._titles = index.docs["title"].astype(str).to_numpy()

    def check_compatible(self) -> None:
        qdim = int(self.encoder.dim)
        if qdim != self.index.dim:
            raise IndexError_(
                f"query encoder {self.encoder.describe()} is {qdim}-d but the index "
                f"(article encoder {self.index.meta.get('article_encoder')}) is {self.index.dim}-d"
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalise(self.encoder.encode_queries(list(texts)))

    def search_vectors(self, queries: np.ndarray) -> Retrieval:
        scores, idx = self.index.search(queries, self.k)
        pooled = self.index.embeddings[idx].mean(axis=1).astype(np.float32)
        return Retrieval(
            doc_ids=[list(self._doc_ids[row]) for row in idx],
            titles=[list(self._titles[row]) for row in idx],
            scores=scores,
            pooled=pooled,
        )

    def retrieve(self, texts: Sequence[str]) -> Retrieval:
        if not texts:
            d = self.index.dim
            return Retrieval(
                [], [], np.zeros((0, self.k), np.float32), np.zeros((0, d), np.float32)
            )
        self.check_compatible()
        parts = [
            self.encode(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return self.search_vectors(np.concatenate(parts))


def recall_at_k(retrieved_topics: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Fraction of queries whose target topic is among the first k retrieved topics."""
    if not targets:
        return float("nan")
    hits = sum(t in list(r)[:k] for r, t in zip(retrieved_topics, targets, strict=True))
    return hits / len(targets)
