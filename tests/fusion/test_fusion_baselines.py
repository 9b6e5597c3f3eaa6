"""Baselines (paper §4.1) train on a small cohort and beat chance; OneLLM is marked unavailable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.__main__ import main as fusion_main
from fusion.checkpoint import load_model
from fusion.evaluate import collect_metrics
from fusion.predict import predict
from fusion.registry import list_methods, resolve_method
from fusion.run_status import unavailable_runs
from fusion.train import run_training
from medmix.config import dataset_paths
from medmix.methods import TEACHER_EXPERT, MethodError
from medmix.plan import method_inputs
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"), FUSION | {"max_epochs": 25})
    write_synthetic(cfg, teacher_dim=24)
    return cfg


_RUNS: dict[str, dict] = {}


def train(cfg: dict, method: str) -> dict:
    if method not in _RUNS:
        out = dataset_paths(cfg, DATASET).run_dir("full", method)
        run_training(cfg, DATASET, method, "full", out, seeds=[0], threads=1)
        _RUNS[method] = json.loads((out / "summary.json").read_text()) | {"out": str(out)}
    return _RUNS[method]


def test_registry_knows_every_baseline() -> None:
    assert {"max", "attention", "m3care", "adacomed", "large", "onellm"} <= set(list_methods())
    plan = resolve_method("a-large", ["a", "b"], {"a": "big-a"})
    assert (plan.base, plan.modalities, plan.teacher_input) == ("large", ["a"], True)
    with pytest.raises(MethodError):
        resolve_method("b-large", ["a", "b"], {"a": "big-a"})  # no teacher for b
    with pytest.raises(MethodError):
        resolve_method("adacomed", ["a", "b"], {})


def test_method_inputs_name_the_caches_each_method_reads(cohort: dict) -> None:
    paths = dataset_paths(cohort, DATASET)
    ada = method_inputs(cohort, DATASET, "adacomed")
    assert ada.caches["a"][TEACHER_EXPERT] == paths.teacher("a") and not ada.teachers
    large = method_inputs(cohort, DATASET, "b-large")
    assert large.caches == {"b": {TEACHER_EXPERT: paths.teacher("b")}}
    assert method_inputs(cohort, DATASET, "medmix").teachers == {}  # lambda_kd = 0
    kd = dict(cohort, fusion=cohort["fusion"] | {"lambda_kd": 0.5})
    assert set(method_inputs(kd, DATASET, "medmix").teachers) == {"a", "b"}
    assert set(method_inputs(kd, DATASET, "medmix-only-a").teachers) == {"a"}
    assert method_inputs(kd, DATASET, "concat").teachers == {}
    assert "weights" in method_inputs(cohort, DATASET, "onellm").unavailable


@pytest.mark.parametrize("method", ["max", "attention", "m3care", "adacomed", "a-large"])
def test_baseline_trains_and_beats_chance(cohort: dict, method: str) -> None:
    summary = train(cohort, method)
    assert summary["status"] == "ok"
    threshold = 0.6 if method == "a-large" else 0.75  # one modality carries half the signal
    assert summary["mean"]["auroc"] > threshold, summary["mean"]
    seed_dir = Path(summary["out"]) / "seed0"
    pred = pd.read_parquet(seed_dir / "predictions.parquet")
    assert len(pred) == 600 and not pred.isna().any().any()
    assert np.all(pred[["prob_y1", "prob_y2"]].to_numpy() >= 0)


def test_m3care_predictions_do_not_depend_on_the_batch(cohort: dict) -> None:
    """Neighbours at inference are the saved reference bank, not the other samples."""
    seed_dir = Path(train(cohort, "m3care")["out"]) / "seed0"
    lm = load_model(seed_dir)
    assert float(lm.model.ref_mask.sum()) > 0  # the bank was saved
    paths = dataset_paths(cohort, DATASET)
    caches = {m: {e: paths.cache(m, e) for e in lm.spec.experts[m]} for m in lm.spec.modalities}
    full = predict(lm, caches)
    ids = full.sample_ids[::7]
    part = predict(lm, caches, sample_ids=ids, batch_size=5)
    np.testing.assert_allclose(part.probs, full.probs[::7], atol=1e-6)
    saved = pd.read_parquet(seed_dir / "predictions.parquet")
    np.testing.assert_allclose(full.probs[:, 0], saved["prob_y1"], atol=1e-6)


def test_adacomed_reads_teachers_at_inference(cohort: dict) -> None:
    seed_dir = Path(train(cohort, "adacomed")["out"]) / "seed0"
    lm = load_model(seed_dir)
    assert type(lm.model).deploys_teachers
    assert all(lm.spec.experts[m][-1] == TEACHER_EXPERT for m in lm.spec.modalities)
    paths = dataset_paths(cohort, DATASET)
    small = {m: {e: paths.cache(m, e) for e in ("a1", "a2", "b1", "b2") if e.startswith(m)}
             for m in ("a", "b")}  # fmt: skip
    both = {m: {**small[m], TEACHER_EXPERT: paths.teacher(m)} for m in small}
    with_t = predict(lm, both)
    without = predict(lm, small)  # large branch missing: the small model alone
    assert np.isfinite(without.probs).all()
    assert not np.allclose(with_t.probs, without.probs)
    saved = pd.read_parquet(seed_dir / "predictions.parquet")
    np.testing.assert_allclose(with_t.probs[:, 1], saved["prob_y2"], atol=1e-6)


def test_onellm_without_weights_is_marked_unavailable(cohort: dict, tmp_path: Path) -> None:
    out = dataset_paths(cohort, DATASET).run_dir("full", "onellm")
    argv = ["train", "--config", json.dumps(cohort), "--dataset", DATASET, "--method", "onellm"]
    assert fusion_main([*argv, "--out", str(out), "--seeds", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "unavailable" and summary["unavailable_kind"] == "weights absent"
    assert "OneLLM" in summary["reason"] and "weights" in summary["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    runs = dataset_paths(cohort, DATASET).root / "runs"
    assert "onellm" not in set(collect_metrics(runs, DATASET)["method"])
    assert {"protocol": "full", "method": "onellm", "kind": "weights absent"}.items() <= (
        unavailable_runs(runs)[0].items()
    )
    # with a folder that holds no checkpoint, the message says where it looked
    cfg = dict(cohort, fusion=cohort["fusion"] | {"onellm_weights": str(tmp_path)})
    assert str(tmp_path) in method_inputs(cfg, DATASET, "onellm").unavailable
