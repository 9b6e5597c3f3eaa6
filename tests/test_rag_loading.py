"""The shared loading policy (extractors/loading.py) and the report-generation bridges' failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from extractors.loading import (
    LoadingError,
    ModelSpec,
    RemoteCodeRefused,
    UnsafeCheckpoint,
    WeightsNotFound,
    build_random,
    check_remote_code,
    find_weights,
    load_model,
    load_model_and_tokenizer,
    load_state_dict,
)

PIN = "0123456789abcdef0123456789abcdef01234567"
TINY_BERT = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 64,
}


class NotATensor:
    """Any pickled object makes a checkpoint unsafe."""

    def __init__(self) -> None:
        self.payload = "would run code on unpickling"


@pytest.fixture()
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_missing_local_dir_names_expert_and_path(tmp_path: Path) -> None:
    spec = ModelSpec.from_config("medcpt-query", {"local_dir": str(tmp_path / "nowhere")})
    with pytest.raises(WeightsNotFound) as err:
        load_model(spec)
    msg = str(err.value)
    assert "medcpt-query" in msg and str(tmp_path / "nowhere") in msg
    assert "local_dir" in msg and "random_init" in msg  # says how to provide them


def test_local_dir_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFound, match=r"no weights in local_dir"):
        load_model(ModelSpec.from_config("qwen", {"local_dir": str(tmp_path)}))


def test_offline_hub_miss_names_expert_repo_revision_and_cache(empty_hub: Path) -> None:
    spec = ModelSpec.from_config("rag/llm", {"model_id": "Qwen/Qwen2-0.5B", "revision": PIN})
    with pytest.raises(WeightsNotFound) as err:
        load_model(spec)
    msg = str(err.value)
    assert "rag/llm" in msg and "Qwen/Qwen2-0.5B" in msg and PIN in msg
    assert str(empty_hub / "models--Qwen--Qwen2-0.5B" / "snapshots" / PIN) in msg  # honours HF_HOME
    assert "HF_HUB_OFFLINE=1" in msg


def test_no_source_at_all() -> None:
    with pytest.raises(WeightsNotFound, match="no model source configured"):
        load_model(ModelSpec(expert="x"))


def test_trust_remote_code_needs_pinned_revision(empty_hub: Path) -> None:
    for rev in (None, "main", "v1.0"):
        spec = ModelSpec.from_config(
            "maira", {"model_id": "microsoft/maira-2", "revision": rev, "trust_remote_code": True}
        )
        with pytest.raises(RemoteCodeRefused, match="pinned 40-hex commit"):
            load_model(spec)
    pinned = ModelSpec.from_config(
        "maira", {"model_id": "microsoft/maira-2", "revision": PIN, "trust_remote_code": True}
    )
    assert check_remote_code(pinned) is True
    with pytest.raises(WeightsNotFound):  # passes the policy, then finds no weights offline
        load_model(pinned)
    assert check_remote_code(ModelSpec(expert="x", model_id="a/b")) is False


def test_pickled_checkpoint_refused_plain_state_dict_accepted(tmp_path: Path) -> None:
    unsafe = tmp_path / "model_best.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": NotATensor()}, unsafe)
    with pytest.raises(UnsafeCheckpoint) as err:
        load_state_dict(unsafe, expert="rag/bridge/histgen")
    assert "rag/bridge/histgen" in str(err.value) and "safetensors" in str(err.value)
    safe = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(3.0)}, safe)
    assert torch.equal(load_state_dict(safe)["w"], torch.arange(3.0))


def test_local_dir_pickled_bin_refused_safetensors_preferred(tmp_path: Path) -> None:
    spec = ModelSpec.from_config(
        "bert", {"random_init": True, "model_class": "BertModel", "config": TINY_BERT}
    )
    model = build_random(spec)
    model.save_pretrained(tmp_path)  # writes model.safetensors + config.json
    assert find_weights(tmp_path)[0] == "safetensors"
    torch.save({"junk": NotATensor()}, tmp_path / "pytorch_model.bin")
    assert find_weights(tmp_path)[0] == "safetensors"  # safetensors win when both exist
    loaded = load_model(
        ModelSpec.from_config("bert", {"local_dir": str(tmp_path), "model_class": "BertModel"})
    )
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UnsafeCheckpoint):
        load_model(
            ModelSpec.from_config("bert", {"local_dir": str(tmp_path), "model_class": "BertModel"})
        )


def test_random_init_deterministic_and_generic() -> None:
    spec = ModelSpec.from_config(
        "q", {"random_init": True, "model_class": "BertModel", "config": TINY_BERT, "seed": 3}
    )
    a, b = build_random(spec), build_random(spec)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    other = build_random(
        ModelSpec.from_config(
            "q", {"random_init": True, "model_class": "BertModel", "config": TINY_BERT, "seed": 4}
        )
    )
    assert not torch.equal(
        a.embeddings.word_embeddings.weight, other.embeddings.word_embeddings.weight
    )
    before = torch.random.get_rng_state()
    auto = build_random(
        ModelSpec.from_config(
            "a", {"random_init": True, "config": {"model_type": "bert", **TINY_BERT}}
        )
    )
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone
    assert type(auto).__name__ == "BertModel" and not auto.training
    qwen = ModelSpec.from_config(
        "llm",
        {
            "random_init": True,
            "model_class": "Qwen2Model",
            "config": {
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "intermediate_size": 32,
            },
        },
    )
    model, tok = load_model_and_tokenizer(qwen)  # stand-in tokenizer sizes the vocabulary
    assert type(model).__name__ == "Qwen2Model" and model.config.vocab_size == len(tok)
    with pytest.raises(LoadingError, match="model_type"):
        build_random(ModelSpec.from_config("a", {"random_init": True, "config": TINY_BERT}))


def test_report_generators_fail_clearly_without_weights(empty_hub: Path, tmp_path: Path) -> None:
    from extractors.rag.bridge import HistGenBridge, Maira2Bridge, MerlinBridge

    with pytest.raises(WeightsNotFound) as err:
        Maira2Bridge({}).load()
    assert "rag/bridge/maira2" in str(err.value) and "microsoft/maira-2" in str(err.value)
    with pytest.raises(RemoteCodeRefused):
        Maira2Bridge({"revision": "main"}).load()
    with pytest.raises(WeightsNotFound) as err:
        MerlinBridge({"revision": PIN}).load()
    assert "rag/bridge/merlin" in str(err.value) and "stanfordmimi/Merlin" in str(err.value)
    with pytest.raises(LoadingError) as err:
        HistGenBridge({"checkpoint": str(tmp_path / "histgen.safetensors")}).load()
    assert "histgen" in str(err.value) and "histgen.safetensors" in str(err.value)
