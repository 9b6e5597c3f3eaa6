"""External validation: a model trained on one cohort evaluated on a shifted one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusion.checkpoint import load_model
from fusion.data import load_fusion_data
from fusion.evaluate import collect_metrics, run_external
from fusion.external import cohort_fitted_experts
from fusion.inference import predict_data as predict
from fusion.train import run_training
from medmix.config import cache_paths, dataset_paths
from medmix.plan import external_pairs, external_protocol
from tests.paper_helpers import make_config, write_cohort


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(
        tmp_path_factory.mktemp("results"),
        datasets=("src", "tgt"),
        external=[{"source": "src", "target": "tgt"}],
    )
    write_cohort(cfg, "src", n=300, seed=0)
    write_cohort(cfg, "tgt", n=200, seed=1, shift=0.5, hashes={"b2": "refit-on-target"})
    for method in ("medmix", "meanavg"):
        out = dataset_paths(cfg, "src").run_dir("full", method)
        run_training(cfg, "src", method, "full", out, threads=1)
    return cfg


def test_external_run_uses_source_statistics_and_thresholds(pair: dict) -> None:
    out = run_external(pair, "src", "tgt", "medmix")
    assert out == dataset_paths(pair, "src").run_dir(external_protocol("tgt"), "medmix")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "external" and summary["seeds"] == [0, 1]
    assert summary["target"] == "tgt" and summary["dataset"] == "src"
    assert summary["unaligned_experts"] == ["b/b2"]  # its preprocessing differs by cohort
    m = json.loads((out / "seed1" / "metrics.json").read_text())
    src = json.loads(
        (
            dataset_paths(pair, "src").run_dir("full", "medmix") / "seed1" / "metrics.json"
        ).read_text()
    )
    assert m["thresholds"] == src["thresholds"]
    ext = m["splits"]["external"]
    assert list(m["splits"]) == ["external"] and ext["n"] == 200  # every target sample
    assert 0.0 <= ext["macro"]["auroc"] <= 1.0
    # the predictions are the source model on target features scaled by SOURCE statistics
    lm = load_model(dataset_paths(pair, "src").run_dir("full", "medmix") / "seed1")
    caches = cache_paths(pair, "tgt")
    data = load_fusion_data(dataset_paths(pair, "tgt").manifest, caches, lm.standardization)
    want = predict(lm.model, data).probs
    import pandas as pd

    got = pd.read_parquet(out / "seed1" / "predictions.parquet")
    cols = [c for c in got.columns if c.startswith("prob_")]
    np.testing.assert_allclose(got[cols].to_numpy(), want, rtol=1e-5, atol=1e-6)
    assert set(got["split"]) == {"external"}
    # the run is collected like any other, under protocol external-tgt, split external
    run_external(pair, "src", "tgt", "meanavg")
    table = collect_metrics(dataset_paths(pair, "src").root / "runs", "src")
    ext_rows = table[table["protocol"] == "external-tgt"]
    assert set(ext_rows["split"]) == {"external"}
    assert set(ext_rows["method"]) == {"medmix", "meanavg"}


def test_external_pairs_are_checked(pair: dict) -> None:
    assert external_pairs(pair) == [("src", "tgt")]
    fewer = {**pair, "datasets": {**pair["datasets"], "tgt": {
        "adapter": "demo", "modalities": {"a": ["a1", "a2"]}}}}  # fmt: skip
    assert external_pairs(fewer) == [("src", "tgt")]  # a subset: the rest is missing
    more = {**pair, "datasets": {**pair["datasets"], "tgt": {**pair["datasets"]["tgt"],
        "modalities": {**pair["datasets"]["tgt"]["modalities"], "z": ["a1"]}}}}  # fmt: skip
    with pytest.raises(ValueError, match=r"non-empty subset .*not in the source: \['z'\]"):
        external_pairs(more)
    other = {**pair, "datasets": {**pair["datasets"], "tgt": {
        "adapter": "demo", "modalities": {"a": ["a1"]}}}}  # fmt: skip
    with pytest.raises(ValueError, match="experts of 'a' differ"):
        external_pairs(other)
    with pytest.raises(ValueError, match="not configured"):
        external_pairs({**pair, "external": [{"source": "src", "target": "nope"}]})
    src = {**pair["datasets"]["src"], "teachers": {"a": "a1"}}
    with pytest.raises(ValueError, match=r"teachers differ .*datasets\.tgt\.teachers"):
        external_pairs({**pair, "datasets": {**pair["datasets"], "src": src}})
    cfg = {"experts": {"t": {"type": "tfidf-svd"}, "r": {"type": "rag"}, "m": {"type": "minilm"},
                       "c": {"type": "catch22", "variables": ["hr"]}, "c2": {"type": "catch22"}}}  # fmt: skip
    assert cohort_fitted_experts(cfg, ["t", "r", "m", "c", "c2"]) == ["t", "r", "c2"]


def test_external_target_lacking_a_modality(pair: dict, tmp_path) -> None:
    """MIMIC-IV-MM -> MIMIC-III: the target has no cache for a modality of the source; that
    modality is missing for every sample, and the predictions are the model's on the target
    with the modality masked out."""
    tgt = pair["datasets"]["tgt"]
    lacking = "b"
    cfg = {**pair, "datasets": {**pair["datasets"], "tgt": {**tgt, "modalities": {
        m: e for m, e in tgt["modalities"].items() if m != lacking}}}}  # fmt: skip
    out = run_external(cfg, "src", "tgt", "medmix", out=tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["absent_modalities"] == [lacking]
    assert summary["unaligned_experts"] == []  # b/b2 is not read at all
    lm = load_model(dataset_paths(pair, "src").run_dir("full", "medmix") / "seed0")
    caches = cache_paths(pair, "tgt")
    full = load_fusion_data(dataset_paths(pair, "tgt").manifest, caches, lm.standardization)
    masked = load_fusion_data(
        dataset_paths(pair, "tgt").manifest,
        {m: {e: (None if m == lacking else p) for e, p in ev.items()} for m, ev in caches.items()},
        lm.standardization,
    )
    b = full.modalities.index(lacking)
    assert not masked.delta[:, b].any() and full.delta[:, b].any()
    import pandas as pd

    got = pd.read_parquet(out / "seed0" / "predictions.parquet")
    cols = [c for c in got.columns if c.startswith("prob_")]
    np.testing.assert_allclose(
        got[cols].to_numpy(), predict(lm.model, masked).probs, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(got[cols].to_numpy(), predict(lm.model, full).probs, atol=1e-4)
    # a cohort's own data cannot lack a modality: no statistics to fix its dim
    with pytest.raises(Exception, match="needs a saved model's statistics"):
        load_fusion_data(dataset_paths(pair, "tgt").manifest, {"a": {"a1": None}})


def test_rag_branch_alignment_follows_its_bridges(tmp_path) -> None:
    """The RAG branch is one embedding space across cohorts when its bridged text is: fixed
    bridges (text pass-through, EHR serialisation, report generators) always, the
    nearest-report bridge when both cohorts drew from the source's training reports."""
    import pandas as pd

    from extractors.rag.bridge import write_bridge
    from fusion.external import _rag_bridges_aligned

    cfg = {"results": str(tmp_path), "datasets": {"src": {}, "tgt": {}}}
    rows = pd.DataFrame({"sample_id": ["s0"], "text": ["t"], "source": ["x"], "status": ["ok"],
                         "reason": [None]})  # fmt: skip

    def bridge(ds: str, kind: str, library: str | None = None) -> None:
        meta = {"bridge": {"type": kind}, **({"library_dataset": library} if library else {})}
        write_bridge(rows, tmp_path / ds / "bridge" / "m.parquet", meta)

    assert not _rag_bridges_aligned(cfg, "src", "tgt", "m")  # no bridge files: cannot vouch
    bridge("src", "passthrough")
    bridge("tgt", "passthrough")
    assert _rag_bridges_aligned(cfg, "src", "tgt", "m")
    bridge("src", "nearest-report", "src")
    bridge("tgt", "nearest-report", "tgt")  # the target's own reports: another library
    assert not _rag_bridges_aligned(cfg, "src", "tgt", "m")
    bridge("tgt", "nearest-report", "src")  # --fit-manifest on the source, as the workflow does
    assert _rag_bridges_aligned(cfg, "src", "tgt", "m")
    bridge("tgt", "passthrough")
    assert not _rag_bridges_aligned(cfg, "src", "tgt", "m")  # different bridges
