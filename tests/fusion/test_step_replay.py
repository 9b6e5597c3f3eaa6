"""Training steps replayed from their recorded operations (fusion.seed_stack.StepReplay) give
bit for bit the losses, parameters and random state of the ``vmap`` steps they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.data import FusionData, TeacherData
from fusion.registry import MethodPlan
from fusion.seed_stack import StepReplay
from fusion.trainer import SeedTrainer
from medmix.hparams import FusionHParams
from tests.helpers import tiny_fusion_data

# two groups of input widths (12: a1, a2, c1; 8: b1) and modalities with 2, 1 and 1 experts
DIMS = {"a": {"a1": 12, "a2": 12}, "b": {"b1": 8}, "c": {"c1": 12}}


def _data(n: int = 200, teacher: bool = False) -> FusionData:
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(n, 2, generator=g)
    xs, delta = [], torch.zeros(n, len(DIMS), 2)
    for mi, ex in enumerate(DIMS.values()):
        for ei, dim in enumerate(ex.values()):
            # rows are non-zero where δ = 0: the gather must zero them
            xs.append(
                latent @ torch.randn(2, dim, generator=g) + 0.5 * torch.randn(n, dim, generator=g)
            )
            delta[:, mi, ei] = (torch.rand(n, generator=g) > 0.2).float()
    y = (latent + 0.3 * torch.randn(n, 2, generator=g) > 0).float()
    y[:5, 1] = float("nan")  # unknown labels
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    t = None
    if teacher:
        t = TeacherData(
            modalities=["a", "c"],
            x=[torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)],
            ok=torch.rand(n, 2, generator=g) > 0.1,
            dims={"a": 6, "c": 5},
        )
    return tiny_fusion_data(DIMS, xs, delta, y, split, task_type="multilabel", teacher=t)


def _train_steps(
    data: FusionData, order: str, seeds: list[int], replay: bool, p: float, lams: list[float]
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], torch.Tensor, SeedTrainer]:
    hp = FusionHParams(d=8, adapter_bottleneck=4, dropout=p, batch_order=order, lambda_kd=0.1)
    SeedTrainer.replay_steps = replay
    try:
        trainer = SeedTrainer(
            [data] * len(seeds), MethodPlan("medmix", "medmix", data.modalities), hp, seeds,
            torch.device("cpu"),
        )  # fmt: skip
    finally:
        SeedTrainer.replay_steps = True
    assert (trainer.replay is not None) == replay
    trainer.skeleton.train()
    train = data.split_index("train")
    rows = [train[torch.randperm(len(train), generator=torch.Generator().manual_seed(s))]
            for s in seeds]  # fmt: skip
    perm = torch.stack(rows)
    outs = []
    start = 0
    for step, lam in enumerate(lams):
        size = 16 if step % 3 != 2 else 7  # a short batch in between: another signature
        outs += [t.clone() for t in trainer._step(perm[:, start : start + size], lam)]
        start += size
    params = {n: p.detach().clone() for n, p in trainer.stack.params.items()}
    return outs, params, torch.rand(4), trainer


@pytest.mark.parametrize(
    ("order", "p", "teacher"),
    [("per_seed", 0.2, False), ("shared", 0.2, False), ("per_seed", 0.0, False),
     ("per_seed", 0.2, True), ("shared", 0.0, True)],
)  # fmt: skip
def test_replayed_steps_are_bit_identical_to_the_vmap_steps(
    order: str, p: float, teacher: bool
) -> None:
    data = _data(teacher=teacher)
    lams = [0.0, 0.0, 0.0, 0.05, 0.05, 0.1, 0.1]
    torch.manual_seed(1)
    ref_outs, ref_params, ref_next, _ = _train_steps(data, order, [0, 1, 2], False, p, lams)
    torch.manual_seed(1)
    outs, params, after, trainer = _train_steps(data, order, [0, 1, 2], True, p, lams)
    assert trainer.distill == teacher
    for a, b in zip(outs, ref_outs, strict=True):
        assert torch.equal(a, b)
    assert params.keys() == ref_params.keys()
    for name, t in params.items():
        assert torch.equal(t, ref_params[name]), name
    assert torch.equal(after, ref_next)  # the recording drew no random number
    # one recording per signature: (batch size, λ) in (16, 0), (7, 0), (16, .05), (7, .1), (16, .1)
    assert len(trainer.replay.graphs) == 5


def test_the_replayed_step_is_one_autograd_node() -> None:
    trainer = _train_steps(_data(), "per_seed", [0, 1], True, 0.2, [0.0])[3]
    idx = trainer.datas[0].split_index("train")[:10].expand(2, -1)
    args = (trainer.inputs.groups(idx), trainer.inputs.delta(idx), trainer.inputs.y(idx), None,
            None, trainer.inputs.stats(idx))  # fmt: skip
    total, task, kd = trainer._call("train", True, *args)
    assert type(total.grad_fn).__name__ == "_ReplayBackward"
    assert task.grad_fn is None and kd.grad_fn is None


def test_unused_parameters_get_no_gradient() -> None:
    def fn(params, buffers, scale):
        y = params["w"] * scale
        return y.sum(dim=1), y.mean(dim=1).detach(), y.new_zeros(y.shape[0])

    params = {
        "w": torch.randn(3, 4, requires_grad=True),
        "unused": torch.randn(3, requires_grad=True),
    }
    replay = StepReplay(fn)
    total, task, kd = replay(params, {}, 2.0)
    total.sum().backward()
    assert torch.equal(params["w"].grad, torch.full((3, 4), 2.0))
    assert params["unused"].grad is None
    assert torch.equal(task, (params["w"] * 2.0).mean(dim=1))


def test_replayed_gradients_pass_gradcheck_in_float64() -> None:
    x = torch.randn(3, 5, 2, dtype=torch.float64)

    def fn(params, buffers, lam):
        h = torch.tanh(torch.bmm(params["w"], x)) * params["b"].unsqueeze(-1)
        total = torch.softmax(h, dim=-1).square().sum(dim=(1, 2)) + lam * params["b"].sum(dim=1)
        return total, total.detach(), total.detach() * 0

    replay = StepReplay(fn)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def f(w, b):
        return replay({"w": w, "b": b}, {}, 0.5)[0]

    w = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (w, b))
    assert len(replay.graphs) == 1  # every call replayed the one recording
