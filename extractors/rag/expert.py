"""The RAG expert end to end: config, knowledge index, projection, bridge, embedding + provenance.

The RAG expert is produced by its own entry point (``python -m extractors.rag``), not by the
generic ``extract`` driver, because it reads the bridged text of a whole modality (the offline
nearest-report bridge needs the training split's embeddings) and two shared artefacts (the
knowledge index and the projection). Its output follows the cache contract (docs/design.md §3.2):
``results/{dataset}/embeddings/{modality}/rag.parquet``, written shard by shard and resumable,
plus ``rag.provenance.parquet`` beside it (sample_id, doc_ids, titles, scores, bridge source).

Artefacts, all under ``{results}/knowledge/{kb}/`` and shared by every dataset:
``index.faiss`` + ``docs.parquet`` + ``index.json`` (rule ``knowledge_index``) and
``projection.safetensors`` (rule ``rag_projection``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from extractors.base import SampleError
from extractors.batching import safe_reason as sample_reason
from extractors.cache import (
    CacheMeta,
    CacheRecords,
    ShardedCacheWriter,
    config_hash,
    package_versions,
)
from extractors.rag.bridge import read_bridge
from extractors.rag.encoders import build_encoder
from extractors.rag.index import build_index, load_index, save_index
from extractors.rag.knowledge import load_knowledge
from extractors.rag.retrieve import Retriever
from extractors.rag.softprompt import Projection, SoftPromptEncoder, fit_from_index
from medmix.io import atomic_path

log = logging.getLogger("medmix.rag")

EXPERT_NAME = "rag"
PACKAGES = ("torch", "transformers", "sentence-transformers", "faiss-cpu", "numpy", "safetensors")


@dataclass(frozen=True)
class KnowledgePaths:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.faiss"

    @property
    def docs(self) -> Path:
        return self.root / "docs.parquet"

    @property
    def meta(self) -> Path:
        return self.root / "index.json"

    @property
    def projection(self) -> Path:
        return self.root / "projection.safetensors"


def knowledge_paths(results: str | os.PathLike, rag: Mapping[str, Any]) -> KnowledgePaths:
    return KnowledgePaths(Path(results) / "knowledge" / str(rag["knowledge"]["name"]))


def provenance_path(cache_path: str | os.PathLike) -> Path:
    p = Path(cache_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".provenance.parquet")


# -- shared artefacts -------------------------------------------------------------------------


def run_index(
    rag: Mapping[str, Any], out_dir: str | os.PathLike, threads: int | None = None
) -> Path:
    kb = rag["knowledge"]
    docs = load_knowledge(
        kb["source"],
        max_words=int(kb.get("max_words", 150)),
        language=kb.get("language", "English"),
    )
    encoder = build_encoder(
        "rag/article_encoder", rag["article_encoder"], device=rag.get("device", "cpu")
    )
    params = {k: v for k, v in rag["index"].items() if k != "type"}
    ki = build_index(
        docs,
        encoder,
        kind=rag["index"].get("type", "flat"),
        name=kb["name"],
        source=kb["source"],
        threads=threads,
        **params,
    )
    out = save_index(ki, out_dir)
    log.info(
        "knowledge index %s: %d docs from %d topics, %s, dim %d",
        out,
        len(ki),
        ki.meta["n_topics"],
        ki.meta["index_type"],
        ki.dim,
    )
    return out


def run_projection(
    rag: Mapping[str, Any], index_dir: str | os.PathLike, out: str | os.PathLike
) -> Path:
    ki = load_index(index_dir)
    llm = SoftPromptEncoder(rag["llm"], device=rag.get("device", "cpu"))
    proj = fit_from_index(ki, llm, ridge=float(rag.get("projection", {}).get("ridge", 1e-3)))
    path = proj.save(out)
    log.info(
        "projection %s: %d docs, %d -> %d, R^2 %.3f",
        path,
        proj.meta["n_docs"],
        proj.in_dim,
        proj.out_dim,
        proj.meta["r2"],
    )
    return path


# -- the embedding ----------------------------------------------------------------------------


@dataclass
class EmbedSummary:
    path: Path
    provenance: Path
    n: int
    ok: int
    missing: int
    failed: int


class RagEncoder:
    """Bridged texts -> (RAG embeddings, retrieval); models load on first use."""

    def __init__(
        self, rag: Mapping[str, Any], index_dir: str | os.PathLike, projection: str | os.PathLike
    ) -> None:
        self.rag = rag
        self.index = load_index(index_dir)
        self.projection = Projection.load(projection)
        if self.projection.meta.get("docs_hash") not in (None, self.index.meta["docs_hash"]):
            raise ValueError(
                f"projection {projection} was fitted on another knowledge base than {index_dir}"
            )
        device = rag.get("device", "cpu")
        self.query_encoder = build_encoder("rag/query_encoder", rag["query_encoder"], device=device)
        self.retriever = Retriever(
            self.index,
            self.query_encoder,
            k=int(rag["k"]),
            batch_size=int(rag.get("batch_size", 16)),
        )
        self.llm = SoftPromptEncoder(rag["llm"], device=device)

    @property
    def dim(self) -> int:
        return self.projection.out_dim

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, Any]:
        retrieval = self.retriever.retrieve(texts)
        emb = self.llm.encode(texts, retrieval.pooled, self.projection)
        return emb, retrieval

    def describe(self) -> dict[str, Any]:
        return {
            "knowledge_base": self.index.meta.get("name"),
            "docs_hash": self.index.meta.get("docs_hash"),
            "index_type": self.index.meta.get("index_type"),
            "article_encoder": self.index.meta.get("article_encoder"),
            "query_encoder": self.query_encoder.describe(),
            "llm": self.llm.describe(),
            "k": int(self.rag["k"]),
            "projection": {
                k: v for k, v in self.projection.meta.items() if k in ("n_docs", "ridge", "r2")
            },
        }


_PROV_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("doc_ids", pa.list_(pa.string())),
        ("titles", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("bridge_source", pa.string()),
    ]
)


def _prov_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=_PROV_SCHEMA)


def _column(frame: pd.DataFrame, name: str) -> list[str | None]:
    """A string column as Python values, None where null (pandas may hand out NaN)."""
    return [
        None if (v is None or (isinstance(v, float) and v != v)) else str(v)
        for v in frame[name].tolist()
    ]


def run_embed(
    rag: Mapping[str, Any],
    bridge_path: str | os.PathLike,
    index_dir: str | os.PathLike,
    projection: str | os.PathLike,
    out: str | os.PathLike,
    provenance: str | os.PathLike | None = None,
    dataset: str = "",
    modality: str = "",
    dtype: str = "float32",
    shard_size: int | None = None,
) -> EmbedSummary:
    """Write the RAG cache (resumable shards) and its provenance for one bridged modality."""
    frame, bmeta = read_bridge(bridge_path)
    enc = RagEncoder(rag, index_dir, projection)
    provenance = Path(provenance) if provenance else provenance_path(out)
    dataset = dataset or bmeta.get("dataset", "")
    modality = modality or bmeta.get("modality", "")
    chain = enc.describe()
    meta = CacheMeta(
        expert=EXPERT_NAME,
        model_id=f"rag:{chain['llm']}",
        revision=enc.llm.spec.revision if not enc.llm.spec.random_init else None,
        dim=enc.dim,
        pooling="mean of final hidden states over the soft-prompt token and the text tokens",
        preprocess_hash=config_hash(
            {
                "chain": chain,
                "bridge": bmeta.get("bridge"),
                "bridge_generator": bmeta.get("generator"),
            }
        ),
        dtype=dtype,
        dataset=dataset,
        modality=modality,
        packages=package_versions(PACKAGES),
        extra={"chain": chain, "bridge": bmeta.get("bridge"), "provenance": provenance.name},
    )
    ids = frame["sample_id"].astype(str).tolist()
    status_in = frame["status"].astype(str).tolist()
    texts_in = _column(frame, "text")
    sources_in = _column(frame, "source")
    reasons_in = _column(frame, "reason")
    shard = int(shard_size or rag.get("shard_size", 256))
    plan = {
        "samples": config_hash({"ids": ids, "status": status_in, "text": texts_in}),
        "shard_size": shard,
    }
    writer = ShardedCacheWriter(out, meta, plan)
    n_shards = max(1, (len(ids) + shard - 1) // shard)
    batch = int(rag.get("batch_size", 16))
    for s in range(n_shards):
        if writer.done(s) and (writer.shard_dir / f"prov-{s:06d}.parquet").exists():
            continue
        lo, hi = s * shard, min(len(ids), (s + 1) * shard)
        emb = np.zeros((hi - lo, enc.dim), np.float32)
        status = list(status_in[lo:hi])
        reason = [
            None if st == "ok" else (f"bridge: {r}" if st == "failed" else (r or st))
            for st, r in zip(status, reasons_in[lo:hi], strict=True)
        ]
        prov = [
            {
                "sample_id": ids[i],
                "doc_ids": None,
                "titles": None,
                "scores": None,
                "bridge_source": sources_in[i],
            }
            for i in range(lo, hi)
        ]
        todo = [i for i in range(lo, hi) if status_in[i] == "ok"]
        for b0 in range(0, len(todo), batch):
            chunk = todo[b0 : b0 + batch]
            texts = [str(texts_in[i]) for i in chunk]
            try:
                vecs, ret = enc(texts)
            except Exception as exc:  # isolate the bad sample
                # the type only: a tokenizer's or model's message can quote the note
                log.warning(
                    "%s/%s/rag: a batch of %d failed (%s); retrying one by one",
                    dataset,
                    modality,
                    len(chunk),
                    type(exc).__name__,
                )
                vecs, ret = None, None
            for j, i in enumerate(chunk):
                try:
                    if vecs is None:
                        v1, r1 = enc([texts[j]])
                        vec, doc_ids, titles, scores = (
                            v1[0],
                            r1.doc_ids[0],
                            r1.titles[0],
                            r1.scores[0],
                        )
                    else:
                        vec, doc_ids, titles, scores = (
                            vecs[j],
                            ret.doc_ids[j],
                            ret.titles[j],
                            ret.scores[j],
                        )
                    if not np.isfinite(vec).all():
                        raise SampleError("non-finite embedding")
                    emb[i - lo] = vec
                    prov[i - lo].update(
                        doc_ids=list(doc_ids),
                        titles=list(titles),
                        scores=[float(x) for x in scores],
                    )
                except Exception as exc:
                    status[i - lo], reason[i - lo] = "failed", safe_reason(exc, texts[j])
        with atomic_path(writer.shard_dir / f"prov-{s:06d}.parquet") as tmp:
            pq.write_table(_prov_table(prov), tmp)
        writer.write_shard(s, CacheRecords(ids[lo:hi], emb, status, reason))
    prov_table = pa.concat_tables(
        [pq.read_table(writer.shard_dir / f"prov-{s:06d}.parquet") for s in range(n_shards)]
    )
    prov_table = prov_table.replace_schema_metadata(
        {
            b"medmix.rag": json.dumps(
                {"dataset": dataset, "modality": modality, **chain}, sort_keys=True, default=str
            ).encode()
        }
    )
    with atomic_path(provenance) as tmp:
        pq.write_table(prov_table, tmp)
    path = writer.finalize(n_shards)

    from extractors.cache import read_cache

    data = read_cache(path)
    summary = EmbedSummary(
        path=path,
        provenance=provenance,
        n=len(ids),
        ok=int(data.ok.sum()),
        missing=int((data.status == "missing").sum()),
        failed=int((data.status == "failed").sum()),
    )
    log.info(
        "%s/%s/rag: %d ok, %d missing, %d failed",
        dataset,
        modality,
        summary.ok,
        summary.missing,
        summary.failed,
    )
    return summary


def safe_reason(exc: BaseException, text: str) -> str:
    """The cache's failure reason for a sample the RAG chain failed on (never the exception's
    message, which can quote the note: :func:`extractors.batching.safe_reason`)."""
    return sample_reason(exc, "the RAG chain", f"text of {len(text)} characters")


def read_provenance(path: str | os.PathLike) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()
