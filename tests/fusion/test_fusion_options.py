"""Fusion options beyond the paper: the linear expert encoder and early stopping on val AUROC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fusion.medmix import ExpertGroup
from fusion.metrics import auroc_defined, macro_auroc
from fusion.registry import build_model
from fusion.train import run_training
from fusion.trainer import SeedTrainer
from medmix.config import dataset_paths
from medmix.hparams import FusionHParams
from tests.fusion.test_fusion_medmix import assert_masks_missing_and_prior, make_inputs, make_spec
from tests.fusion.test_fusion_train import DATASET, make_config, write_synthetic


def test_linear_projection_is_p_h_plus_p_with_no_adapter_or_norm() -> None:
    torch.manual_seed(0)
    g = ExpertGroup(2, 10, 4, 8, 0.5, linear=True).train()  # dropout is not applied either
    names = {n for n, _ in g.named_parameters()}
    assert names == {"w_in", "proj_bias"} and g.w_in.shape == (2, 4, 10)
    h = torch.randn(2, 5, 10)
    want = torch.einsum("kbd,kod->kbo", h, g.w_in) + g.proj_bias[:, None]
    torch.testing.assert_close(g(h), want)
    paper = {n for n, _ in ExpertGroup(2, 10, 4, 8, 0.5).named_parameters()}
    assert {"norm_weight", "adapter_out", "down_bias"} <= paper


@pytest.mark.parametrize("method", ["medmix", "medmix-sum", "concat"])
def test_linear_projection_masks_missing_and_falls_back_to_prior(method: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(method, "binary", 2)
    spec.projection = "linear"
    model = build_model(spec).eval()
    xs, delta = make_inputs(spec, 16)
    assert_masks_missing_and_prior(model, spec, xs, delta)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="fusion.projection: 'lin'"):
        FusionHParams.from_config({"projection": "lin"})
    with pytest.raises(ValueError, match="fusion.early_stopping: 'f1'"):
        FusionHParams.from_config({"early_stopping": "f1"})


def test_macro_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((50, 3)) > 0.6).astype(float)
    y[:5, 1] = np.nan
    logits = rng.normal(size=(50, 3))
    logits[:, 0] += 2 * np.nan_to_num(y[:, 0])
    want = np.mean(
        [
            roc_auc_score(y[np.isfinite(y[:, j]), j], logits[np.isfinite(y[:, j]), j])
            for j in range(3)
        ]
    )
    assert macro_auroc(y, logits, "multilabel") == pytest.approx(want)
    yc = rng.integers(0, 3, 60)
    lc = rng.normal(size=(60, 3))
    p = np.exp(lc) / np.exp(lc).sum(1, keepdims=True)
    want_c = np.mean([roc_auc_score(yc == c, p[:, c]) for c in range(3)])
    assert macro_auroc(yc, lc, "multiclass") == pytest.approx(want_c)
    assert not auroc_defined(np.ones((4, 2)), "binary")
    assert not auroc_defined(np.array([2, 2, -1]), "multiclass")
    assert auroc_defined(np.array([[1.0, np.nan], [0.0, 1.0]]), "binary")


def test_early_stopping_on_auroc_keeps_the_best_auroc_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a scripted val AUROC that peaks at epoch 3, the kept epoch is 3 and training stops
    `patience` epochs later; the loss criterion never computes the val AUROC."""
    script = [0.6, 0.7, 0.75, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    calls = {"n": 0}

    def scripted(self, idx):
        v = script[min(calls["n"], len(script) - 1)]
        calls["n"] += 1
        return torch.full((len(self.seeds),), v)

    monkeypatch.setattr(SeedTrainer, "val_auroc", scripted)
    fusion = {"d": 16, "adapter_bottleneck": 8, "max_epochs": 30, "patience": 4, "lr": 3e-3}
    runs, n_calls = {}, {}
    for crit in ("auroc", "loss"):
        before = calls["n"]
        cfg = make_config(tmp_path / crit, {**fusion, "early_stopping": crit})
        write_synthetic(cfg, n=300)
        out = dataset_paths(cfg, DATASET).run_dir("full", "medmix")
        run_training(cfg, DATASET, "medmix", "full", out, seeds=[0])
        runs[crit] = json.loads((out / "seed0" / "metrics.json").read_text())
        n_calls[crit] = calls["n"] - before
    assert runs["auroc"]["best_epoch"] == 3 and runs["auroc"]["epochs_run"] == 3 + 4 + 1
    assert runs["auroc"]["hparams"]["early_stopping"] == "auroc"
    assert n_calls == {"auroc": 8, "loss": 0}
