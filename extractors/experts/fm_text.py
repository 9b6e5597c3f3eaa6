"""Text foundation-model experts: GatorTron-B, Qwen2 (0.5B / 7B teacher), MedCPT (query / article).

All are transformers encoders run through :class:`HFTextExpert` (registered ``hf-text``; the
named experts below only change its defaults). all-MiniLM-L6-v2 is the existing ``minilm``.

Long notes are never truncated silently. A note is tokenised once (no special tokens) and cut
into consecutive chunks of at most ``max_length - n_special`` tokens, at word boundaries (the
first word piece of a cut word moves to the next chunk); each chunk gets the model's special
tokens back (e.g. ``[CLS] … [SEP]``; none for Qwen2), the chunks are encoded, pooled one by one
(``pooling``), and averaged weighted by their token counts. ``max_chunks`` (default: no limit)
caps the cost of pathological notes by keeping evenly spaced chunks. The number of chunks (and
tokens) of every note is recorded in the cache's per-sample ``extra`` column and summarised in
its metadata.

Pooling (per chunk; ``pooling:``):

* ``cls``: the first token's last hidden state (BERT-style ``[CLS]``; MedCPT as published);
* ``mean``: mean of the last hidden states over the real (non-padding) tokens — the default for
  GatorTron and for Qwen2;
* ``last``: the last real token's last hidden state (decoder-only models; Qwen2 ``pooling: last``).

Batches are right-padded, with the attention mask, so a note's embedding does not depend on
what it is batched with (padding invariance, tested). ``normalize: true`` L2-normalises the
pooled vector (default off: the fusion model standardises its inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import FMExpert, autocast_dtype, forward_chunks
from extractors.loading import ModelSpec, load_model, load_tokenizer
from extractors.readers.notes import read_note
from extractors.registry import register_expert

POOLINGS = ("cls", "mean", "last")

# Pins shared with the RAG chain (extractors/rag/encoders.py, extractors/rag/softprompt.py).
MEDCPT_QUERY_ID = ("ncbi/MedCPT-Query-Encoder", "d83a36cc6b8e3a5c5e9d9d6ba156808c1643dcbc")
MEDCPT_ARTICLE_ID = ("ncbi/MedCPT-Article-Encoder", "d05a736da4bb84ee4057b7f7999485be6ed85465")
QWEN2_05B_ID = ("Qwen/Qwen2-0.5B", "91d2aff3f957f99e4c74c962f2f408dcc88a18d8")


@dataclass
class TextItem:
    chunks: list[list[int]]  # token ids of each chunk, special tokens included
    n_tokens: list[int]  # content tokens per chunk (the pooling weights)
    n_chunks_total: int  # chunks before the max_chunks cap


def special_template(tok: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special-token ids the tokenizer wraps a single text with."""
    for probe in ("a", "the", "x"):
        plain = tok(probe, add_special_tokens=False)["input_ids"]
        full = tok(probe, add_special_tokens=True)["input_ids"]
        for k in range(len(full) - len(plain) + 1):
            if plain and full[k : k + len(plain)] == plain:
                return list(full[:k]), list(full[k + len(plain) :])
    return [], []


def chunk_ids(ids: list[int], words: list[int | None] | None, window: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of at most ``window`` tokens, cut between words where possible."""
    n = len(ids)
    out = []
    start = 0
    while start < n:
        end = min(n, start + window)
        if end < n and words is not None:
            cut = end
            while cut > start + 1 and words[cut] is not None and words[cut] == words[cut - 1]:
                cut -= 1
            end = cut if cut > start + 1 else end
        out.append((start, end))
        start = end
    return out


@register_expert("hf-text")
class HFTextExpert(FMExpert):
    """A transformers text encoder (``model_class``) with chunking and cls/mean/last pooling."""

    kind = "text"
    packages = ("torch", "transformers", "tokenizers", "numpy")
    import_names = (("torch", "torch"), ("transformers", "transformers"))
    default_pooling = "mean"
    default_max_length = 512
    model_class = "AutoModel"

    def __init__(
        self,
        model_class: str | None = None,
        tokenizer: str | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        max_chunks: int | None = None,
        normalize: bool = False,
        **config: Any,
    ) -> None:
        self.check_source_keys(config)
        pooling = pooling or self.default_pooling
        if pooling not in POOLINGS:
            raise ValueError(
                f"{self.registry_name}: pooling must be one of {POOLINGS}, got {pooling!r}"
            )
        if model_class:
            self.model_class = str(model_class)
        max_length = int(max_length or self.default_max_length)
        super().__init__(
            config,
            model_class=self.model_class,
            tokenizer=tokenizer,
            pooling=pooling,
            max_length=max_length,
            max_chunks=int(max_chunks) if max_chunks else None,
            normalize=bool(normalize),
        )
        self._tok: Any = None
        self._template: tuple[list[int], list[int]] | None = None

    # -- description ----------------------------------------------------------------------
    def model_spec(self) -> ModelSpec:
        return replace(super().model_spec(), tokenizer=self.params["tokenizer"])

    @property
    def dim(self) -> int:
        return self.configured_dim("hidden_size", lambda model: model.config.hidden_size)

    @property
    def pooling(self) -> str:
        p = self.params
        return (
            f"{p['pooling']} per chunk of <= {p['max_length']} tokens; token-weighted mean over chunks"
            + ("; l2" if p["normalize"] else "")
        )

    # -- model ----------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = load_tokenizer(self.model_spec())
        return self._tok

    def _load_model(self) -> Any:
        spec = self.model_spec()
        extra: dict[str, Any] = {}
        if spec.random_init:
            tok = self.get_tokenizer()
            if "vocab_size" not in spec.config:
                extra["vocab_size"] = len(tok)
            if tok.pad_token_id is not None and "pad_token_id" not in spec.config:
                extra["pad_token_id"] = tok.pad_token_id
        # Weights in the autocast dtype on a GPU (a 7B model in bf16 fits where fp32 would not).
        dtype = autocast_dtype(self.run_device, self.precision)
        return load_model(spec, device=self.run_device, dtype=dtype, **extra)

    @property
    def template(self) -> tuple[list[int], list[int]]:
        if self._template is None:
            self._template = special_template(self.get_tokenizer())
        return self._template

    @property
    def window(self) -> int:
        pre, post = self.template
        win = int(self.params["max_length"]) - len(pre) - len(post)
        if win < 1:
            raise ValueError(
                f"{self.name}: max_length {self.params['max_length']} leaves no room for text"
            )
        return win

    # -- work -----------------------------------------------------------------------------
    def chunk(self, text: str) -> TextItem:
        tok = self.get_tokenizer()
        enc = tok(text, add_special_tokens=False, verbose=False)
        ids = list(enc["input_ids"])
        if not ids:
            raise SampleError("empty text")
        try:
            words = enc.word_ids()
        except (AttributeError, ValueError):  # a slow tokenizer: cut anywhere
            words = None
        ranges = chunk_ids(ids, words, self.window)
        total = len(ranges)
        cap = self.params["max_chunks"]
        if cap and len(ranges) > cap:
            keep = np.unique(np.round(np.linspace(0, len(ranges) - 1, cap)).astype(int))
            ranges = [ranges[i] for i in keep]
        pre, post = self.template
        chunks = [pre + ids[a:b] + post for a, b in ranges]
        return TextItem(chunks, [b - a for a, b in ranges], total)

    def load(self, value: str, root: Path) -> TextItem:
        return self.chunk(read_note(value))

    def item_info(self, item: TextItem) -> dict[str, Any]:
        return {
            "n_chunks": item.n_chunks_total,
            "n_chunks_used": len(item.chunks),
            "n_tokens": int(sum(item.n_tokens)),
        }

    def _pad(self, seqs: list[list[int]]) -> tuple[Any, Any]:
        import torch

        pad = self.get_tokenizer().pad_token_id
        pad = 0 if pad is None else int(pad)
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: real tokens keep positions 0..len-1
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    def _pool(self, hidden: Any, mask: Any) -> Any:
        how = self.params["pooling"]
        if how == "cls":
            return hidden[:, 0]
        if how == "last":
            import torch

            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)

    def encode_chunks(self, seqs: list[list[int]]) -> np.ndarray:
        """Pooled vectors of token-id sequences, (N, dim) float32 (sorted by length inside)."""
        model = self.get_model()
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        with self.inference():
            for sl in forward_chunks(len(seqs), self.batch_size):
                idx = order[sl]
                ids, mask = self._pad([seqs[i] for i in idx])
                ids, mask = ids.to(self.run_device), mask.to(self.run_device)
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                out[idx] = self.to_numpy(self._pool(hidden, mask))
        return out

    def embed(self, batch: list[TextItem]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = [c for item in batch for c in item.chunks]
        vecs = self.encode_chunks(flat).astype(np.float64)
        out = np.zeros((len(batch), self.dim), dtype=np.float64)
        i = 0
        for b, item in enumerate(batch):
            k = len(item.chunks)
            w = np.asarray(item.n_tokens, dtype=np.float64)
            out[b] = (vecs[i : i + k] * w[:, None]).sum(axis=0) / w.sum()
            i += k
        if self.params["normalize"]:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


@register_expert("gatortron")
class GatorTronExpert(HFTextExpert):
    """GatorTron-Base (UF Health; ``MegatronBertModel``, 345M, 1024-d), mean pooling, 512 tokens.

    The hub repository ``UFNLP/gatortron-base`` has no pinned revision here: set ``revision:`` to
    the commit you downloaded (``hf download UFNLP/gatortron-base`` prints it)."""

    model_class = "MegatronBertModel"
    default_model_id = "UFNLP/gatortron-base"
    default_pooling = "mean"
    default_max_length = 512


@register_expert("qwen2")
class Qwen2TextExpert(HFTextExpert):
    """Qwen2 decoder (``Qwen2Model``) as a text encoder: by default the mean of the last hidden
    states over the real tokens (``pooling: last`` takes the last real token instead), in
    1024-token chunks. Default weights Qwen2-0.5B (896-d); the Qwen2-7B teacher (3584-d) is the
    same expert with ``model_id: Qwen/Qwen2-7B`` (on a GPU, weights load in bf16)."""

    model_class = "Qwen2Model"
    default_model_id, default_revision = QWEN2_05B_ID
    default_pooling = "mean"
    default_max_length = 1024


@register_expert("medcpt-query")
class MedCPTQueryExpert(HFTextExpert):
    """MedCPT query encoder (``BertModel``, [CLS], 64 tokens as published; longer notes are chunked)."""

    model_class = "BertModel"
    default_model_id, default_revision = MEDCPT_QUERY_ID
    default_pooling = "cls"
    default_max_length = 64


@register_expert("medcpt-article")
class MedCPTArticleExpert(HFTextExpert):
    """MedCPT article encoder (``BertModel``, [CLS], 512 tokens); a note is encoded as the text of
    one article (no title)."""

    model_class = "BertModel"
    default_model_id, default_revision = MEDCPT_ARTICLE_ID
    default_pooling = "cls"
    default_max_length = 512
