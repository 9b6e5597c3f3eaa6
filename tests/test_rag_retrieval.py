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
from pathlib import Path

import pytest

from extractors.rag.encoders import build_encoder
from extractors.rag.index import build_index
from extractors.rag.knowledge import build_docs
from extractors.rag.retrieve import Retriever, recall_at_k

MEDQUAD = (
    Path(__file__).resolve().parents[2]
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
