"""Teacher–student distillation (docs/design.md §6 item 6): losses by hand, masking, the λ ramp,
training-only heads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from fusion.checkpoint import load_model
from fusion.distill import (
    DistillHeads,
    TeacherBatch,
    cosine_distill_loss,
    pairwise_distance,
    rkd_distance_loss,
    teacher_batch,
)
from fusion.losses import kd_lambda
from fusion.predict import predict
from fusion.registry import build_model
from fusion.train import run_training
from medmix.config import dataset_paths
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic


def test_rkd_by_hand_three_points() -> None:
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5 (mean 4)
    t = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 (mean 2)
    loss = rkd_distance_loss(s, t, torch.ones(3, dtype=torch.bool))
    psi_s = torch.tensor([3.0, 4.0, 5.0]) / 4
    psi_t = torch.tensor([1.0, 3.0, 2.0]) / 2
    diff = (psi_s - psi_t).abs()
    huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    assert loss.item() == pytest.approx(huber.mean().item(), rel=1e-5)
    assert rkd_distance_loss(s, s, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # scale invariance: ψ divides by the mean distance
    assert rkd_distance_loss(10 * s, t, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(
        loss.item(), rel=1e-5
    )


def test_rkd_ignores_pairs_with_a_missing_modality() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 5, generator=g, requires_grad=True)
    t = torch.randn(8, 7, generator=g)
    avail = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    loss = rkd_distance_loss(s, t, avail)
    sub = rkd_distance_loss(s[avail], t[avail], torch.ones(int(avail.sum()), dtype=torch.bool))
    assert loss.item() == pytest.approx(sub.item(), rel=1e-5)
    # the missing samples' values change nothing (neither the mean distance nor the loss)
    s2, t2 = s.detach().clone(), t.clone()
    s2[~avail], t2[~avail] = 1e3, -1e3
    assert rkd_distance_loss(s2, t2, avail).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.all(s.grad[~avail] == 0)
    one = torch.zeros(8, dtype=torch.bool)
    one[3] = True
    assert rkd_distance_loss(s, t, one).item() == 0.0  # no pair at all: 0, not NaN
    assert torch.isfinite(pairwise_distance(torch.zeros(3, 2))).all()


def test_cosine_loss_by_hand_and_masked() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    k = torch.tensor([[1.0, 1.0], [0.0, -1.0], [9.0, 9.0]])
    avail = torch.tensor([True, True, False])
    expected = ((1 - 1 / math.sqrt(2)) + (1 - (-1))) / 2
    assert cosine_distill_loss(z, k, avail).item() == pytest.approx(expected, rel=1e-6)
    assert cosine_distill_loss(z, k, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_heads_combine_cos_and_gamma_rkd_per_modality() -> None:
    torch.manual_seed(0)
    heads = DistillHeads([6, 4], [0, 2], d=5)
    z = torch.randn(10, 3, 5)
    t = [torch.randn(10, 6), torch.randn(10, 4)]
    ok = torch.rand(10, 2) > 0.3
    delta = torch.ones(10, 3, 2)
    delta[0, 2] = 0  # modality 2 masked by a protocol: its teacher is missing too
    tb = teacher_batch(t, ok, delta, heads.modality_index)
    assert not tb.available[0, 1]
    with torch.no_grad():
        parts = heads(z, tb, gamma=0.7)
        manual = 0.0
        for j, mi in enumerate([0, 2]):
            a = tb.available[:, j]
            manual += cosine_distill_loss(z[:, mi], heads.heads[j](t[j]), a)
            manual += 0.7 * rkd_distance_loss(z[:, mi], t[j], a)
    assert parts.total.item() == pytest.approx(float(manual), rel=1e-5)
    assert parts.total.item() == pytest.approx((parts.cos + 0.7 * parts.rkd).item(), rel=1e-6)


def test_lambda_ramp_starts_at_zero() -> None:
    assert kd_lambda(0, 5, 0.5) == 0.0
    assert kd_lambda(5, 5, 0.5) == kd_lambda(50, 5, 0.5) == 0.5
    assert kd_lambda(2, 4, 1.0) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    fusion = FUSION | {"lambda_kd": 0.5, "rkd_gamma": 1.0, "warmup_epochs": 3, "max_epochs": 14,
                       "patience": 20}  # fmt: skip
    cfg = make_config(tmp_path_factory.mktemp("results"), fusion)
    write_synthetic(cfg, teacher_dim=24)
    out = dataset_paths(cfg, DATASET).run_dir("full", "medmix")
    run_training(cfg, DATASET, "medmix", "full", out, seeds=[0, 1], threads=1)
    return {"cfg": cfg, "out": out}


def test_distillation_loss_falls_and_has_zero_weight_at_epoch_zero(kd_run: dict) -> None:
    for seed in (0, 1):
        hist = pd.read_csv(kd_run["out"] / f"seed{seed}" / "history.csv")
        assert hist["lambda_kd"].iloc[0] == 0.0
        assert list(hist["lambda_kd"].iloc[:4]) == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])
        # at epoch 0 the objective is the task loss alone
        assert hist["train_loss"].iloc[0] == pytest.approx(hist["task_loss"].iloc[0], rel=1e-6)
        later = hist["train_loss"].iloc[1:] - hist["task_loss"].iloc[1:]
        assert (later > 0).all()  # λ·L_KD is part of the objective once λ > 0
        kd = hist["kd_loss"].to_numpy()
        assert kd[-1] < 0.8 * kd[1], kd
    metrics = json.loads((kd_run["out"] / "seed0" / "metrics.json").read_text())
    assert metrics["distillation"]["teachers"] == ["a", "b"]


def test_saved_model_has_no_teacher_head_and_predicts_without_teachers(kd_run: dict) -> None:
    seed_dir = kd_run["out"] / "seed0"
    lm = load_model(seed_dir)
    keys = set(load_file(str(seed_dir / "model.safetensors")))
    assert keys == set(build_model(lm.spec).state_dict())  # the student only
    assert lm.spec.experts == {"a": ["a1", "a2"], "b": ["b1", "b2"]}
    paths = dataset_paths(kd_run["cfg"], DATASET)
    caches = {m: {e: paths.cache(m, e) for e in lm.spec.experts[m]} for m in lm.spec.modalities}
    res = predict(seed_dir, caches)  # no teacher cache anywhere
    saved = pd.read_parquet(seed_dir / "predictions.parquet")
    np.testing.assert_allclose(res.probs[:, 0], saved["prob_y1"], atol=1e-6)


def test_teacher_embeddings_are_used_only_where_the_modality_is(kd_run: dict) -> None:
    """A teacher whose student modality is missing (z = 0) adds no cosine term."""
    heads = DistillHeads([3], [0], d=4)
    z = torch.zeros(4, 1, 4)
    z[:2] = torch.randn(2, 1, 4)
    tb = teacher_batch([torch.randn(4, 3)], torch.ones(4, 1, dtype=torch.bool),
                       torch.tensor([[[1.0]], [[1.0]], [[0.0]], [[0.0]]]), [0])  # fmt: skip
    assert tb.available[:, 0].tolist() == [True, True, False, False]
    with torch.no_grad():
        full = heads(z, tb, 1.0).total
        only = heads(z[:2], TeacherBatch([tb.t[0][:2]], tb.available[:2]), 1.0).total
    assert full.item() == pytest.approx(only.item(), rel=1e-5)
    assert F.cosine_similarity(z[2], z[2] + 1e-3).isfinite().all()
    assert Path(kd_run["out"]).is_dir()
