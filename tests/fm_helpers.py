"""Tiny random-init configurations of the FM experts' classes, shared by the FM tests."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_QWEN2 = {**TINY_BERT, "num_key_value_heads": 1}
TINY_DINOV3 = {**TINY_BERT, "patch_size": 16, "image_size": 64}
TINY_T5 = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "d_kv": 16}
TINY_MOIRAI = {"d_model": 64, "num_layers": 1}
TINY_OPEN_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {
        "timm_model_name": "vit_tiny_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,  # open_clip's TimmModel builds timm ViTs at their native size
    },
}
TINY_RADFM = {
    "image_size": 32,
    "frames": 16,
    "image_patch_size": 16,
    "frame_patch_size": 4,
    "dim": 24,
    "depth": 1,
    "heads": 2,
    "dim_head": 8,
    "mlp_dim": 32,
}
TINY_MERLIN = {"layers": [1, 1, 1, 1], "width_per_group": 8}


def need(*modules: str) -> None:
    """Skip (with the reason) unless every module is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (not installed in this environment: the README's test "
            "command installs them with the fm, vision and moirai extras)"
        )


def gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def assert_padding_invariant(expert, item, others, atol: float = 1e-4) -> np.ndarray:
    """The same item alone and inside a padded batch gives the same vector."""
    alone = expert.embed([item])
    batched = expert.embed([*others, item, *others])
    assert alone.shape == (1, expert.dim) and batched.shape == (1 + 2 * len(others), expert.dim)
    np.testing.assert_allclose(alone[0], batched[len(others)], atol=atol, rtol=1e-4)
    return alone[0]
