"""Shared fixtures: the real public data beside the repo and a tiny DINOv2 configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_DINOV2 = {
    "type": "dinov2",
    "random_init": True,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "image_size": 112,
    "patch_size": 14,
}


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``shared/realdata`` beside the repo (``MEDMIX_REALDATA`` overrides); skips when absent."""
    path = Path(
        os.environ.get(
            "MEDMIX_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"
        )
    )
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MEDMIX_REALDATA)")
    return path


@pytest.fixture(scope="session")
def tiny_dinov2_spec() -> dict:
    return dict(TINY_DINOV2)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tests run single-threaded torch, as the workflow's jobs do (2-core CI machines)."""
    try:
        import torch
    except ImportError:  # a test module that needs no torch
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
