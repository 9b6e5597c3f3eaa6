"""The ``onellm`` expert (OneLLM's universal encoder + universal projection module) on a tiny
randomly initialised model of the same architecture: OneLLM's parameter names, checkpoint
loading under the policy (safetensors, weights-only .pth, pickles refused), embeddings of an
image, a CT volume, an EHR series and a note, the doctor without weights, the fusion row."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from extractors.loading import LoadingError, UnsafeCheckpoint
from extractors.registry import create_expert
from tests.fm_helpers import assert_padding_invariant

REPO = Path(__file__).resolve().parents[2]
PIN = "e8bd281d09b64620759ba6c5273684817dc9a331"
TINY_ONELLM = {
    "clip_width": 32,
    "clip_layers": 1,
    "clip_heads": 2,
    "clip_patch": 8,
    "clip_image_size": 32,
    "clip_output_dim": 16,
    "llm_dim": 24,
    "multiple_of": 8,
    "num_resample_layers": 1,
    "resample_heads": 4,
    "resample_tokens": 4,
    "imu_length": 40,
    "audio_tokens": 12,
    "fmri_in": 50,
}

# Parameter names of OneLLM's encoder/projection, from github.com/csuhan/OneLLM
# model/LLM/onellm.py (class Transformer; the checkpoint adds model/meta.py's `llma.` prefix):
# `self.clip` = open_clip 'ViT-L-14' (pretrained='openai') with `clip.transformer = None`, so only
# `clip.visual.*` of open_clip's VisionTransformer is used (conv1 without bias, class_embedding,
# positional_embedding, ln_pre, transformer.resblocks.N.{ln_1, attn (nn.MultiheadAttention),
# ln_2, mlp.c_fc, mlp.c_proj}, ln_post, proj); `resample_layers[str(expert)]` = ModuleList of
# TransformerBlock (attention.wq/wk/wv/wo and feed_forward.w1/w2/w3 without bias, RMSNorm
# attention_norm / ffn_norm); per modality `conv1` (audio Conv2d, imu Conv1d bias=False, fmri
# Linear), `positional_embedding` (audio, point, fmri, imu), `resample_tokens`, `clip_proj1` /
# `clip_proj2` (Sequential(Linear, LayerNorm)), `routers` (Mlp fc1/fc2), `start_tag`, `end_tag`;
# the LLaMA `tok_embeddings` (ParallelEmbedding) for text.
CLIP_VISUAL = [
    "clip.visual.class_embedding",
    "clip.visual.positional_embedding",
    "clip.visual.proj",
    "clip.visual.conv1.weight",
    "clip.visual.ln_pre.weight",
    "clip.visual.ln_pre.bias",
    "clip.visual.ln_post.weight",
    "clip.visual.ln_post.bias",
]
CLIP_BLOCK = [  # clip.visual.transformer.resblocks.{i}.
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
]
RESAMPLE_BLOCK = [  # resample_layers.{expert}.{layer}.
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
]
PER_MODAL = [  # .format(m=modality)
    "resample_tokens.{m}",
    "clip_proj1.{m}.0.weight",
    "clip_proj1.{m}.0.bias",
    "clip_proj1.{m}.1.weight",
    "clip_proj1.{m}.1.bias",
    "clip_proj2.{m}.0.weight",
    "clip_proj2.{m}.0.bias",
    "clip_proj2.{m}.1.weight",
    "clip_proj2.{m}.1.bias",
    "routers.{m}.fc1.weight",
    "routers.{m}.fc1.bias",
    "routers.{m}.fc2.weight",
    "routers.{m}.fc2.bias",
    "start_tag.{m}",
    "end_tag.{m}",
]
OWN_TOKENIZERS = {
    "audio": ["conv1.audio.weight", "conv1.audio.bias", "positional_embedding.audio"],
    "fmri": ["conv1.fmri.weight", "conv1.fmri.bias", "positional_embedding.fmri"],
    "imu": ["conv1.imu.weight", "positional_embedding.imu"],
}


def expected_keys(modals, clip_layers=1, experts=3, layers=1, text=False) -> set[str]:
    keys = set(CLIP_VISUAL)
    keys |= {f"clip.visual.transformer.resblocks.{i}.{k}" for i in range(clip_layers) for k in CLIP_BLOCK}  # fmt: skip
    keys |= {f"resample_layers.{e}.{j}.{k}" for e in range(experts) for j in range(layers) for k in RESAMPLE_BLOCK}  # fmt: skip
    for m in modals:
        keys |= {k.format(m=m) for k in PER_MODAL}
        keys |= set(OWN_TOKENIZERS.get(m, []))
    return keys | ({"tok_embeddings.weight"} if text else set())


def _expert(kind: str = "image", **kw):
    return create_expert("onellm", random_init=True, config=TINY_ONELLM, kind=kind, **kw)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """A grayscale PNG, a CT volume (.npy, HU) and an EHR series (wide CSV with gaps)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("onellm-samples")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 48)) * 255).astype(np.uint8)).save(root / "cxr.png")
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / "cxr2.png")
    np.save(root / "ct.npy", rng.normal(0, 300, (6, 40, 40)).astype(np.float32))
    hours = np.arange(48)
    cols = {f"v{i}": rng.normal(i, 1 + i, 48) for i in range(8)}
    cols["v1"][::3] = np.nan
    cols["v7"][:] = np.nan  # never observed: a zero channel
    import pandas as pd

    pd.DataFrame({"hour": hours, **cols}).to_csv(root / "ehr.csv", index=False)
    pd.DataFrame({"hour": hours[:5], "v0": [1.0, 2, 3, 4, 5]}).to_csv(
        root / "ehr2.csv", index=False
    )
    return root


# -- (1) the module tree ----------------------------------------------------------------------


def test_module_tree_has_onellms_parameter_names() -> None:
    from extractors.experts.onellm_model import build_arch, build_encoder

    modals = ("image", "video", "audio", "fmri", "imu")
    arch = build_arch(TINY_ONELLM)
    model = build_encoder(arch, modals, text=True)
    assert set(model.state_dict()) == expected_keys(modals, text=True)
    assert set(model.owned_prefixes()) >= {"clip.visual", "resample_layers", "tok_embeddings"}
    sd = model.state_dict()
    # shapes fixed by onellm.py: 3 experts, routers -> num_experts, tags in the LLM width,
    # IMU Conv1d(6, width, 10) and its positional table (L - 10 + 1) + 1
    assert sd["routers.imu.fc2.weight"].shape == (3, 4 * 32)
    assert sd["start_tag.image"].shape == (1, 1, 24) and sd["resample_tokens.video"].shape == (
        1,
        4,
        32,
    )
    assert sd["conv1.imu.weight"].shape == (32, 6, 10)
    assert sd["positional_embedding.imu"].shape == (40 - 10 + 1 + 1, 32)
    assert sd["conv1.fmri.weight"].shape == (8 * 32, 50)  # reshaped to (width, 8) tokens


def test_default_architecture_is_onellm_7b(monkeypatch) -> None:
    """OneLLM-7B's sizes: FeedForward(1024, 4*1024, multiple_of=256) -> 2816 hidden units,
    16 heads, a 4096-d projection (LLaMA-2-7B), the IMU table of 391 + 1 positions."""
    from extractors.experts.onellm_model import DEFAULT_ARCH, _modules

    block = _modules().TransformerBlock(1024, 16, 256, 1e-5)
    assert block.feed_forward.w1.weight.shape == (2816, 1024)
    assert DEFAULT_ARCH["llm_dim"] == 4096 and DEFAULT_ARCH["resample_tokens"] == 30
    assert DEFAULT_ARCH["imu_length"] - DEFAULT_ARCH["imu_kernel"] + 1 == 391
    assert (DEFAULT_ARCH["clip_image_size"] // DEFAULT_ARCH["clip_patch"]) ** 2 == 256  # 256 + 1
    monkeypatch.delenv("MEDMIX_ONELLM_WEIGHTS", raising=False)
    e = create_expert("onellm", kind="volume")
    assert e.dim == 4096 and e.params["model_id"] == "csuhan/OneLLM-7B"
    assert e.params["revision"] == PIN


def test_clip_tower_matches_open_clip() -> None:
    """Same names and shapes as open_clip's VisionTransformer (QuickGELU, as the OpenAI
    weights), and the same numbers: every token after ln_post, as OneLLM's clip_encode_image."""
    open_clip_model = pytest.importorskip("open_clip.model")
    import torch

    from extractors.experts.onellm_model import build_arch, build_encoder

    cfg = open_clip_model.CLIPVisionCfg(
        layers=1, width=32, head_width=16, patch_size=8, image_size=32
    )
    ref = open_clip_model._build_vision_tower(16, cfg, quick_gelu=True).eval()
    model = build_encoder(build_arch(TINY_ONELLM), ("image",)).eval()
    ours = {k.removeprefix("clip.visual."): v for k, v in model.state_dict().items() if k.startswith("clip.visual.")}  # fmt: skip
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}  # fmt: skip
    model.clip.visual.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = ref.conv1(x).reshape(2, 32, -1).permute(0, 2, 1)
        t = torch.cat([ref.class_embedding + torch.zeros(2, 1, 32), t], dim=1)
        t = ref.ln_pre(t + ref.positional_embedding)
        if not getattr(ref.transformer, "batch_first", True):
            t = ref.transformer(t.permute(1, 0, 2)).permute(1, 0, 2)
        else:
            t = ref.transformer(t)
        want = ref.ln_post(t)
        got = model.clip_encode(model.tokenize(x, "image"), "image")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -- (2), (3) checkpoints ---------------------------------------------------------------------


def _release_like_state(expert) -> dict:
    """The tiny model's tensors under OneLLM's checkpoint names, plus what a release holds
    beside them (LLaMA, the CLIP text-tower remnants, another modality's head)."""
    import torch

    state = {f"llma.{k}": v.clone() for k, v in expert.get_model().state_dict().items()}
    state["llma.tok_embeddings.weight"] = torch.zeros(10, 24)
    state["llma.layers.0.attention.wq.weight"] = torch.zeros(24, 24)
    state["llma.norm.weight"] = torch.ones(24)
    state["llma.output.weight"] = torch.zeros(10, 24)
    state["llma.clip.token_embedding.weight"] = torch.zeros(10, 32)
    state["llma.clip.ln_final.weight"] = torch.ones(32)
    state["llma.routers.point.fc1.weight"] = torch.zeros(128, 32)
    state["llma.conv1.point.conv1.0.weight"] = torch.zeros(32, 6)
    return state


def test_safetensors_checkpoint_loads_back_identically(samples: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    rand = _expert("image")
    item = rand.load("cxr.png", samples)
    want = rand.embed([item])
    folder = tmp_path / "onellm"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in _release_like_state(rand).items()}, str(folder / "model.safetensors"))  # fmt: skip
    loaded = create_expert(
        "onellm", local_dir=str(folder), config=TINY_ONELLM, kind="image", seed=7
    )
    np.testing.assert_array_equal(loaded.embed([item]), want)
    assert loaded.model_id == str(folder) and loaded.revision is None
    assert loaded.weights_status()[0] == "ok"


def test_weights_only_pth_loads_and_mismatches_are_named(samples: Path, tmp_path: Path) -> None:
    import torch

    rand = _expert("timeseries")
    item = rand.load("ehr.csv", samples)
    state = _release_like_state(rand)
    ckpt = tmp_path / "consolidated.00-of-01.pth"
    torch.save(state, ckpt)  # plain tensors, as the release: passes weights_only=True
    loaded = create_expert("onellm", local_dir=str(ckpt), config=TINY_ONELLM, kind="timeseries", seed=3)  # fmt: skip
    np.testing.assert_array_equal(loaded.embed([item]), rand.embed([item]))
    other = {**TINY_ONELLM, "llm_dim": 16}  # another architecture than the checkpoint's
    wrong = create_expert("onellm", local_dir=str(ckpt), config=other, kind="timeseries")
    with pytest.raises(LoadingError, match=r"other shapes .*clip_proj2\.imu"):
        wrong.get_model()
    del state["llma.routers.imu.fc1.bias"]
    torch.save(state, ckpt)
    broken = create_expert("onellm", local_dir=str(ckpt), config=TINY_ONELLM, kind="timeseries")
    with pytest.raises(LoadingError, match=r"1 missing \(routers\.imu\.fc1\.bias\)"):
        broken.embed([item])


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    import torch

    rand = _expert("image")
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"model": _release_like_state(rand), "args": argparse.Namespace(lr=1.0)},
               folder / "consolidated.00-of-01.pth")  # fmt: skip
    e = create_expert("onellm", local_dir=str(folder), config=TINY_ONELLM, kind="image")
    with pytest.raises(UnsafeCheckpoint, match="weights_only=True"):
        e.get_model()


# -- (4) embeddings through load/embed --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "other", "frames"),
    [
        ("image", "cxr.png", "cxr2.png", (1, 3, 32, 32)),
        ("volume", "ct.npy", "ct.npy", (4, 3, 32, 32)),
        ("timeseries", "ehr.csv", "ehr2.csv", (2, 6, 40)),
    ],
)
def test_embeddings_per_modality(samples: Path, kind, value, other, frames) -> None:
    e = _expert(kind, k_slices=4, batch_size=2, frame_batch=3)
    assert e.kind == kind and e.dim == 24
    item = e.load(value, samples)
    assert item.shape == frames and item.dtype == np.float32 and np.isfinite(item).all()
    vec = assert_padding_invariant(e, item, [e.load(other, samples), item])
    assert vec.shape == (24,) and np.isfinite(vec).all() and np.abs(vec).sum() > 0
    again = _expert(kind, k_slices=4)  # a fresh build: bit-identical weights
    np.testing.assert_allclose(again.embed([again.load(value, samples)])[0], vec, atol=1e-6)
    meta = e.cache_meta("d", "m")
    assert meta.dim == 24 and meta.model_id.startswith("offline:onellm-random-init(")
    assert "universal-projection tokens" in meta.pooling


def test_volume_slices_are_video_frames(samples: Path) -> None:
    """A CT volume = OneLLM video: CLIP tokens averaged over the slices, then the video UPM."""
    import torch

    e = _expert("volume", k_slices=4)
    item = e.load("ct.npy", samples)
    model = e.get_model()
    with torch.no_grad():
        ref = model.encode(torch.from_numpy(item), "video", [4]).mean(dim=1).numpy()
    np.testing.assert_allclose(e.embed([item]), ref, atol=1e-5)
    assert "video" in e.pooling and e.preprocess_config()["modal"] == "video"


def test_real_ct(realdata: Path) -> None:
    e = _expert("volume", k_slices=3)
    vec = e.embed([e.load("ct/example_ct.nii.gz", realdata)])
    assert vec.shape == (1, 24) and np.isfinite(vec).all()


def test_real_slide_tiles_as_image_frames(realdata: Path) -> None:
    pytest.importorskip("openslide")
    e = _expert("slide", target_mpp=4.0, max_tiles=3)
    item = e.load("wsi/cmu-1-small-region.svs", realdata)
    assert 1 <= item.shape[0] <= 3 and item.shape[1:] == (3, 32, 32)
    vec = e.embed([item])
    assert vec.shape == (1, 24) and np.isfinite(vec).all() and "tissue tiles" in e.pooling


def test_ehr_to_imu_windows() -> None:
    from extractors.base import SampleError
    from extractors.experts.onellm_inputs import series_to_imu

    t = np.arange(5.0)
    arr = series_to_imu(t, [np.array([0, np.nan, 2, np.nan, 4.0]), None, np.full(5, np.nan)], 9, 2)
    assert arr.shape == (2, 2, 9)  # 3 variables -> 2 groups of 2 channels (one padded)
    np.testing.assert_allclose(arr[0, 0], (np.linspace(0, 4, 9) - 2) / np.linspace(0, 4, 9).std(), atol=1e-6)  # fmt: skip
    assert not arr[0, 1].any() and not arr[1].any()
    with pytest.raises(SampleError, match="no variable"):
        series_to_imu(t, [np.full(5, np.nan)], 9, 2)


def test_note_is_mean_of_llama_token_embeddings() -> None:
    import torch

    e = _expert("text")
    ids = e.load("Mild cardiomegaly. No effusion.", Path("."))
    assert ids.dtype == np.int64 and ids.size > 3
    vec = e.embed([ids])
    with torch.no_grad():
        ref = e.get_model().tok_embeddings(torch.from_numpy(ids)).mean(0).numpy()
    np.testing.assert_allclose(vec[0], ref, atol=1e-6)
    assert set(e.get_model().state_dict()) == expected_keys((), text=True)  # no modality head


def test_one_preset_binds_to_each_modalitys_kind(samples: Path) -> None:
    e = _expert("image")
    a = e.embed([e.load("cxr.png", samples)])
    e.bind_kind("timeseries")
    assert e.kind == "timeseries" and e._model is None  # the IMU head is built next
    b = e.embed([e.load("ehr.csv", samples)])
    assert a.shape == b.shape == (1, 24)
    with pytest.raises(ValueError, match="no tokenizer for 'audio'"):
        e.bind_kind("audio")
    with pytest.raises(ValueError, match="unknown architecture keys"):
        create_expert("onellm", random_init=True, config={"width": 8})


def test_notes_without_tokenizer_fail_clearly(tmp_path: Path) -> None:
    from extractors.loading import WeightsNotFound

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "consolidated.00-of-01.pth").write_bytes(b"")
    e = create_expert("onellm", local_dir=str(folder), kind="text")
    with pytest.raises(WeightsNotFound, match="tokenizer.model"):
        e.load("a note", tmp_path)


# -- (5) doctor and the fusion row ------------------------------------------------------------


def _doctor_config(tmp_path: Path, experts: dict) -> Path:
    cfg = {
        "datasets": {
            "d": {
                "adapter": "demo",
                "demo": {"kind": "openi"},
                "modalities": {"report": ["onellm-tiny"]},
            }
        },  # fmt: skip
        "experts": experts,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_doctor_reports_onellm_weights_absent(tmp_path: Path, monkeypatch, capsys) -> None:
    from extractors.__main__ import main as cli
    from extractors.doctor import run_doctor

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEDMIX_ONELLM_WEIGHTS", raising=False)
    path = _doctor_config(
        tmp_path,
        {
            "onellm": {"type": "onellm", "model_id": "csuhan/OneLLM-7B", "revision": PIN},
            "onellm-local": {"type": "onellm", "local_dir": str(tmp_path / "nowhere")},
            "onellm-tiny": {"type": "onellm", "random_init": True, "config": TINY_ONELLM},
        },
    )
    report = {e.name: e for e in run_doctor(path).experts}
    hub = report["onellm"]
    assert set(hub.checks) == {"packages", "weights", "device", "pin"} and not hub.ready
    assert (
        hub.checks["weights"].state == "FAIL" and "csuhan/OneLLM-7B" in hub.checks["weights"].detail
    )
    assert hub.checks["pin"].state == "ok" and hub.type == "onellm"
    local = report["onellm-local"].checks["weights"]
    assert local.state == "FAIL" and "does not exist" in local.detail
    assert report["onellm-tiny"].ready and report["onellm-tiny"].checks["weights"].state == "warn"
    assert cli(["doctor", str(path), "--expert", "onellm", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert any(
        f"hf download csuhan/OneLLM-7B --revision {PIN}" in ln for ln in out["how_to_provide"]
    )


def test_paper_row_reads_onellm_caches_once_weights_are_there(tmp_path: Path, monkeypatch) -> None:
    from medmix.config import load_config
    from medmix.plan import method_inputs

    monkeypatch.delenv("MEDMIX_ONELLM_WEIGHTS", raising=False)
    cfg = load_config(REPO / "config" / "paper.yaml")
    assert cfg["experts"]["onellm"]["type"] == "onellm" and "onellm" in cfg["methods"]
    absent = method_inputs(cfg, "mimic4", "onellm")
    assert absent.unavailable_kind == "weights absent" and not absent.caches
    (tmp_path / "consolidated.00-of-01.pth").write_bytes(b"")
    cfg["fusion"] = {**cfg["fusion"], "onellm_weights": str(tmp_path)}
    present = method_inputs(cfg, "mimic4", "onellm")
    assert present.unavailable is None
    assert {m: list(c) for m, c in present.caches.items()} == {
        m: ["onellm"] for m in ("frontal", "lateral", "note", "ehr")
    }
    assert str(present.caches["ehr"]["onellm"]).endswith("embeddings/ehr/onellm.parquet")
