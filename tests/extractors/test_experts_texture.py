"""The hand-crafted texture expert is named for what it is (``texture-glcm-lbp``, labelled
"GLCM/LBP texture (not IBSI)"); its former name ``image-radiomics`` is a deprecated alias with the
same features, cache hash and provenance, so existing configs and caches keep working."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from extractors.cache import config_hash
from extractors.experts.texture import TEXTURE_LABEL, RadiomicsExpert, TextureGlcmLbpExpert
from extractors.registry import create_expert, expert_class, list_experts

REPO = Path(__file__).resolve().parents[2]


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((96 + 8 * i, 80)).astype(np.float32) for i in range(n)]


def test_canonical_name_and_honest_label() -> None:
    assert expert_class("texture-glcm-lbp") is TextureGlcmLbpExpert
    assert "texture-glcm-lbp" in list_experts("image")
    expert = create_expert("texture-glcm-lbp")
    assert expert.label == TEXTURE_LABEL == "GLCM/LBP texture (not IBSI)"
    assert expert.model_id == "offline:texture-glcm-lbp" and expert.dim == 181


def test_alias_warns_and_is_the_same_computation(caplog) -> None:
    new = create_expert("texture-glcm-lbp")
    with (
        pytest.warns(DeprecationWarning, match="texture-glcm-lbp"),
        caplog.at_level(logging.WARNING, logger="medmix.extract"),
    ):
        old = create_expert("image-radiomics")
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    assert isinstance(old, RadiomicsExpert) and isinstance(old, TextureGlcmLbpExpert)
    assert old.model_id == new.model_id and old.label == new.label
    assert old.preprocess_config() == new.preprocess_config()
    a = new.embed([new.prepare_array(x) for x in _images()])
    b = old.embed([old.prepare_array(x) for x in _images()])
    np.testing.assert_array_equal(a, b)


def test_preprocess_hash_is_unchanged_by_the_rename() -> None:
    """Caches written before the rename (type image-radiomics) stay valid."""
    expert = TextureGlcmLbpExpert(image_size=256, glcm_size=128, levels=64, distances=[1, 2, 4, 8])
    before = {"type": "image-radiomics", "seed": 0, **expert.params}
    assert expert.cache_meta().preprocess_hash == config_hash(before)
    slicer = create_expert("ct-slicer", image_expert="texture-glcm-lbp", k_slices=4)
    assert slicer.preprocess_config()["image_expert"]["type"] == "image-radiomics"


def test_configs_use_the_new_name_and_keep_their_expert_names() -> None:
    for path in (REPO / "config.yaml", REPO / "config" / "smoke.yaml"):
        experts = yaml.safe_load(path.read_text())["experts"]
        assert experts["radiomics"]["type"] == "texture-glcm-lbp"  # same cache paths
        assert all(s.get("type") != "image-radiomics" for s in experts.values())
