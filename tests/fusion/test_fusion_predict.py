"""The inference API: fusion.predict on any subset of modalities and experts, from the two
checkpoint files alone; vectorised multi-seed training is deterministic."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.cache import read_cache
from fusion.checkpoint import load_model
from fusion.data import load_fusion_data
from fusion.predict import PredictInputError, predict
from fusion.train import run_training
from medmix.config import cache_paths, dataset_paths
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"), FUSION | {"max_epochs": 8})
    write_synthetic(cfg, n=300)
    out = dataset_paths(cfg, DATASET).run_dir("full", "medmix")
    run_training(cfg, DATASET, "medmix", "full", out, seeds=[0, 1], threads=1)
    return {"cfg": cfg, "out": out, "caches": cache_paths(cfg, DATASET)}


def test_reloaded_model_gives_identical_predictions(run: dict) -> None:
    for seed in (0, 1):
        seed_dir = run["out"] / f"seed{seed}"
        res = predict(seed_dir, run["caches"])
        saved = pd.read_parquet(seed_dir / "predictions.parquet")
        frame = res.to_frame()
        assert list(frame["sample_id"]) == list(saved["sample_id"])
        cols = [c for c in saved.columns if c.startswith(("prob_", "alpha_", "beta_"))]
        assert cols == [c for c in frame.columns if c != "sample_id"]
        np.testing.assert_allclose(frame[cols].to_numpy(), saved[cols].to_numpy(), atol=1e-6)
        assert res.alpha.shape == (300, 2, 2) and res.beta.shape == (300, 2)


def _masked_reference(run: dict, keep: dict[str, list[str]]) -> np.ndarray:
    """Probabilities of seed 0 on the full data with every expert not in ``keep`` masked."""
    lm = load_model(run["out"] / "seed0")
    paths = dataset_paths(run["cfg"], DATASET)
    data = load_fusion_data(paths.manifest, run["caches"], standardization=lm.standardization)
    delta = data.delta.clone()
    for mi, m in enumerate(lm.spec.modalities):
        for ei, e in enumerate(lm.spec.experts[m]):
            if e not in keep.get(m, []):
                delta[:, mi, ei] = 0
    return lm.predict(replace(data, delta=delta)).probs


def test_any_subset_of_modalities_and_experts(run: dict) -> None:
    seed_dir = run["out"] / "seed0"
    caches = run["caches"]
    only_a = predict(seed_dir, {"a": caches["a"]})
    np.testing.assert_allclose(only_a.probs, _masked_reference(run, {"a": ["a1", "a2"]}), atol=1e-6)
    assert np.all(only_a.beta[:, 1] == 0) and np.all(only_a.alpha[:, 1] == 0)
    one_each = predict(seed_dir, {"a": {"a2": caches["a"]["a2"]}, "b": {"b1": caches["b"]["b1"]}})
    ref = _masked_reference(run, {"a": ["a2"], "b": ["b1"]})
    np.testing.assert_allclose(one_each.probs, ref, atol=1e-6)
    assert np.all(one_each.alpha[:, 0, 0] == 0)
    has_a2 = one_each.alpha[:, 0, 1] > 0
    assert has_a2.any() and np.allclose(one_each.alpha[has_a2, 0, 1], 1.0)


def test_arrays_with_missing_rows_equal_caches(run: dict) -> None:
    seed_dir = run["out"] / "seed0"
    arrays, ids = {}, None
    for m, ev in run["caches"].items():
        arrays[m] = {}
        for e, path in ev.items():
            c = read_cache(path)
            x = c.embeddings.copy()
            x[c.status != "ok"] = np.nan  # non-finite rows are missing
            arrays[m][e] = x
            ids = c.sample_ids
    from_arrays = predict(seed_dir, arrays, sample_ids=ids)
    from_caches = predict(seed_dir, run["caches"])
    np.testing.assert_allclose(from_arrays.probs, from_caches.probs, atol=1e-6)
    # a subset of samples, in another order
    pick = ids[::-3]
    sub = predict(seed_dir, run["caches"], sample_ids=pick)
    order = pd.Index(from_caches.sample_ids).get_indexer(pick)
    np.testing.assert_allclose(sub.probs, from_caches.probs[order], atol=1e-6)
    nothing = predict(seed_dir, {"a": {"a1": np.full((2, 12), np.nan)}})
    assert nothing.n_no_modality == 2
    lm = load_model(seed_dir)
    np.testing.assert_allclose(nothing.logits, lm.model.prior.detach().expand(2, -1), atol=1e-6)


def test_bad_inputs_are_rejected(run: dict) -> None:
    seed_dir = run["out"] / "seed0"
    with pytest.raises(PredictInputError, match="no modality"):
        predict(seed_dir, {"c": {"a1": np.zeros((2, 12))}})
    with pytest.raises(PredictInputError, match="no expert"):
        predict(seed_dir, {"a": {"b1": np.zeros((2, 16))}})
    with pytest.raises(PredictInputError, match="dim"):
        predict(seed_dir, {"a": {"a1": np.zeros((2, 13))}})


def test_loads_without_the_training_code(run: dict) -> None:
    code = (
        "import sys, json; from fusion.predict import predict; "
        f"r = predict({str(run['out'] / 'seed1')!r}, "
        f"{{'b': {{'b2': {str(run['caches']['b']['b2'])!r}}}}}); "
        "assert 'fusion.train' not in sys.modules and 'fusion.distill' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith('fusion')); "
        "print(json.dumps(r.probs.shape))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [300, 2]


def test_vectorised_seeds_are_deterministic_and_distinct(run: dict, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run_training(run["cfg"], DATASET, "medmix", "full", again, seeds=[0, 1], threads=1)
    for seed in (0, 1):
        m1 = json.loads((run["out"] / f"seed{seed}" / "metrics.json").read_text())
        m2 = json.loads((again / f"seed{seed}" / "metrics.json").read_text())
        assert m1["splits"] == m2["splits"]
    p0 = pd.read_parquet(run["out"] / "seed0" / "predictions.parquet")["prob_y1"]
    p1 = pd.read_parquet(run["out"] / "seed1" / "predictions.parquet")["prob_y1"]
    assert not np.allclose(p0, p1)  # each seed has its own initialisation and batches


def test_cli_predict_writes_the_run_columns(run: dict, tmp_path: Path) -> None:
    from fusion.__main__ import main as fusion_main

    out = tmp_path / "pred.parquet"
    a1 = run["caches"]["a"]["a1"]
    seed_dir = run["out"] / "seed0"
    assert fusion_main(["predict", "--model", str(seed_dir), "--input", f"a/a1={a1}",
                        "--out", str(out)]) == 0  # fmt: skip
    frame = pd.read_parquet(out)
    assert list(frame.columns[:3]) == ["sample_id", "prob_y1", "prob_y2"]
    np.testing.assert_allclose(
        frame["prob_y1"], predict(seed_dir, {"a": {"a1": a1}}).probs[:, 0], atol=1e-7
    )
