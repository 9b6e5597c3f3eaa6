"""The linear-probe reference (fusion.probe): logistic regression on the same features and split."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fusion.__main__ import main as fusion_main
from fusion.checkpoint import load_model
from fusion.data import load_fusion_data
from fusion.probe_fit import GRID, MAX_ITER, TOL, fit_probe, probe_features
from fusion.registry import method_class, resolve_method
from fusion.train import run_training
from medmix.config import cache_paths, dataset_paths
from medmix.methods import MethodError
from tests.fusion.test_fusion_train import DATASET, EXPERTS, make_config, write_synthetic

METHOD = "linear-probe"
RUN_FILES = ["config.json", "history.csv", "metrics.json", "model.safetensors",
             "predictions.parquet"]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"), {"bootstrap": 20})
    write_synthetic(cfg, n=400)
    return cfg


@pytest.fixture(scope="module")
def data(synth: dict):
    paths = dataset_paths(synth, DATASET)
    return load_fusion_data(paths.manifest, cache_paths(synth, DATASET))


@pytest.fixture(scope="module")
def fit(data):
    return fit_probe(data)


def _with_labels(data, rows: np.ndarray, rng: np.random.Generator):
    """``data`` with the labels of ``rows`` shuffled among themselves (per label)."""
    y = data.y.clone().numpy()
    idx = np.flatnonzero(rows)
    for j in range(y.shape[1]):
        y[idx, j] = y[rng.permutation(idx), j]
    return replace(data, y=torch.from_numpy(y))


def test_method_name_is_known_without_a_torch_model() -> None:
    plan = resolve_method(METHOD, list(EXPERTS))
    assert plan.base == METHOD and plan.modalities == list(EXPERTS)
    assert resolve_method(f"{METHOD}-only-b", list(EXPERTS)).modalities == ["b"]
    with pytest.raises(MethodError, match="scikit-learn"):
        method_class(METHOD)


def test_features_indicators_and_mean_imputation(data) -> None:
    x = probe_features(data)
    dims = [data.dims[m][e] for m, e in data.flat_experts]
    assert x.shape == (data.n, sum(dims) + len(dims))
    ind = x[:, sum(dims) :]
    train = data.split == "train"
    start = 0
    for k, (m, e) in enumerate(data.flat_experts):
        mi, ei = data.modalities.index(m), data.experts[m].index(e)
        ok = data.delta[:, mi, ei].numpy() > 0
        assert (~ok).any() and ok.any()
        np.testing.assert_array_equal(ind[:, k], (~ok).astype(float))  # 1 = missing
        block = x[:, start : start + dims[k]]
        assert np.all(block[~ok] == 0)  # imputed with the train mean, i.e. 0 standardised
        # standardised on the train split's available rows
        np.testing.assert_allclose(block[ok & train].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(block[ok & train].std(0), 1, atol=1e-3)
        # the raw embedding (before standardisation) is recovered with the train statistics
        mu, sd = data.standardization.mean[m][e], data.standardization.std[m][e]
        assert np.all(np.isfinite(block[ok] * sd + mu))
        start += dims[k]


def test_predictions_equal_sklearn_by_hand(data, fit) -> None:
    x = probe_features(data)
    y = data.y.numpy()
    train, val, test = (data.split == s for s in ("train", "val", "test"))
    pred = fit.predict(x)
    for j, out in enumerate(fit.outputs):
        assert out.criterion == "auroc" and (out.C, out.class_weight) in GRID
        known = np.isfinite(y[:, j])
        by_hand = LogisticRegression(
            C=out.C, class_weight=out.class_weight, solver="lbfgs", max_iter=MAX_ITER, tol=TOL
        ).fit(x[train & known], y[train & known, j].astype(int))
        np.testing.assert_allclose(
            pred.probs[test, j], by_hand.predict_proba(x[test])[:, 1], rtol=1e-7, atol=1e-9
        )
        # the chosen point is the best val AUROC of the grid (first one on ties)
        scores = [g["val_score"] for g in out.grid]
        assert out.val_score == max(scores) and scores.index(max(scores)) == [
            (g["C"], g["class_weight"]) for g in out.grid
        ].index((out.C, out.class_weight))
        assert out.converged


def test_test_labels_never_reach_the_fit_but_val_labels_choose_c(data, fit) -> None:
    rng = np.random.default_rng(7)
    x = probe_features(data)
    base = fit.predict(x).probs
    scrambled = fit_probe(_with_labels(data, data.split == "test", rng))
    assert scrambled.selection() == fit.selection()
    np.testing.assert_array_equal(scrambled.predict(x).probs, base)
    np.testing.assert_array_equal(scrambled.weight, fit.weight)
    # val labels choose C / class weight: scrambling them changes the choice (some seed)
    changed = False
    for s in range(10):
        other = fit_probe(_with_labels(data, data.split == "val", np.random.default_rng(s)))
        if other.selection() != fit.selection():
            changed = True
            assert not np.array_equal(other.predict(x).probs, base)
            break
    assert changed


def test_cli_writes_the_run_layout_and_a_loadable_checkpoint(synth: dict, data, fit) -> None:
    out = dataset_paths(synth, DATASET).run_dir("full", METHOD)
    argv = ["train", "--config", json.dumps(synth), "--dataset", DATASET, "--method", METHOD]
    assert fusion_main([*argv, "--out", str(out), "--seeds", "0", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed1", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["deterministic"] is True
    assert summary["method"] == METHOD and summary["seeds"] == [0, 1]
    assert summary["mean"]["auroc"] > 0.75, summary["mean"]
    assert set(summary["mean"]) == {"auroc", "auprc", "f1", "macro_f1", "accuracy", "brier", "ece"}
    assert summary["std"]["auroc"] == 0.0  # one deterministic fit for every seed
    chosen = summary["probe"]["selection"]["0"]
    assert set(chosen) == {"y1", "y2"} and chosen == summary["probe"]["selection"]["1"]
    assert {k: (v["C"], v["class_weight"]) for k, v in chosen.items()} == {
        k: (v["C"], v["class_weight"]) for k, v in fit.selection().items()
    }
    seed = out / "seed0"
    assert sorted(p.name for p in seed.iterdir()) == RUN_FILES
    metrics = json.loads((seed / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test"} and "ci" in metrics["splits"]["test"]
    assert metrics["probe"]["y1"]["C"] == chosen["y1"]["C"]
    pred = pd.read_parquet(seed / "predictions.parquet")
    assert list(pred.columns) == ["sample_id", "split", "prob_y1", "prob_y2"]
    np.testing.assert_allclose(
        pred[["prob_y1", "prob_y2"]].to_numpy(), fit.predict(probe_features(data)).probs, rtol=1e-6
    )
    assert list(pd.read_csv(seed / "history.csv").columns)[:3] == [
        "epoch",
        "train_loss",
        "val_loss",
    ]
    # the checkpoint (no pickled scikit-learn) reloads with the fusion models' loader
    lm = load_model(seed)
    assert lm.spec.method == METHOD and lm.spec.output_names == ["y1", "y2"]
    again = lm.predict(data)
    np.testing.assert_allclose(again.probs, pred[["prob_y1", "prob_y2"]].to_numpy(), rtol=1e-5)
    # the evaluate step collects it like any other run
    table = out.parent.parent.parent / "probe_metrics.parquet"
    assert fusion_main(
        ["evaluate", "--config", json.dumps(synth), "--dataset", DATASET, "--out", str(table)]
    ) == 0  # fmt: skip
    df = pd.read_parquet(table)
    assert set(df[df.method == METHOD].seed) == {0, 1}


def test_masking_protocol_refits_per_seed(synth: dict, tmp_path: Path) -> None:
    out = tmp_path / "train_random" / METHOD
    run_training(synth, DATASET, METHOD, "train_random-0.5", out, seeds=[0, 1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["protocol"] == "train_random-0.5"
    assert (out / "seed0" / "masks.parquet").is_file()
    assert summary["per_seed"]["0"]["auroc"] != summary["per_seed"]["1"]["auroc"]


def test_checkpoint_reading_paths_accept_the_probe(synth: dict, tmp_path: Path) -> None:
    """Test-time protocols (and external validation) re-score the saved full run; the
    efficiency table measures its checkpoint like a fusion model's."""
    from fusion.efficiency import fusion_cost
    from fusion.evaluate import evaluate_saved_runs

    run = tmp_path / "full" / METHOD
    run_training(synth, DATASET, METHOD, "full", run, seeds=[0])
    out = tmp_path / "test_random-0.5" / METHOD
    evaluate_saved_runs(synth, run, DATASET, {"test_random-0.5": out})
    summary = json.loads((out / "summary.json").read_text())
    full = json.loads((run / "summary.json").read_text())
    assert 0.5 < summary["mean"]["auroc"] < full["mean"]["auroc"]
    lm = load_model(run / "seed0")
    cost = fusion_cost(lm.model)
    assert cost.params == lm.model.weight.numel() + lm.model.bias.numel() and cost.flops > 0


def test_multiclass_is_one_multinomial_model() -> None:
    """A multiclass task: one multinomial fit over every class, as scikit-learn's by hand."""
    from fusion.data import FusionData, Standardization

    rng = np.random.default_rng(0)
    n, dims = 300, {"a": {"e1": 5}, "b": {"e2": 3}}
    z = rng.normal(size=(n, 8))
    y = np.argmax(z[:, :3] + 0.5 * rng.normal(size=(n, 3)), axis=1)
    ok = rng.random((n, 2)) > 0.15
    xs = [torch.from_numpy(np.where(ok[:, [0]], z[:, :5], 0).astype(np.float32)),
          torch.from_numpy(np.where(ok[:, [1]], z[:, 5:], 0).astype(np.float32))]  # fmt: skip
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50, dtype=object)
    stats = Standardization({m: {e: np.zeros(d) for e, d in ev.items()} for m, ev in dims.items()},
                            {m: {e: np.ones(d) for e, d in ev.items()} for m, ev in dims.items()})  # fmt: skip
    data = FusionData(
        "mc", "multiclass", ["y"], ["x", "y", "z"], ["a", "b"], {"a": ["e1"], "b": ["e2"]}, dims,
        np.array([f"s{i}" for i in range(n)], dtype=object), split, xs,
        torch.from_numpy(ok[:, :, None].astype(np.float32)), torch.from_numpy(y), stats,
    )  # fmt: skip
    fit = fit_probe(data)
    (out,) = fit.outputs
    assert fit.weight.shape == (3, 8 + 2) and out.criterion == "auroc"
    x = probe_features(data)
    tr = split == "train"
    by_hand = LogisticRegression(
        C=out.C, class_weight=out.class_weight, solver="lbfgs", max_iter=MAX_ITER, tol=TOL
    ).fit(x[tr], y[tr])
    te = split == "test"
    np.testing.assert_allclose(fit.predict(x[te]).probs, by_hand.predict_proba(x[te]), rtol=1e-6)
