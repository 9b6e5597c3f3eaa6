"""Image FM experts (DINOv3, BiomedCLIP) on tiny random-init models; their use as the inner
encoder of the CT slicer and the WSI tiler on the real NIfTI and SVS; GPU autocast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extractors.experts.fm_common import MissingPackage
from extractors.experts.fm_image import resize_center_crop
from extractors.registry import create_expert
from tests.fm_helpers import (
    TINY_DINOV3,
    TINY_OPEN_CLIP,
    assert_padding_invariant,
    gpu_available,
    need,
)


def _img(seed: int, shape=(90, 70)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.fixture(scope="module")
def dinov3():
    return create_expert(
        "dinov3", random_init=True, config=TINY_DINOV3, image_size=64, batch_size=2
    )


def test_dinov3_shape_determinism_padding(dinov3) -> None:
    item = dinov3.prepare_array(_img(0))
    assert item.shape == (3, 64, 64) and item.dtype == np.float32
    others = [dinov3.prepare_array(_img(1, (50, 50, 3))), dinov3.prepare_array(_img(2))]
    vec = assert_padding_invariant(dinov3, item, others)  # 5 images: 3 forward passes of 2
    assert vec.shape == (32,) and np.isfinite(vec).all()
    again = create_expert("dinov3", random_init=True, config=TINY_DINOV3, image_size=64)
    np.testing.assert_allclose(again.embed([item])[0], vec, atol=1e-6)
    assert dinov3.pooling == "cls" and dinov3.model_id.startswith("offline:dinov3-random-init(")


def test_dinov3_collate_forward_matches_embed(dinov3) -> None:
    items = [dinov3.prepare_array(_img(i)) for i in range(3)]
    np.testing.assert_allclose(
        dinov3.forward(dinov3.collate(items)), dinov3.embed(items), atol=1e-6
    )


def test_resize_center_crop() -> None:
    x = np.zeros((40, 80, 3), np.float32)
    x[:, 20:60] = 1.0  # the central square
    out = resize_center_crop(x, 20)
    assert out.shape == (20, 20, 3) and out[:, 2:-2].min() > 0.9  # the middle, not the sides


def test_dinov3_as_inner_encoder_of_the_ct_slicer(dinov3, realdata: Path) -> None:
    spec = {"type": "dinov3", "random_init": True, "config": TINY_DINOV3, "image_size": 64}
    slicer = create_expert("ct-slicer", image_expert=spec, k_slices=4, hu_window=[-160, 240])
    item = slicer.load("ct/example_ct.nii.gz", realdata)
    assert len(item.slices) == 4 and item.slices[0].shape == (3, 64, 64)
    assert item.indices[0] == 0 and item.indices[-1] == item.shape[0] - 1
    vec = slicer.embed([item])
    assert vec.shape == (1, 32) and np.isfinite(vec).all()


def test_dinov3_as_tile_encoder_on_the_real_svs(realdata: Path) -> None:
    spec = {"type": "dinov3", "random_init": True, "config": TINY_DINOV3, "image_size": 64}
    tiler = create_expert("slide-tiles", tile_expert=spec, target_mpp=4.0, tile_px=64, max_tiles=4)
    item = tiler.load("wsi/cmu-1-small-region.svs", realdata)
    assert 1 <= len(item.tiles) <= 4 and item.mpp_source == "openslide.mpp"
    # every kept tile lies inside the tissue mask
    sy, sx = item.dims[1] / item.mask.shape[0], item.dims[0] / item.mask.shape[1]
    for x, y in item.coords:
        cy, cx = int((y + item.tile_size0 / 2) / sy), int((x + item.tile_size0 / 2) / sx)
        assert item.mask[min(cy, item.mask.shape[0] - 1), min(cx, item.mask.shape[1] - 1)]
    vec = tiler.embed([item])
    assert vec.shape == (1, 32) and np.isfinite(vec).all()


# -- BiomedCLIP (open_clip) ------------------------------------------------------------------


def test_biomedclip_without_open_clip_says_what_to_install() -> None:
    import importlib.util

    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed here")
    e = create_expert("biomedclip", random_init=True, config=TINY_OPEN_CLIP)
    assert "open_clip_torch" in e.missing_imports()
    with pytest.raises(MissingPackage, match=r"open_clip_torch.*-e \"\.\[vision\]\""):
        e.embed([e.prepare_array(_img(0))])


def test_biomedclip_tiny_random_init_and_local_dir(tmp_path: Path) -> None:
    need("open_clip", "timm", "torchvision")
    e = create_expert("biomedclip", random_init=True, config=TINY_OPEN_CLIP, batch_size=2)
    assert e.dim == 24 and e.input_size == 224
    item = e.prepare_array(_img(0, (80, 64)))
    assert item.shape == (3, 224, 224)
    vec = assert_padding_invariant(e, item, [e.prepare_array(_img(1)), e.prepare_array(_img(2))])
    # the real loading path: a local open_clip folder (config + checkpoint with visual.* tensors)
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": TINY_OPEN_CLIP,
                "preprocess_cfg": {"mean": e.params["mean"], "std": e.params["std"]},
            }
        )
    )
    state = {f"visual.{k}": v.contiguous() for k, v in e.get_model().state_dict().items()}
    state["text.proj.weight"] = torch.zeros(2, 2)  # the text tower's tensors are ignored
    save_file(state, str(folder / "open_clip_model.safetensors"))
    local = create_expert("biomedclip", local_dir=str(folder))
    assert local.weights_status()[0] == "ok"
    np.testing.assert_allclose(
        local.embed([local.prepare_array(_img(0, (80, 64)))])[0], vec, atol=1e-5
    )
    # a pickled-free .bin checkpoint loads too (torch.load(weights_only=True))
    (folder / "open_clip_model.safetensors").unlink()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    local_bin = create_expert("biomedclip", local_dir=str(folder))
    np.testing.assert_allclose(local_bin.embed([item])[0], vec, atol=1e-5)


# -- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA device")
def test_dinov3_bf16_autocast_on_gpu_matches_cpu(dinov3) -> None:
    item = dinov3.prepare_array(_img(0))
    cpu = dinov3.embed([item])[0]
    gpu = create_expert(
        "dinov3", random_init=True, config=TINY_DINOV3, image_size=64, device="cuda"
    )
    out = gpu.forward(gpu.collate([item]).pin_memory())[0]
    cos = float(out @ cpu / (np.linalg.norm(out) * np.linalg.norm(cpu)))
    assert cos > 0.99
