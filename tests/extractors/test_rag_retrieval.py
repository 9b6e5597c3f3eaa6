"""Retrieval recall on the real MedlinePlus base (981 MedQuAD topics), real MiniLM encoder.

The packaged all-MiniLM-L6-v2 (real weights) stands in for MedCPT, whose weights are not
available offline. Queries are real topic titles and their real synonyms (MedQuAD
annotations); a query is a hit when a chunk of its own topic is among the top k. To keep the
test within the CPU budget, article chunks are encoded with their first 24 word pieces (title +
opening words; the title is always included) — the encoder, the index and the search are the
production ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.rag.encoders import build_encoder, l2_normalise
from extractors.rag.index import build_index, load_index, save_index
from extractors.rag.knowledge import build_docs
from extractors.rag.retrieve import Retriever, recall_at_k

MEDQUAD = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "realdata"
    / "medlineplus"
    / "medquad_mplus_topics"
)
if not MEDQUAD.exists():
    MEDQUAD = Path("/work/shared/realdata/medlineplus/medquad_mplus_topics")
K = 5  # the demo config's rag.k


@pytest.mark.slow
def test_recall_titles_and_synonyms_real_base(capsys: pytest.CaptureFixture) -> None:
    if not MEDQUAD.exists():
        pytest.skip(f"real MedQuAD topics not at {MEDQUAD}")
    t0 = time.perf_counter()
    docs = build_docs(MEDQUAD)
    assert docs["topic_id"].nunique() == 981
    # one MiniLM instance serves both sides (queries are far shorter than 24 word pieces)
    encoder = build_encoder(
        "minilm", {"type": "sentence-transformers", "max_length": 24, "batch_size": 128}
    )
    index = build_index(docs, encoder, name="medlineplus-medquad", source=str(MEDQUAD), threads=2)
    t_index = time.perf_counter() - t0

    # every 5th topic: its title and all its synonyms (real MedQuAD annotations)
    topics = docs.drop_duplicates("topic_id").iloc[::5]
    queries, targets, kinds = [], [], []
    for row in topics.itertuples():
        queries.append(row.title), targets.append(row.topic_id), kinds.append("title")
        for syn in row.synonyms:
            queries.append(syn), targets.append(row.topic_id), kinds.append("synonym")
    t1 = time.perf_counter()
    res = Retriever(index, encoder, k=10, batch_size=512).retrieve(queries)
    t_query = time.perf_counter() - t1
    topic_of = dict(zip(docs["doc_id"], docs["topic_id"], strict=True))
    got = [[topic_of[d] for d in row] for row in res.doc_ids]

    def recall(kind: str | None, k: int) -> float:
        sel = [i for i, kd in enumerate(kinds) if kind is None or kd == kind]
        return recall_at_k([got[i] for i in sel], [targets[i] for i in sel], k)

    with capsys.disabled():
        print(
            f"\n[rag recall] {len(docs)} docs / 981 topics indexed in {t_index:.1f}s; "
            f"{len(queries)} queries ({kinds.count('title')} titles, {kinds.count('synonym')} synonyms) in {t_query:.1f}s"
        )
        for k in (1, K, 10):
            print(
                f"[rag recall] recall@{k}: all {recall(None, k):.3f}  titles {recall('title', k):.3f}  synonyms {recall('synonym', k):.3f}"
            )
    assert recall("title", K) > 0.95  # titles find their own topic
    assert recall(None, K) > 0.8
    assert (
        res.scores.shape == (len(queries), 10)
        and (res.scores[:, :-1] >= res.scores[:, 1:] - 1e-6).all()
    )


# -- the search itself, on small random bases (fast) ------------------------------------------


class VectorEncoder:
    """Query and article encoder over fixed vectors: the text names its vector."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.dim = len(next(iter(vectors.values())))

    def encode_articles(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)

    def describe(self) -> str:
        return "fixed-vectors"


def random_base(
    n: int, d: int, n_queries: int, seed: int = 0
) -> tuple[pd.DataFrame, VectorEncoder]:
    """``n`` docs and ``n_queries`` queries with i.i.d. Gaussian vectors (no cluster structure,
    the hard case for IVF)."""
    rng = np.random.default_rng(seed)
    vectors = {f"doc {i}": rng.normal(size=d) for i in range(n)}
    vectors |= {f"query {i}": rng.normal(size=d) for i in range(n_queries)}
    docs = pd.DataFrame(
        {
            "doc_id": [f"t{i // 2}#{i % 2:02d}" for i in range(n)],
            "topic_id": [f"t{i // 2}" for i in range(n)],
            "title": [f"topic {i // 2}" for i in range(n)],
            "synonyms": [[] for _ in range(n)],
            "url": [""] * n,
            "text": [f"doc {i}" for i in range(n)],
        }
    )
    return docs, VectorEncoder(vectors)


def test_pooled_vector_is_the_mean_of_the_retrieved_docs_embeddings() -> None:
    docs, enc = random_base(300, 16, 20, seed=1)
    ki = build_index(docs, enc, name="random")
    res = Retriever(ki, enc, k=4, batch_size=7).retrieve([f"query {i}" for i in range(20)])
    row_of = {d: i for i, d in enumerate(ki.docs["doc_id"])}
    for i, ids in enumerate(res.doc_ids):
        rows = [row_of[d] for d in ids]
        vecs = ki.embeddings[rows]
        assert np.allclose(res.pooled[i], vecs.mean(axis=0), atol=1e-7)
        # and they are the exact top 4 by cosine, best first, with their cosine as score
        q = l2_normalise(enc.vectors[f"query {i}"][None])[0]
        cos = ki.embeddings @ q
        assert rows == list(np.argsort(-cos)[:4])
        assert np.allclose(res.scores[i], cos[rows], atol=1e-5)
        assert res.titles[i] == ki.docs["title"].iloc[rows].tolist()
    # the stored article vectors are the encoder's, L2-normalised
    raw = enc.encode_articles(docs["title"], docs["text"])
    assert np.allclose(ki.embeddings, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "params", "weak"),
    [
        ("ivf", {"nlist": 16, "nprobe": 12}, {"nlist": 16, "nprobe": 1}),
        ("hnsw", {"hnsw_m": 16, "ef_search": 64}, None),
    ],
)
def test_approximate_index_recall_against_exact(
    tmp_path: Path, kind: str, params: dict, weak: dict | None
) -> None:
    """IVF / HNSW find (nearly) the exact top k when probed adequately; the parameters are
    saved and reapplied on load. 2000 random 32-d docs, 200 queries, k = 10."""
    docs, enc = random_base(2000, 32, 200, seed=2)
    queries = [f"query {i}" for i in range(200)]
    k = 10
    exact = Retriever(build_index(docs, enc, kind="flat", threads=1), enc, k=k).retrieve(queries)

    def recall(ki) -> float:
        got = Retriever(ki, enc, k=k).retrieve(queries)
        return float(
            np.mean(
                [len(set(a) & set(b)) / k for a, b in zip(got.doc_ids, exact.doc_ids, strict=True)]
            )
        )

    ki = build_index(docs, enc, kind=kind, threads=1, **params)
    assert ki.meta["index_type"] == kind
    assert {p: ki.meta["index_params"][p] for p in params} == params
    loaded = load_index(save_index(ki, tmp_path / kind))
    r = recall(loaded)  # search parameters come back from index.json
    print(f"\n[rag index] {kind} {params}: recall@{k} vs flat = {r:.3f}")
    assert r >= 0.9
    if weak is not None:  # probing one cell misses neighbours: the check above can fail
        assert recall(build_index(docs, enc, kind=kind, threads=1, **weak)) < r - 0.2
