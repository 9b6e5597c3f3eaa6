"""The fused training step of the expert encoder (fusion.expert_group._GroupTrainStep) gives
bit for bit the losses and parameters of the composed operations it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.data import FusionData
from fusion.expert_group import ExpertGroup, keep_mask
from fusion.registry import MethodPlan
from fusion.trainer import SeedTrainer
from medmix.hparams import FusionHParams
from tests.helpers import tiny_fusion_data

# two groups of input widths (12: a1, a2, c1; 8: b1) and modalities with 2, 1 and 1 experts
DIMS = {"a": {"a1": 12, "a2": 12}, "b": {"b1": 8}, "c": {"c1": 12}}


def _data(n: int = 200) -> FusionData:
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(n, 2, generator=g)
    xs, delta = [], torch.zeros(n, len(DIMS), 2)
    for mi, ex in enumerate(DIMS.values()):
        for ei, dim in enumerate(ex.values()):
            x = latent @ torch.randn(2, dim, generator=g) + 0.5 * torch.randn(n, dim, generator=g)
            ok = torch.rand(n, generator=g) > 0.2
            x[~ok] = 0
            xs.append(x.contiguous())
            delta[:, mi, ei] = ok.float()
    y = (latent + 0.3 * torch.randn(n, 2, generator=g) > 0).float()
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    return tiny_fusion_data(DIMS, xs, delta, y, split, task_type="multilabel")


def _train_steps(
    data: FusionData, order: str, seeds: list[int], fused: bool, steps: int = 4, p: float = 0.2
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    ExpertGroup.fused_training = fused
    try:
        hp = FusionHParams(d=8, adapter_bottleneck=4, dropout=p, batch_order=order)
        trainer = SeedTrainer(
            [data] * len(seeds), MethodPlan("medmix", "medmix", data.modalities), hp, seeds,
            torch.device("cpu"),
        )  # fmt: skip
        trainer.skeleton.train()
        train = data.split_index("train")
        losses = []
        for step in range(steps):
            rows = [train[torch.randperm(len(train), generator=torch.Generator().manual_seed(s))]
                    for s in seeds]  # fmt: skip
            idx = torch.stack(rows)[:, step * 16 : (step + 1) * 16]
            losses.append(trainer._step(idx, 0.0)[0])
        return losses, {n: p.detach().clone() for n, p in trainer.stack.params.items()}
    finally:
        ExpertGroup.fused_training = True


@pytest.mark.parametrize(
    ("order", "seeds", "p"),
    [("per_seed", [0, 1, 2], 0.2), ("shared", [0, 1, 2], 0.2), ("per_seed", [5], 0.2),
     ("per_seed", [0, 1], 0.0), ("shared", [0, 1], 0.0)],
)  # fmt: skip
def test_fused_training_step_is_bit_identical_to_the_composed_operations(
    order: str, seeds: list[int], p: float
) -> None:
    data = _data()
    ref_losses, ref_params = _train_steps(data, order, seeds, fused=False, p=p)
    losses, params = _train_steps(data, order, seeds, fused=True, p=p)
    for a, b in zip(losses, ref_losses, strict=True):
        assert torch.equal(a, b)
    assert params.keys() == ref_params.keys()
    for name, t in params.items():
        assert torch.equal(t, ref_params[name]), name
    initial = _train_steps(data, order, seeds, fused=True, steps=0, p=p)[1]
    assert any(not torch.equal(t, initial[n]) for n, t in params.items())  # it did train


def test_training_forward_is_one_fused_node_and_evaluation_is_not() -> None:
    torch.manual_seed(0)
    g = ExpertGroup(3, 20, 6, 4, dropout=0.2)
    h = torch.randn(3, 5, 20)
    assert type(g.train()(h).grad_fn).__name__ == "_GroupTrainStepBackward"
    with torch.no_grad():
        assert g.eval()(h).grad_fn is None
    assert "_GroupTrainStep" not in type(g.eval()(h).grad_fn).__name__


def test_keep_mask_values_are_zero_or_the_inverse_keep_rate() -> None:
    torch.manual_seed(0)
    m = keep_mask((4, 1000), 0.2, torch.device("cpu"), torch.float32)
    assert m.dtype == torch.float32 and set(m.unique().tolist()) == {0.0, 1.25}
    assert 0.75 < float((m > 0).float().mean()) < 0.85
