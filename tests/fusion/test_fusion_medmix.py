"""MedMIX building blocks: masked softmax, the prior fallback, shapes, registry, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from fusion.losses import kd_lambda, task_loss, total_loss
from fusion.medmix import (
    ExpertGroup,
    GroupedMLP,
    MedMIX,
    _InputProduct,
    _SharedInputProduct,
    masked_softmax,
    mlp,
)
from fusion.optim import AdamW, make_optimizer
from fusion.registry import MethodPlan, ModelSpec, build_model, list_methods, resolve_method
from fusion.train import train_seeds
from fusion.trainer import SeedTrainer
from medmix.hparams import FusionHParams
from medmix.methods import MethodError
from tests.helpers import tiny_fusion_data

MODALITIES = ["frontal", "lateral", "report"]
EXPERTS = {
    "frontal": ["radiomics", "dino"],
    "lateral": ["radiomics"],
    "report": ["minilm", "tfidf", "rag"],
}
DIMS = {
    "frontal": {"radiomics": 20, "dino": 12},
    "lateral": {"radiomics": 20},
    "report": {"minilm": 24, "tfidf": 8, "rag": 16},
}


def make_spec(
    method: str = "medmix", task_type: str = "multilabel", n_outputs: int = 15
) -> ModelSpec:
    labels = ["grade"] if task_type == "multiclass" else [f"l{i}" for i in range(n_outputs)]
    return ModelSpec(
        method=method,
        modalities=MODALITIES,
        experts=EXPERTS,
        dims=DIMS,
        task_type=task_type,
        label_names=labels,
        n_outputs=n_outputs,
        class_names=[f"c{i}" for i in range(n_outputs)] if task_type == "multiclass" else None,
        d=16,
        adapter_bottleneck=8,
        dropout=0.1,
    )


def make_inputs(
    spec: ModelSpec, b: int, seed: int = 0, p_missing: float = 0.4
) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, spec.dims[m][e], generator=g) for m, e in spec.flat_experts]
    delta = torch.zeros(b, len(spec.modalities), spec.max_experts)
    for mi, m in enumerate(spec.modalities):
        n_e = len(spec.experts[m])
        delta[:, mi, :n_e] = (torch.rand(b, n_e, generator=g) > p_missing).float()
    delta[0] = 0  # nothing at all
    delta[1] = 0
    delta[1, 0, 0] = 1  # a single expert
    return xs, delta


def assert_masks_missing_and_prior(model, spec: ModelSpec, xs: list, delta: torch.Tensor) -> None:
    """Sample 0 (nothing available) gets the prior; inputs of missing experts change nothing."""
    out = model(xs, delta)
    torch.testing.assert_close(out.logits[0], model.prior)
    noisy = [x.clone() for x in xs]
    for k, (m, e) in enumerate(spec.flat_experts):
        mi, ei = spec.modalities.index(m), spec.experts[m].index(e)
        noisy[k][delta[:, mi, ei] == 0] = 1e6
    torch.testing.assert_close(model(noisy, delta).logits, out.logits)


def test_masked_softmax_random_subsets_no_nan() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        shape = (7, 3, 4)
        scores = (torch.randn(shape, generator=g) * 10).requires_grad_(True)
        mask = torch.rand(shape, generator=g) > torch.rand((), generator=g)
        mask[0] = False  # every slice of sample 0 empty
        mask[1, 0] = False
        mask[1, 0, trial % 4] = True  # one available entry
        w = masked_softmax(scores, mask, dim=-1)
        assert torch.isfinite(w).all()
        assert torch.all(w[~mask] == 0)
        sums = w.sum(-1)
        has = mask.any(-1)
        torch.testing.assert_close(sums[has], torch.ones_like(sums[has]))
        assert torch.all(sums[~has] == 0)
        # equals the ordinary softmax over the available entries
        ref = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        torch.testing.assert_close(w[has], ref[has])
        (w * torch.randn(shape, generator=g)).sum().backward()
        assert torch.isfinite(scores.grad).all()
        assert torch.all(scores.grad[~mask] == 0)


def test_masked_softmax_all_missing_and_nonfinite_missing_scores() -> None:
    scores = torch.tensor([[1.0, float("inf"), float("nan")], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    w = masked_softmax(scores, mask)
    assert torch.equal(w.detach(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    w.sum().backward()
    assert torch.isfinite(scores.grad).all()
    # modality dimension (dim=1) as used for β
    r = torch.randn(4, 3, requires_grad=True)
    beta = masked_softmax(r, torch.zeros(4, 3, dtype=torch.bool), dim=1)
    assert torch.equal(beta.detach(), torch.zeros(4, 3))
    beta.sum().backward()
    assert torch.isfinite(r.grad).all()


@pytest.mark.parametrize("method", ["medmix", "medmix-sum", "meanavg", "concat"])
def test_nothing_available_gives_exactly_the_prior(method: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(method, "binary", 3)
    model = build_model(spec)
    prior = torch.tensor([-1.5, 0.25, 2.0])
    model.set_prior(prior)
    xs, delta = make_inputs(spec, 6)
    delta.zero_()
    model.train()
    out = model(xs, delta)
    assert torch.equal(torch.sigmoid(out.logits), torch.sigmoid(prior).expand(6, 3))
    out.logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert torch.equal(model.prior.grad, torch.full((3,), 6.0))
    if method.startswith("medmix"):
        assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
        assert torch.equal(out.beta, torch.zeros_like(out.beta))


@pytest.mark.parametrize(
    ("task_type", "c"),
    [("multilabel", 15), ("binary", 3), ("multiclass", 4)],
    ids=["multilabel", "multitask-binary", "multiclass"],
)
def test_medmix_forward_shapes_and_weights(task_type: str, c: int) -> None:
    torch.manual_seed(0)
    spec = make_spec("medmix", task_type, c)
    model = MedMIX(spec)
    xs, delta = make_inputs(spec, 32)
    out = model(xs, delta)
    assert out.logits.shape == (32, c)
    assert out.alpha.shape == (32, 3, 3)
    assert out.beta.shape == (32, 3)
    assert out.z.shape == (32, 3, 16)
    assert out.modality_logits.shape == (32, 3, c)
    assert torch.isfinite(out.logits).all()
    avail = delta > 0
    assert torch.all(out.alpha[~avail] == 0)  # missing experts and padding slots
    has_mod = avail.any(-1)
    torch.testing.assert_close(out.alpha.sum(-1)[has_mod], torch.ones(int(has_mod.sum())))
    assert torch.all(out.beta[~has_mod] == 0)
    has_any = has_mod.any(-1)
    torch.testing.assert_close(out.beta.sum(-1)[has_any], torch.ones(int(has_any.sum())))
    torch.testing.assert_close(
        out.logits[has_any], (out.beta.unsqueeze(-1) * out.modality_logits).sum(1)[has_any]
    )
    # z_m is the α-weighted sum of the (masked) projected experts
    u = model.encoder(xs, delta)
    assert torch.all(u[~avail] == 0)
    model.eval()
    out_e = model(xs, delta)
    torch.testing.assert_close(
        out_e.z, (out_e.alpha.unsqueeze(-1) * model.encoder(xs, delta)).sum(2)
    )


def test_missing_expert_inputs_do_not_matter() -> None:
    torch.manual_seed(0)
    spec = make_spec("medmix", "binary", 2)
    model = MedMIX(spec).eval()
    xs, delta = make_inputs(spec, 16)
    out = model(xs, delta)
    noisy = [x.clone() for x in xs]
    for k, (m, e) in enumerate(spec.flat_experts):
        mi, ei = spec.modalities.index(m), spec.experts[m].index(e)
        gone = delta[:, mi, ei] == 0
        noisy[k][gone] = 1e6
    torch.testing.assert_close(model(noisy, delta).logits, out.logits)


def test_grouped_mlp_matches_separate_mlps() -> None:
    torch.manual_seed(0)
    g = GroupedMLP(3, 8, 5, 2)
    sep = [mlp(8, 5, 2) for _ in range(3)]
    with torch.no_grad():
        for i, m in enumerate(sep):
            m[0].weight.copy_(g.w1[i].T)
            m[0].bias.copy_(g.bias1[i])
            m[3].weight.copy_(g.w2[i].T)
            m[3].bias.copy_(g.bias2[i])
    x = torch.randn(4, 6, 3, 8)
    torch.testing.assert_close(g(x), torch.stack([sep[i](x[..., i, :]) for i in range(3)], dim=-2))


def test_router_parameters_are_a_separate_group() -> None:
    model = build_model(make_spec())
    router = {id(p) for p in model.router_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in router}
    assert names and all(n.startswith(("routers.", "fusion_scorer.")) for n in names)
    assert build_model(make_spec("meanavg")).router_parameters() == []
    hp = FusionHParams(lr=1e-3, router_lr=5e-4, weight_decay=0.1)
    groups = {g["name"]: g for g in make_optimizer(model, hp).param_groups}
    assert set(groups) == {"base", "base_nodecay", "router", "router_nodecay"}
    assert groups["router"]["lr"] == 5e-4 and groups["base"]["lr"] == 1e-3
    assert {id(p) for g in ("router", "router_nodecay") for p in groups[g]["params"]} == router
    assert groups["base_nodecay"]["weight_decay"] == 0 and groups["base"]["weight_decay"] == 0.1
    assert any(p is model.prior for p in groups["base_nodecay"]["params"])
    decayed = {
        n
        for n, p in model.named_parameters()
        if any(p is q for q in groups["base"]["params"] + groups["router"]["params"])
    }
    assert decayed and not [n for n in decayed if "bias" in n or "norm" in n]


def test_registry_resolves_methods() -> None:
    assert {"medmix", "meanavg", "concat"} <= set(list_methods())
    plan = resolve_method("medmix-only-report", MODALITIES)
    assert (plan.base, plan.modalities, plan.name) == ("medmix", ["report"], "medmix-only-report")
    assert resolve_method("concat", MODALITIES).modalities == MODALITIES
    with pytest.raises(MethodError):
        resolve_method("medmix-only-ct", MODALITIES)
    with pytest.raises(MethodError):
        resolve_method("nope", MODALITIES)


def test_losses_and_kd_ramp() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, float("nan")]] * 5)
    loss = task_loss(logits, y, "binary", pos_weight=2.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.all(logits.grad[:, 2] == 0)
    assert task_loss(logits, torch.full((5, 3), float("nan")), "binary") == 0
    yc = torch.tensor([0, 2, -1, 1, -1])
    assert torch.isfinite(task_loss(logits, yc, "multiclass"))
    assert task_loss(logits, torch.full((5,), -1), "multiclass") == 0
    assert [kd_lambda(t, 4, 2.0) for t in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert kd_lambda(0, 0, 2.0) == 2.0 and kd_lambda(3, 4, 0.0) == 0.0
    model = build_model(make_spec("medmix", "binary", 3))
    xs, delta = make_inputs(model.spec, 5)
    parts = total_loss(model(xs, delta), y, "binary", teacher=None, lambda_kd=1.0)
    assert parts.kd == 0 and torch.equal(parts.total, parts.task)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-tensor"])
def test_adamw_matches_torch(fused: bool) -> None:
    torch.manual_seed(0)
    ours, ref = mlp(6, 5, 3), mlp(6, 5, 3)
    ref.load_state_dict(ours.state_dict())

    def groups(m: torch.nn.Module) -> list[dict]:
        return [
            {"params": [m[0].weight, m[3].weight], "lr": 1e-2, "weight_decay": 0.1},
            {"params": [m[0].bias, m[3].bias], "lr": 5e-3, "weight_decay": 0.0},
        ]

    opt, opt_ref = AdamW(groups(ours)), torch.optim.AdamW(groups(ref))
    opt.fused = fused and opt.fused
    x = torch.randn(16, 6)
    for step in range(5):
        for model, o in ((ours, opt), (ref, opt_ref)):
            o.zero_grad()
            model(x).pow(2).mean().backward()
            for g in o.param_groups:
                g["lr"] *= 0.9  # the warm-up changes lr between steps
            o.step()
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}")


def _reference_group(g, h: torch.Tensor) -> torch.Tensor:
    """The adapter + projection written out literally (eval mode, no dropout)."""
    bn = g.bn
    xhat = F.layer_norm(h, (h.shape[-1],), eps=1e-5)
    a = F.gelu(torch.einsum("kbd,kod->kbo", xhat, g.w_in[:, :bn]) + g.down_bias[:, None])
    pre = torch.einsum("kbd,kod->kbo", h, g.w_in[:, bn:]) + a @ g.adapter_out
    pre = F.layer_norm(pre + g.proj_bias[:, None], (g.d,), eps=1e-5)
    return F.gelu(pre * g.norm_weight[:, None] + g.norm_bias[:, None])


def test_expert_group_matches_literal_adapter_and_its_gradients() -> None:
    torch.manual_seed(0)
    g = ExpertGroup(3, 40, 8, 6, dropout=0.0).double()
    with torch.no_grad():
        g.adapter_out.normal_()  # non-zero adapter
    h = (torch.randn(3, 5, 40) * 2 + 0.7).double()
    out = g(h)
    ref = _reference_group(g, h)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), list(g.parameters()))
    grads_ref = torch.autograd.grad(ref.square().sum(), list(g.parameters()))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_vmapped_seeds_equal_separate_models() -> None:
    """A stacked (vmapped) forward/backward gives each seed exactly its own model's result."""
    spec = make_spec("medmix", "binary", 2)
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(build_model(spec).eval())
    params, buffers = stack_module_state(models)
    xs, delta = make_inputs(spec, 12)

    def f(p, b):
        return functional_call(models[0], (p, b), (xs, delta)).logits

    stacked = vmap(f)(params, buffers)
    for s, m in enumerate(models):
        torch.testing.assert_close(stacked[s], m(xs, delta).logits)
    stacked.square().sum().backward()
    m = models[1]
    m(xs, delta).logits.square().sum().backward()
    torch.testing.assert_close(
        params["encoder.groups.0.w_in"].grad[1], m.encoder.groups[0].w_in.grad
    )


@pytest.mark.parametrize(
    "method",
    ["medmix", "medmix-sum", "meanavg", "concat", "max", "attention", "m3care", "adacomed"],
)
def test_every_method_masks_missing_inputs_and_falls_back_to_prior(method: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(method, "binary", 2)
    if method == "adacomed":
        spec.experts = {m: [*e, "teacher"] for m, e in spec.experts.items()}
        spec.dims = {m: {**d, "teacher": 10} for m, d in spec.dims.items()}
    model = build_model(spec).eval()
    xs, delta = make_inputs(spec, 16)
    out = model(xs, delta)
    assert out.logits.shape == (16, 2) and torch.isfinite(out.logits).all()
    assert_masks_missing_and_prior(model, spec, xs, delta)
    model.train()
    loss = model(xs, delta)
    total = loss.logits.sum() + (loss.aux_loss if loss.aux_loss is not None else 0)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_shared_input_product_equals_per_seed_products_and_gradients() -> None:
    """One input for S stacked weights: the same outputs and weight gradients as S separate
    products, whether the stacked weight is stored seed-outer or seed-inner in memory."""
    torch.manual_seed(0)
    s, k, b, d, bn, o = 3, 4, 6, 10, 2, 5
    h = torch.randn(k, b, d, dtype=torch.float64) + 0.3
    mu = h.mean(dim=-1, keepdim=True)
    base = torch.randn(s, k, bn + o, d, dtype=torch.float64)
    for layout in ("seed-outer", "seed-inner"):
        if layout == "seed-outer":
            w = base.clone().requires_grad_(True)
        else:
            w = base.transpose(0, 1).contiguous().transpose(0, 1).detach().requires_grad_(True)
            assert not w.is_contiguous()
        zc, ph = _SharedInputProduct.apply(h, w, mu, bn)
        (zc.square().sum() + (ph * 0.5).sin().sum()).backward()
        for i in range(s):
            wi = base[i].clone().requires_grad_(True)
            zc_i, ph_i = _InputProduct.apply(h, wi, mu, bn)
            torch.testing.assert_close(zc[i], zc_i)
            torch.testing.assert_close(ph[i], ph_i)
            (zc_i.square().sum() + (ph_i * 0.5).sin().sum()).backward()
            torch.testing.assert_close(w.grad[i], wi.grad)
        assert w.grad.stride() == w.stride()  # stored as computed: no layout copy


def _trainer_data(n: int = 240, seed: int = 0):

    g = torch.Generator().manual_seed(seed)
    dims = {"a": {"a1": 12, "a2": 12}, "b": {"b1": 8}}
    latent = torch.randn(n, 2, generator=g)
    xs, delta = [], torch.zeros(n, 2, 2)
    for mi, ex in enumerate(dims.values()):
        for ei, dim in enumerate(ex.values()):
            w = torch.randn(2, dim, generator=g)
            xs.append((latent @ w + 0.5 * torch.randn(n, dim, generator=g)).contiguous())
            delta[:, mi, ei] = (torch.rand(n, generator=g) > 0.2).float()
    y = (latent[:, :1] + 0.3 * torch.randn(n, 1, generator=g) > 0).float()
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    return tiny_fusion_data(dims, xs, delta, y, split, label_names=["y"])


def test_shared_batch_order_steps_equal_per_seed_steps_on_the_same_rows() -> None:
    """``batch_order: shared`` gathers one minibatch for every seed: on the same rows (no
    dropout) its steps give each seed exactly the losses and parameters of the per-seed path."""
    data = _trainer_data()
    seeds = [0, 1, 2]
    plan = MethodPlan("medmix", "medmix", data.modalities)
    train = data.split_index("train")
    trainers = {}
    for order in ("per_seed", "shared"):
        hp = FusionHParams(d=8, adapter_bottleneck=4, dropout=0.0, batch_order=order)
        tr = SeedTrainer([data] * 3, plan, hp, seeds, torch.device("cpu"))
        tr.skeleton.train()
        trainers[order] = tr
    assert trainers["shared"].shared_batches and not trainers["per_seed"].shared_batches
    for step in range(3):
        idx = train[step * 32 : (step + 1) * 32].unsqueeze(0).expand(3, -1)
        losses = {o: tr._step(idx, 0.0)[0] for o, tr in trainers.items()}
        torch.testing.assert_close(losses["shared"], losses["per_seed"])
    for name, p in trainers["per_seed"].stack.params.items():
        torch.testing.assert_close(trainers["shared"].stack.params[name], p, msg=name)


def test_shared_batch_order_vectorised_equals_sequential_and_differs_from_per_seed() -> None:
    """Every seed follows the first seed's minibatch order, vectorised or one seed at a time."""
    data = _trainer_data()
    plan = MethodPlan("medmix", "medmix", data.modalities)
    kw = dict(d=8, adapter_bottleneck=4, dropout=0.0, max_epochs=4, batch_size=32, bootstrap=0)
    runs = {
        (order, vec): train_seeds(
            [data, data],
            plan,
            FusionHParams(**kw, batch_order=order, vectorize_seeds=vec),
            [3, 7],
        )
        for order in ("shared", "per_seed")
        for vec in (True, False)
    }

    def probs(order: str, vec: bool, k: int) -> torch.Tensor:
        return torch.from_numpy(runs[(order, vec)][k].predictions.probs)

    for k in range(2):
        torch.testing.assert_close(probs("shared", True, k), probs("shared", False, k))
    # seed 7 (not the first) trains on another order than under per_seed
    assert (probs("shared", False, 1) - probs("per_seed", False, 1)).abs().max() > 1e-4
    # seed 3 (the first) trains on its own order either way
    torch.testing.assert_close(probs("shared", False, 0), probs("per_seed", False, 0))


def test_batch_order_is_validated() -> None:
    with pytest.raises(ValueError, match="batch_order"):
        FusionHParams.from_config({"batch_order": "random"})
