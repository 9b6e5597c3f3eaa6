"""Text FM experts (GatorTron, Qwen2, MedCPT) on tiny random-init models: shape, determinism,
padding invariance, chunking without truncation, the loading policy, one extraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extractors.cache import read_cache
from extractors.extract import extract
from extractors.loading import RemoteCodeRefused, WeightsNotFound
from extractors.registry import create_expert
from tests.fm_helpers import TINY_BERT, TINY_QWEN2, assert_padding_invariant
from tests.helpers import tiny_text_manifest

NOTE = (
    "Chest radiograph: the cardiomediastinal silhouette is within normal limits. There is a "
    "small left pleural effusion with adjacent atelectasis; no pneumothorax. Degenerative "
    "changes of the thoracic spine. Impression: small effusion, otherwise unremarkable. "
)
CASES = {
    "gatortron": ("gatortron", {"config": TINY_BERT}),
    "qwen2-mean": ("qwen2", {"config": TINY_QWEN2}),
    "qwen2-last": ("qwen2", {"config": TINY_QWEN2, "pooling": "last"}),
    "medcpt-query": ("medcpt-query", {"config": TINY_BERT}),
}


def _make(name: str, **kw):
    typ, params = CASES[name]
    return create_expert(
        typ, **{"random_init": True, "max_length": 24, "batch_size": 3, **params, **kw}
    )


@pytest.fixture(scope="module")
def experts() -> dict:
    return {name: _make(name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_shape_determinism_padding(experts: dict, name: str) -> None:
    e = experts[name]
    long_item = e.load(NOTE * 3, Path("."))
    short = e.load("no acute findings", Path("."))
    assert len(long_item.chunks) > 1 and len(short.chunks) == 1
    vec = assert_padding_invariant(e, long_item, [short])
    assert vec.shape == (32,) and np.isfinite(vec).all()
    again = _make(name)  # a second build: same seed, same weights, same vector
    np.testing.assert_allclose(again.embed([again.load(NOTE * 3, Path("."))])[0], vec, atol=1e-6)
    assert e.model_id.startswith(f"offline:{CASES[name][0]}-random-init(")


def test_chunking_keeps_every_token_and_records_the_count(experts: dict) -> None:
    e = experts["gatortron"]
    tok = e.get_tokenizer()
    n_tokens = len(tok(NOTE * 5, add_special_tokens=False)["input_ids"])
    item = e.load(NOTE * 5, Path("."))
    assert sum(item.n_tokens) == n_tokens  # nothing dropped
    assert all(len(c) <= 24 for c in item.chunks)  # each chunk fits the window with [CLS]/[SEP]
    pre, post = e.template
    assert all(c[: len(pre)] == pre and c[len(c) - len(post) :] == post for c in item.chunks)
    assert e.item_info(item) == {
        "n_chunks": len(item.chunks),
        "n_chunks_used": len(item.chunks),
        "n_tokens": n_tokens,
    }
    capped = _make("gatortron", max_chunks=2).load(NOTE * 5, Path("."))
    assert len(capped.chunks) == 2 and capped.n_chunks_total == len(item.chunks)


def test_pooling_modes_differ(experts: dict) -> None:
    item = experts["qwen2-mean"].load(NOTE, Path("."))
    mean = experts["qwen2-mean"].embed([item])[0]
    last = experts["qwen2-last"].embed([item])[0]
    assert not np.allclose(mean, last)


def test_missing_weights_name_the_expert_and_how_to_provide(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    e = create_expert("gatortron")
    e.name = "gatortron-b"
    with pytest.raises(WeightsNotFound) as info:
        e.dim  # noqa: B018 - loads the model
    msg = str(info.value)
    assert "gatortron-b" in msg and "UFNLP/gatortron-base" in msg and "local_dir" in msg
    missing = create_expert("qwen2", local_dir=str(tmp_path / "nope"))
    with pytest.raises(WeightsNotFound, match="does not exist"):
        missing.get_model()
    with pytest.raises(RemoteCodeRefused):
        create_expert("hf-text", model_id="org/model", trust_remote_code=True).get_model()


def test_local_dir_loads_the_saved_model(experts: dict, tmp_path: Path) -> None:
    e = experts["medcpt-query"]
    e.get_model().save_pretrained(tmp_path / "m")  # safetensors
    e.get_tokenizer().save_pretrained(tmp_path / "m")
    local = create_expert("medcpt-query", local_dir=str(tmp_path / "m"), max_length=24)
    item = e.load(NOTE, Path("."))
    np.testing.assert_allclose(local.embed([item])[0], e.embed([item])[0], atol=1e-5)
    assert local.model_id == str(tmp_path / "m") and local.dim == 32


def test_extract_records_chunk_counts(experts: dict, tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet", n=12)
    e = _make("gatortron", max_length=8)
    summary = extract(manifest, "note", e, tmp_path / "out.parquet", shard_size=5, progress=False)
    data = read_cache(summary.path)
    assert summary.ok > 0 and data.extra is not None
    ok_info = [json.loads(x) for x in data.extra[data.ok]]
    assert all(d["n_chunks"] >= 1 for d in ok_info) and any(d["n_chunks"] > 1 for d in ok_info)
    assert all(x is None for x in data.extra[~data.ok])
    assert data.meta.extra["item_info"]["n_chunks"]["n"] == summary.ok
