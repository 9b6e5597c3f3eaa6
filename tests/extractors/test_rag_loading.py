"""The shared loading policy (extractors/loading.py) and the report-generation bridges' failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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
        Maira2Bridge({"trust_remote_code": True}).load()
    assert "rag/bridge/maira2" in str(err.value) and "microsoft/maira-2" in str(err.value)
    with pytest.raises(RemoteCodeRefused):
        Maira2Bridge({"trust_remote_code": True, "revision": "main"}).load()
    with pytest.raises(WeightsNotFound) as err:
        MerlinBridge({"revision": PIN}).load()
    assert "rag/bridge/merlin" in str(err.value) and "stanfordmimi/Merlin" in str(err.value)
    ckpt = tmp_path / "merlin.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(WeightsNotFound) as err:  # the checkpoint is found, the decoder is not
        MerlinBridge({"local_dir": str(ckpt), "decoder": {"revision": PIN}}).load()
    assert "rag/bridge/merlin/decoder" in str(err.value) and "RadLLaMA-7b" in str(err.value)
    with pytest.raises(LoadingError) as err:
        HistGenBridge({"checkpoint": str(tmp_path / "histgen.safetensors")}).load()
    assert "histgen" in str(err.value) and "histgen.safetensors" in str(err.value)


# -- report-generation bridges: mock runs of their generate paths -----------------------------


def _manifest(root: Path, modality: str, kind: str, files: dict[str, str | None]) -> Path:
    """A one-modality manifest over ``files`` (sample id -> file under ``root``)."""
    from cohorts.manifest import ManifestMeta, write_manifest

    rows = [
        {"sample_id": sid, "patient_id": f"p-{sid}", "split": "test", modality: rel, "label_y": 0}
        for sid, rel in files.items()
    ]
    meta = ManifestMeta(
        dataset="gen",
        task_type="binary",
        modalities={modality: kind},
        labels=["y"],
        adapter="test",
        root=str(root),
    )
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet", meta)


class FakeMaira2Processor:
    """The calls the bridge makes on MAIRA-2's remote-code processor, with their real signatures
    (microsoft/maira-2 processing_maira2.py). Prompt ids 1..3, then one id per image brightness."""

    WORDS = {10: "Findings:", 11: "heart", 12: "lungs", 13: "clear.", 14: "enlarged."}

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def format_and_preprocess_reporting_input(
        self,
        current_frontal,
        current_lateral,
        prior_frontal,
        indication,
        technique,
        comparison,
        prior_report,
        get_grounding=False,
        assistant_text=None,
        **kwargs,
    ):
        from transformers.feature_extraction_utils import BatchFeature

        gray = np.asarray(current_frontal.convert("L"), dtype=np.float32)  # as the real one does
        self.calls.append({"lateral": current_lateral, "grounding": get_grounding, **kwargs})
        ids = torch.tensor([[1, 2, 3]])
        return BatchFeature(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.tensor(gray.mean() / 255.0).reshape(1, 1),
            },
            tensor_type=kwargs.get("return_tensors"),
        )

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        words = [self.WORDS.get(int(i), "<s>") for i in ids]
        if skip_special_tokens:
            words = [w for w in words if w != "<s>"]
        return "  " + " ".join(words)

    def convert_output_to_plaintext_or_grounded_sequence(self, text: str):
        text = text.strip()
        if "enlarged" in text:  # the grounded form: a list of (phrase, boxes)
            return [("Findings: heart", None), ("enlarged.", [(0.1, 0.2, 0.3, 0.4)])]
        return text


class FakeMaira2Model:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, pixel_values, max_new_tokens, use_cache):
        self.calls.append({"max_new_tokens": max_new_tokens, "use_cache": use_cache})
        bright = float(pixel_values.mean()) > 0.5
        new = [0, 10, 11, 14] if bright else [0, 10, 12, 13]  # 0 = a special token
        return torch.cat([input_ids, torch.tensor([new])], dim=1)


def test_maira2_needs_opt_in_and_a_pinned_revision(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extractors import loading
    from extractors.rag.bridge import Maira2Bridge

    loads: list = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or None)
    assert "trust_remote_code" not in Maira2Bridge.DEFAULTS  # never on silently
    with pytest.raises(RemoteCodeRefused, match="opt in with `trust_remote_code: true`"):
        Maira2Bridge({}).load()
    for rev in ("main", None, "v1.0"):
        with pytest.raises(RemoteCodeRefused, match="pinned 40-hex commit"):
            Maira2Bridge({"trust_remote_code": True, "revision": rev}).load()
    assert loads == []  # refused before anything was read


def test_maira2_generate_decodes_and_isolates_a_failing_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers
    from PIL import Image

    from extractors import loading
    from extractors.rag.bridge import Maira2Bridge, run_bridge

    weights = tmp_path / "maira2"
    weights.mkdir()
    model, processor = FakeMaira2Model(), FakeMaira2Processor()
    specs, proc_calls = [], []

    def fake_load_model(spec, device="cpu", dtype=None):
        specs.append(spec)
        return model

    def fake_processor(path, **kw):
        proc_calls.append((path, kw))
        return processor

    monkeypatch.setattr(loading, "load_model", fake_load_model)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fake_processor)
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((32, 32), 230, np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.full((32, 32), 20, np.uint8)).save(tmp_path / "img" / "b.png")
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    manifest = _manifest(
        tmp_path,
        "frontal",
        "image",
        {"a": "img/a.png", "bad": "img/bad.png", "b": "img/b.png", "none": None},
    )
    spec = {"type": "maira2", "local_dir": str(weights), "trust_remote_code": True}
    frame, meta = run_bridge(manifest, "frontal", spec)
    rows = frame.set_index("sample_id")
    assert rows.loc["a", "text"] == "Findings: heart enlarged."  # grounded -> its phrases
    assert rows.loc["b", "text"] == "Findings: lungs clear."  # prompt and special ids dropped
    assert (rows.loc[["a", "b"], "status"] == "ok").all()
    assert rows.loc["bad", "status"] == "failed" and pd.isna(rows.loc["bad", "text"])
    assert rows.loc["bad", "reason"] == "not a recognised image format"
    assert rows.loc["none", "status"] == "missing"
    # loaded once, under the policy: remote code on by config, at the pinned default revision
    assert len(specs) == 1 and specs[0].trust_remote_code
    assert specs[0].revision == Maira2Bridge.DEFAULTS["revision"]
    assert proc_calls == [(str(weights), {"trust_remote_code": True, "local_files_only": True})]
    assert [c["lateral"] for c in processor.calls] == [None, None]
    assert not any(c["grounding"] for c in processor.calls)
    assert model.calls == [{"max_new_tokens": 300, "use_cache": True}] * 2
    assert meta["generator"].startswith(f"local:{weights}")


# Merlin: the real merlin-vlm classes with tiny parts (a 1-block-per-stage ResNet, a 2-layer
# LLaMA of width 32 with the stand-in WordPiece vocabulary).
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
MERLIN_PIN = "fedcba9876543210fedcba9876543210fedcba98"


def _tiny_resnet(**kwargs):
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16)


def _snapshot(hub: Path, repo: str, rev: str) -> Path:
    path = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    path.mkdir(parents=True)
    return path


@pytest.fixture()
def merlin_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An offline hub cache holding a RadLLaMA stand-in (config + tokenizer, no weights) and a
    Merlin report checkpoint written from merlin-vlm's own Clip3DForTextGeneration."""
    import json
    import shutil

    import torchvision
    from merlin.models import radiology_report_generation as rrg
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from extractors.loading import standin_tokenizer_dir

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    decoder = _snapshot(hub, "StanfordAIMI/RadLLaMA-7b", PIN)
    for f in standin_tokenizer_dir().iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, decoder / f.name)
    tok = AutoTokenizer.from_pretrained(str(decoder))
    config = AutoConfig.for_model(**TINY_LLAMA, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    config.save_pretrained(decoder)

    # what merlin-vlm itself builds, its downloads replaced by the tiny parts
    monkeypatch.setattr(torchvision.models, "resnet152", _tiny_resnet)
    with monkeypatch.context() as m:
        m.setattr(rrg.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
        m.setattr(
            rrg.AutoModelForCausalLM,
            "from_pretrained",
            lambda *a, **k: AutoModelForCausalLM.from_config(config),
        )
        adapter_init = rrg.Adapter.__init__  # 2048 -> the tiny decoder's width, not 4096
        m.setattr(rrg.Adapter, "__init__", lambda s, i, o: adapter_init(s, i, config.hidden_size))
        torch.manual_seed(0)
        reference = rrg.Clip3DForTextGeneration().eval()
    ckpt = _snapshot(hub, "stanfordmimi/Merlin", MERLIN_PIN) / "merlin_report.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(ckpt))
    (ckpt.parent / "config.json").write_text(json.dumps({"note": "not a transformers model"}))
    return {"hub": hub, "reference": reference, "checkpoint": ckpt}


@pytest.fixture()
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every route to a download raises; hub resolutions are recorded (and must be offline)."""
    import huggingface_hub
    import merlin.models.load
    import torch.hub
    import torchvision.models._api
    import transformers

    calls: list[tuple] = []
    real_snapshot = huggingface_hub.snapshot_download

    def refuse(name: str):
        def _refused(*a, **k):
            calls.append(("download", name, a))
            raise AssertionError(f"{name} attempted a download")

        return _refused

    def snapshot(repo_id, **kw):
        calls.append(
            (
                "snapshot",
                repo_id,
                kw["revision"],
                kw["local_files_only"],
                tuple(kw["allow_patterns"] or ()),
            )
        )
        return real_snapshot(repo_id, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse("hf_hub_download"))
    monkeypatch.setattr(merlin.models.load, "download_file", refuse("merlin download_file"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse("torch.hub"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse("torchvision"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse("7B weights"))
    return calls


def test_merlin_bridge_builds_merlin_from_verified_weights_offline(
    merlin_hub: dict, no_downloads: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nibabel as nib
    import torchvision
    from merlin.models import radiology_report_generation as rrg

    from extractors.rag.bridge import MerlinBridge, run_bridge

    resnets: list[dict] = []
    monkeypatch.setattr(
        torchvision.models, "resnet152", lambda **kw: resnets.append(kw) or _tiny_resnet()
    )
    for cls in (rrg.ModifiedImageEncoder, rrg.TextDecoder, rrg.Clip3DForTextGeneration):
        monkeypatch.setattr(cls, "__init__", lambda self, *a, **k: pytest.fail("downloading init"))
    cfg = {
        "revision": MERLIN_PIN,
        "checkpoint": "merlin_report.safetensors",
        "decoder": {"revision": PIN},
        "organ_systems": ["liver", "kidneys"],
        "max_new_tokens": 4,
        "stop_token_id": -1,
    }
    bridge = MerlinBridge(cfg)
    bridge.load()
    assert resnets == [{"weights": None}]  # the architecture only, no ImageNet weights
    hub_calls = [c for c in no_downloads if c[0] == "snapshot"]
    assert [c[1:4] for c in hub_calls] == [
        ("stanfordmimi/Merlin", MERLIN_PIN, True),
        ("StanfordAIMI/RadLLaMA-7b", PIN, True),
    ]
    assert not any(p.endswith((".safetensors", ".bin", ".pt", ".py")) for p in hub_calls[1][4])
    assert [c for c in no_downloads if c[0] == "download"] == []
    reference, model = merlin_hub["reference"], bridge._model
    ref_state, state = reference.state_dict(), model.state_dict()
    assert list(state) == list(ref_state)  # the same module tree as merlin-vlm builds
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert not model.training and not model.decode_text.tokenizer.init_kwargs.get(
        "trust_remote_code"
    )

    # volumes: two readable, one corrupt; Merlin's own transform reads them (then shrunk for CPU)
    (tmp_path / "ct").mkdir()
    rng = np.random.default_rng(0)
    for name, hu in (("a", -800.0), ("b", 600.0)):  # air-like and bone-like, 1.5 x 1.5 x 3 mm
        vol = (hu + rng.normal(0, 50, size=(112, 112, 80))).astype(np.float32)
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct" / f"{name}.nii.gz")
    (tmp_path / "ct" / "bad.nii.gz").write_bytes(b"not a volume")
    full = MerlinBridge.preprocess(tmp_path / "ct" / "a.nii.gz")
    assert (
        full.shape == (1, 1, 224, 224, 160) and 0.0 <= float(full.min()) <= float(full.max()) <= 1.0
    )

    real_preprocess = MerlinBridge.preprocess

    def small(path):
        x = real_preprocess(path)
        return torch.nn.functional.interpolate(x, size=(64, 64, 32), mode="trilinear")

    monkeypatch.setattr(MerlinBridge, "preprocess", staticmethod(small))
    monkeypatch.setattr("extractors.rag.bridge.GENERATORS", {"merlin": lambda spec, device: bridge})
    manifest = _manifest(
        tmp_path, "ct", "volume", {"a": "ct/a.nii.gz", "bad": "ct/bad.nii.gz", "b": "ct/b.nii.gz"}
    )
    frame, meta = run_bridge(manifest, "ct", {"type": "merlin", **cfg})
    rows = frame.set_index("sample_id")
    assert rows.loc["bad", "status"] == "failed" and rows.loc["bad", "reason"]
    tokens = {}
    for sid in ("a", "b"):
        assert rows.loc[sid, "status"] == "ok", rows.loc[sid, "reason"]
        expected = []
        with torch.inference_mode():
            image = small(tmp_path / "ct" / f"{sid}.nii.gz")
            tokens[sid] = model.adapter(model.encode_image(image))  # the decoder's image tokens
            assert torch.allclose(tokens[sid], reference.adapter(reference.encode_image(image)))
            for organ in cfg["organ_systems"]:  # merlin-vlm's own generate, its own weights
                out = reference.generate(
                    image,
                    [f"Generate a radiology report for {organ}###\n"],
                    do_sample=False,
                    num_beams=1,
                    repetition_penalty=1.2,
                    max_new_tokens=4,
                )
                expected.append(f"{organ}: {out[0].split('###')[-1].strip()}")
        assert rows.loc[sid, "text"] == " ".join(" ".join(expected).split())
    assert tokens["a"].shape[-1] == 32 and not torch.allclose(tokens["a"], tokens["b"])
    assert meta["generator"] == (
        f"stanfordmimi/Merlin@{MERLIN_PIN} + decoder StanfordAIMI/RadLLaMA-7b@{PIN}"
    )


def test_merlin_bridge_refuses_a_mismatched_or_pickled_checkpoint(
    merlin_hub: dict, no_downloads: list, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from extractors.rag.bridge import MerlinBridge

    ckpt: Path = merlin_hub["checkpoint"]
    state = dict(merlin_hub["reference"].state_dict())
    state.pop("adapter.linear2.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    cfg = {"revision": MERLIN_PIN, "checkpoint": ckpt.name, "decoder": {"revision": PIN}}
    with pytest.raises(LoadingError, match=r"1 missing, e\.g\. \['adapter\.linear2\.weight'\]"):
        MerlinBridge(cfg).load()
    pickled = tmp_path / "merlin.pt"
    torch.save({"state_dict": state, "args": NotATensor()}, pickled)
    with pytest.raises(UnsafeCheckpoint, match="rag/bridge/merlin"):
        MerlinBridge({**cfg, "local_dir": str(pickled)}).load()
    with pytest.raises(RemoteCodeRefused):  # the decoder's remote code needs a pinned revision
        MerlinBridge({**cfg, "decoder": {"trust_remote_code": True, "revision": "main"}}).load()


# HistGen: a checkout with the interface of github.com/dddavid4real/HistGen (models/histgen_model.py,
# modules/tokenizers.py): Tokenizer(args) builds its vocabulary from args.ann_path; the model is
# called as model(feats, mode="sample") and decodes with tokenizer.decode_batch (0 ends a report).
HISTGEN_TOKENIZER = """
import json


class Tokenizer:
    def __init__(self, args):
        ann = json.loads(open(args.ann_path).read())
        words = sorted({w for ex in ann["train"] for w in ex["report"].lower().split()})
        self.idx2token = {i + 1: w for i, w in enumerate(words)}

    def get_vocab_size(self):
        return len(self.idx2token)

    def decode(self, ids):
        out = []
        for i in ids:
            if i <= 0:
                break
            out.append(self.idx2token[int(i)])
        return " ".join(out)

    def decode_batch(self, ids_batch):
        return [self.decode(ids) for ids in ids_batch]
"""
HISTGEN_MODEL = """
import torch


class HistGenModel(torch.nn.Module):
    def __init__(self, args, tokenizer):
        super().__init__()
        self.args, self.tokenizer = args, tokenizer
        self.wsi_mapping = torch.nn.Linear(1024, args.d_vf)
        self.head = torch.nn.Linear(args.d_vf, tokenizer.get_vocab_size())

    def forward(self, images, targets=None, mode="train", update_opts={}):
        if mode != "sample":
            raise ValueError(mode)
        logits = self.head(self.wsi_mapping(images).mean(dim=1))  # (B, V)
        top = logits.topk(3, dim=-1).indices + 1
        return torch.cat([top, torch.zeros_like(top[:, :1])], dim=1)
"""


def test_histgen_generate_decodes_and_isolates_failing_slides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import importlib.util
    import json
    import sys

    from safetensors.torch import save_file

    from extractors.rag.bridge import HistGenBridge, run_bridge

    repo = tmp_path / "HistGen"
    for pkg, name, code in (
        ("models", "histgen_model", HISTGEN_MODEL),
        ("modules", "tokenizers", HISTGEN_TOKENIZER),
    ):
        (repo / pkg).mkdir(parents=True)
        (repo / pkg / "__init__.py").write_text("")
        (repo / pkg / f"{name}.py").write_text(code)
    ann = tmp_path / "annotation.json"
    words = "tumor cells clear cell renal carcinoma grade nuclear necrosis margin negative"
    ann.write_text(json.dumps({"train": [{"report": words}]}))

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    args = argparse.Namespace(**{**HistGenBridge.ARGS, "d_vf": 16, "ann_path": str(ann)})
    tok = load("histgen_tok", repo / "modules" / "tokenizers.py").Tokenizer(args)
    torch.manual_seed(0)
    ref = load("histgen_model", repo / "models" / "histgen_model.py").HistGenModel(args, tok).eval()
    ckpt = tmp_path / "histgen.safetensors"
    save_file(ref.state_dict(), str(ckpt))

    feats_dir, slides = tmp_path / "feats", tmp_path / "slides"
    feats_dir.mkdir(), slides.mkdir()
    feats = {s: torch.randn(5, 1024) for s in ("s1", "s2")}
    for s, f in feats.items():
        torch.save(f, feats_dir / f"{s}.pt")
    torch.save(torch.randn(5, 7), feats_dir / "wrongdim.pt")  # the model cannot take it
    for s in ("s1", "s2", "nofeat", "wrongdim"):
        (slides / f"{s}.svs").write_bytes(b"slide")
    manifest = _manifest(
        tmp_path, "wsi", "slide", {s: f"slides/{s}.svs" for s in ("s1", "nofeat", "s2", "wrongdim")}
    )

    monkeypatch.setattr(sys, "path", list(sys.path))  # the bridge puts the checkout on it
    before = set(sys.modules)
    try:
        cfg = {
            "type": "histgen",
            "repo_dir": str(repo),
            "checkpoint": str(ckpt),
            "ann_path": str(ann),
            "features_dir": str(feats_dir),
            "args": {"d_vf": 16},
        }
        frame, meta = run_bridge(manifest, "wsi", cfg)
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("models", "modules"):
                del sys.modules[name]
    rows = frame.set_index("sample_id")
    for s in ("s1", "s2"):
        with torch.inference_mode():
            expected = tok.decode_batch(ref(feats[s][None], mode="sample").numpy())[0]
        assert rows.loc[s, "status"] == "ok" and rows.loc[s, "text"] == expected
        assert len(expected.split()) == 3 and set(expected.split()) <= set(words.split())
    assert rows.loc["s1", "text"] != rows.loc["s2", "text"]
    assert rows.loc["nofeat", "status"] == "failed"
    assert rows.loc["nofeat", "reason"] == (
        f"no patch features {feats_dir / 'nofeat.pt'} for slide nofeat.svs"
    )
    assert rows.loc["wrongdim", "status"] == "failed"
    assert rows.loc["wrongdim", "reason"].startswith("RuntimeError: ")
    assert meta["generator"].startswith(f"histgen:{repo}@")
