"""Stage 2b: the retrieval context as one soft-prompt token of Qwen2-0.5B -> the RAG embedding.

Projection (fitted once, without labels, on the knowledge base alone). For every document d of
the knowledge base, x_d is its (L2-normalised) MedCPT article embedding, as stored in the index,
and y_d the mean of Qwen2's *input* token embeddings over the tokens of ``"{title}. {text}"``
(no special tokens, the first ``max_length``, never padding; a lookup in ``embed_tokens``, no
forward pass). The map

    y ≈ W (x − x̄) + b,     [W; b] = argmin Σ_d ‖W (x_d − x̄) + b − y_d‖² + λ‖W‖²

is solved in closed form (b = ȳ). λ = ridge · trace(X̃ᵀX̃)/D with ridge = 1e-3 by default: a
numerical safeguard that does not change a well-conditioned fit but keeps W bounded when the
article embeddings barely vary (randomly initialised encoders); ``ridge: 0`` gives plain least
squares (``numpy.linalg.lstsq``, the minimum-norm solution when there are fewer documents than
dimensions). The map is evaluated in float64, row by row, so a sample's soft token does not
depend on its batch. It sends a point of the retrieval space to the region of Qwen2's input
space where text about that content lives. Nothing about a cohort, a
split or a label enters it; it is saved as ``projection.safetensors`` beside the index.

Encoding (per sample). The pooled retrieval vector r (mean of the k retrieved docs' article
embeddings) becomes the soft token s = W (r − x̄) + b. It is prepended to the input embeddings of the
tokenised bridged text (right padding, attention mask [1, mask]); Qwen2 runs under
``torch.inference_mode`` in eval mode; the final hidden states are mean-pooled over the positions
whose mask is 1 (the soft token and the real text tokens, never padding). Output: (N, hidden)
float32, deterministic and gradient-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extractors.loading import ModelSpec, load_model_and_tokenizer
from medmix.io import atomic_path
from medmix.rag_settings import QWEN2_05B


@dataclass
class Projection:
    """``s = (x - center) @ weight + bias``, evaluated row by row in float64."""

    weight: np.ndarray  # (D_retrieval, H)
    bias: np.ndarray  # (H,)
    center: np.ndarray | None = None  # (D_retrieval,) mean article embedding of the fit
    meta: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.center is not None:
            x = x - self.center.astype(np.float64)
        return (x @ self.weight.astype(np.float64) + self.bias.astype(np.float64)).astype(
            np.float32
        )

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[1])

    def save(self, path: str | os.PathLike) -> Path:
        import torch
        from safetensors.torch import save_file

        tensors = {
            "weight": torch.from_numpy(np.ascontiguousarray(self.weight, np.float64)),
            "bias": torch.from_numpy(np.ascontiguousarray(self.bias, np.float64)),
        }
        if self.center is not None:
            tensors["center"] = torch.from_numpy(np.ascontiguousarray(self.center, np.float64))
        with atomic_path(path) as tmp:
            save_file(
                tensors,
                str(tmp),
                metadata={"medmix.projection": json.dumps(self.meta, sort_keys=True)},
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Projection:
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"projection {path} not found (run `python -m extractors.rag project`)"
            )
        with safe_open(str(path), framework="np") as fh:
            meta = json.loads((fh.metadata() or {}).get("medmix.projection", "{}"))
            names = set(fh.keys())
            center = fh.get_tensor("center") if "center" in names else None
            return cls(
                weight=fh.get_tensor("weight"), bias=fh.get_tensor("bias"), center=center, meta=meta
            )


def fit_projection(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> Projection:
    """Least squares from x (N, D) to y (N, H) on centred x: ``y ≈ (x - x̄) W + b``.

    ``ridge`` is relative: λ = ridge · trace(X̃ᵀX̃)/D (X̃ = centred x), a numerical safeguard
    that leaves a well-conditioned fit unchanged and keeps W bounded when the embeddings barely
    vary (randomly initialised encoders). ``ridge=0``: plain least squares, minimum-norm.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"projection fit needs matching rows (>= 2), got {x.shape} and {y.shape}")
    center = x.mean(0)
    xc = x - center
    b = y.mean(0)
    yc = y - b
    if ridge > 0:
        lam = float(ridge) * float(np.trace(xc.T @ xc)) / x.shape[1]
        w = np.linalg.solve(xc.T @ xc + max(lam, 1e-12) * np.eye(x.shape[1]), xc.T @ yc)
    else:
        w, *_ = np.linalg.lstsq(xc, yc, rcond=None)
    pred = xc @ w + b
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float((yc**2).sum()) or 1.0
    meta = {
        "n_docs": int(x.shape[0]),
        "in_dim": int(x.shape[1]),
        "out_dim": int(y.shape[1]),
        "ridge": float(ridge),
        "r2": 1 - ss_res / ss_tot,
    }
    return Projection(weight=w, bias=b, center=center, meta=meta)


class SoftPromptEncoder:
    """Qwen2 (or any decoder with ``get_input_embeddings`` and ``inputs_embeds``) + one soft token."""

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu", name: str = "rag/llm") -> None:
        self.cfg = {**QWEN2_05B, **dict(cfg)}
        self.spec = ModelSpec.from_config(name, self.cfg, model_class="Qwen2Model")
        self.max_length = int(self.cfg.get("max_length", 512))
        self.batch_size = int(self.cfg.get("batch_size", 8))
        self.device = device
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch

            dtype = getattr(torch, self.cfg["dtype"]) if self.cfg.get("dtype") else None
            model, tok = load_model_and_tokenizer(self.spec, device=self.device, dtype=dtype)
            tok.padding_side = "right"
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._model, self._tok = model, tok
        return self._model, self._tok

    @property
    def hidden_size(self) -> int:
        return int(self._load()[0].config.hidden_size)

    def describe(self) -> str:
        return self.spec.describe()

    def _tokenise(self, texts: Sequence[str], special: bool) -> Any:
        _, tok = self._load()
        return tok(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=special,
            return_tensors="pt",
        ).to(self.device)

    def doc_targets(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Mean input-token embedding of each ``"{title}. {text}"`` (the regression targets)."""
        import torch

        model, _ = self._load()
        emb = model.get_input_embeddings()
        docs = [f"{t}. {x}" for t, x in zip(titles, texts, strict=True)]
        out = []
        with torch.inference_mode():
            for i in range(0, len(docs), 64):
                enc = self._tokenise(docs[i : i + 64], special=False)
                vec = emb(enc["input_ids"]).float()
                m = enc["attention_mask"].unsqueeze(-1).float()
                out.append(((vec * m).sum(1) / m.sum(1).clamp_min(1)).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def encode(
        self, texts: Sequence[str], pooled: np.ndarray, projection: Projection
    ) -> np.ndarray:
        """RAG embeddings (N, hidden) for bridged texts and their pooled retrieval vectors."""
        import torch

        model, _ = self._load()
        if len(texts) != len(pooled):
            raise ValueError(f"{len(texts)} texts but {len(pooled)} retrieval vectors")
        hidden = int(model.config.hidden_size)
        if projection.out_dim != hidden:
            raise ValueError(
                f"projection maps to {projection.out_dim}-d but {self.describe()} has hidden size {hidden}"
            )
        if len(texts) == 0:
            return np.zeros((0, hidden), np.float32)
        emb_layer = model.get_input_embeddings()
        soft_all = torch.from_numpy(projection(pooled))
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tokenise(texts[i : i + self.batch_size], special=True)
                tok_emb = emb_layer(enc["input_ids"])
                soft = (
                    soft_all[i : i + self.batch_size]
                    .to(device=tok_emb.device, dtype=tok_emb.dtype)
                    .unsqueeze(1)
                )
                inputs = torch.cat([soft, tok_emb], dim=1)
                ones = torch.ones_like(enc["attention_mask"][:, :1])
                mask = torch.cat([ones, enc["attention_mask"]], dim=1)
                positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
                h = model(
                    inputs_embeds=inputs, attention_mask=mask, position_ids=positions
                ).last_hidden_state.float()
                m = mask.unsqueeze(-1).float()
                out.append(((h * m).sum(1) / m.sum(1)).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def fit_from_index(index: Any, encoder: SoftPromptEncoder, ridge: float = 1e-3) -> Projection:
    """The label-free projection (docs/design.md §4): article embeddings -> mean Qwen2 input embeddings."""
    y = encoder.doc_targets(index.docs["title"].tolist(), index.docs["text"].tolist())
    proj = fit_projection(index.embeddings, y, ridge=ridge)
    proj.meta.update(
        {
            "knowledge_base": index.meta.get("name"),
            "docs_hash": index.meta.get("docs_hash"),
            "article_encoder": index.meta.get("article_encoder"),
            "llm": encoder.describe(),
            "fitted_on": "knowledge base documents only (no cohort data, no labels)",
        }
    )
    return proj
