"""MedMIX (docs/design.md §6) and the building blocks every fusion method shares.

Inputs of every model: ``xs``, one tensor ``(B, D_e)`` per expert in flat (modality, expert)
order, and ``delta`` ``(B, M, E_max)``, the expert availability mask δ. Rows of unavailable
experts should be zero (the data layer and :mod:`fusion.predict` guarantee it); the model
masks them out anyway, so their values never change an output.

1. Residual adapter per expert: ``h̃ = h + W₂ Dropout(GELU(W₁ LN(h) + b₁))`` (dropout on the
   bottleneck activations: the same regularisation role as on the output, and far fewer
   random numbers than dropping the D-dim output).
2. Projection: ``u = Dropout(GELU(LN(P h̃ + p)))`` ∈ R^d; ``u ← δ·u``.
3. Router, one scorer ``g_m`` per modality shared by its experts: ``s = g_m(u)``, masked
   softmax over available experts → α; ``z_m = Σ_e α u``.
4. Per-modality head ``ℓ_m = f_m(z_m)``; fusion score ``r_m = q(z_m)``; masked softmax over
   available modalities → β; ``ŷ = Σ_m β ℓ_m``.
5. A sample without any modality gets the learned prior logits (a bias), never NaN.

The masked softmax gives exactly the result of the paper's conventions (s = −∞ for a missing
expert, r = −1e9 for a missing modality: weight 0 there, renormalised over the rest) without
ever forming ``exp(−∞)``, so outputs and gradients stay finite even when nothing is available.

How the expert encoder is computed (exact reparametrisations, batched products, the fused
training step): :mod:`fusion.expert_group`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fusion.expert_group import (  # noqa: F401  (row_stats, _*InputProduct: re-exported)
    ExpertGroup,
    _InputProduct,
    _SharedInputProduct,
    keep_mask,
    linear_init_,
    row_stats,
)
from fusion.registry import ModelSpec, register_method
from medmix.hparams import PROJECTIONS

# Expert encoders (ModelSpec.projection, PROJECTIONS): the paper's adapter + normalised
# projection, or a plain linear projection (ours: on the demo cohorts it keeps the linear signal
# a logistic regression finds; docs/fusion.md, "Why the fusion models trailed a linear probe").


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to entries where ``mask`` is true.

    Weights sum to 1 over available entries and are exactly 0 on missing ones; a slice with no
    available entry gives all zeros (the caller falls back to the prior). Outputs and
    gradients are NaN-free in every case: missing scores (even inf / NaN) are replaced by the
    dtype's most negative finite value, never by −∞, so an all-missing slice is a finite
    uniform softmax that the final multiplication by the mask zeroes (with zero gradient).
    """
    mask = mask.to(torch.bool)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with the cheaper mask of :func:`keep_mask` (same expectation)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        return x * keep_mask(tuple(x.shape), self.p, x.device, x.dtype)


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear → GELU → Dropout → Linear (no dropout op at all when ``dropout`` is 0)."""
    drop: nn.Module = Dropout(dropout) if dropout > 0 else nn.Identity()
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), drop, nn.Linear(hidden, d_out))


class GroupedMLP(nn.Module):
    """``n`` independent MLPs (Linear → GELU → Dropout → Linear), one per group, run as one op.

    Input ``(..., n, d_in)`` → output ``(..., n, d_out)``; group ``i`` of the input goes through
    MLP ``i``. Equivalent to a ModuleList of :func:`mlp` (same init), with far fewer kernel
    launches — the per-modality router scorers g_m and heads f_m use it.
    """

    def __init__(self, n: int, d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n, d_in, hidden))
        self.bias1 = nn.Parameter(torch.empty(n, hidden))
        self.w2 = nn.Parameter(torch.empty(n, hidden, d_out))
        self.bias2 = nn.Parameter(torch.empty(n, d_out))
        self.drop: nn.Module = Dropout(dropout) if dropout > 0 else nn.Identity()
        for w, b, fan_in in ((self.w1, self.bias1, d_in), (self.w2, self.bias2, hidden)):
            linear_init_(w, fan_in)
            linear_init_(b, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = grouped_matmul(x, self.w1) + self.bias1
        h = self.drop(F.gelu(h))
        return grouped_matmul(h, self.w2) + self.bias2


def grouped_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``einsum("...ni,nio->...no", x, w)``: group n of x times matrix n of w.

    The operations ``einsum`` itself runs (groups first, one batched product, groups back in
    place: the same numbers), spelt out: under ``vmap`` its dispatch costs several times more.
    """
    xn = x.movedim(-2, 0)  # (n, ..., i)
    out = torch.matmul(xn.reshape(xn.shape[0], -1, xn.shape[-1]), w)  # (n, rows, o)
    return out.view(*xn.shape[:-1], w.shape[-1]).movedim(0, -2)


class ExpertEncoder(nn.Module):
    """Every expert's adapter + projection, assembled into ``U (B, M, E_max, d)``, 0 where δ=0.

    Experts are grouped by input dim (:attr:`group_members`: flat expert indices per group).
    ``encoder(xs, delta)`` takes the per-expert list; :meth:`encode_groups` takes the inputs
    already stacked per group, ``(K_g, B, D_g)`` (what the trainer gathers directly).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.d = spec.d
        self.n_modalities = len(spec.modalities)
        self.e_max = spec.max_experts
        dims = [spec.dims[m][e] for m, e in spec.flat_experts]
        members: dict[int, list[int]] = {}
        for k, dim in enumerate(dims):
            members.setdefault(dim, []).append(k)
        self.group_members: list[list[int]] = list(members.values())
        self.group_dims: list[int] = list(members)
        if spec.projection not in PROJECTIONS:
            raise ValueError(f"projection {spec.projection!r} is not one of {PROJECTIONS}")
        linear = spec.projection == "linear"
        self.groups = nn.ModuleList(
            ExpertGroup(len(ks), dim, spec.d, spec.adapter_bottleneck, spec.dropout, linear)
            for dim, ks in members.items()
        )
        order = [k for ks in self.group_members for k in ks]
        position = {k: i for i, k in enumerate(order)}
        slots, k = [], 0
        for m in spec.modalities:
            n_e = len(spec.experts[m])
            slots += [position[k + i] for i in range(n_e)] + [len(order)] * (self.e_max - n_e)
            k += n_e
        self.n_experts = len(order)
        self.identity_slots = len(slots) == len(order) and slots == list(range(len(slots)))
        self.register_buffer("slot_index", torch.tensor(slots, dtype=torch.long), persistent=False)

    def group_inputs(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != self.n_experts:
            raise ValueError(f"expected {self.n_experts} expert inputs, got {len(xs)}")
        return [torch.stack([xs[k] for k in ks]) for ks in self.group_members]

    def encode_groups(
        self,
        groups: list[torch.Tensor],
        delta: torch.Tensor,
        stats: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if stats is None:
            us = [g(h) for g, h in zip(self.groups, groups, strict=True)]
        else:
            us = [g(h, st) for g, h, st in zip(self.groups, groups, stats, strict=True)]
        u = us[0] if len(us) == 1 else torch.cat(us, dim=0)  # (K, B, d)
        if not self.identity_slots:
            u = torch.cat([u, u.new_zeros(1, *u.shape[1:])], dim=0).index_select(0, self.slot_index)
        u = u.view(self.n_modalities, self.e_max, u.shape[1], self.d).permute(2, 0, 1, 3)
        return u * delta.unsqueeze(-1).to(u.dtype)

    def forward(self, xs: list[torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
        return self.encode_groups(self.group_inputs(xs), delta)


@dataclass
class FusionOutput:
    logits: torch.Tensor  # (B, C) fused logits (prior where nothing is available)
    alpha: torch.Tensor | None = None  # (B, M, E_max) expert weights, 0 where missing
    beta: torch.Tensor | None = None  # (B, M) modality weights, 0 where missing
    z: torch.Tensor | None = None  # (B, M, d) modality representations (distillation)
    modality_logits: torch.Tensor | None = None  # (B, M, C)
    aux_loss: torch.Tensor | None = None  # a method's own extra training loss (scalar)


class FusionModel(nn.Module):
    """Base of every fusion method: the shared expert encoder and the learned prior.

    Subclasses implement :meth:`fuse` (logits for samples with something available) and
    list their gating modules in ``router_modules`` (trained with the router learning rate).
    ``prior`` (C logits) is the output for samples without any available expert; training
    starts it at the train split's label prevalence and only such samples update it.

    Class attributes read by the trainer and the workflow:

    * ``supports_distillation``: the modality representations ``z`` are distilled from the
      teachers when ``fusion.lambda_kd > 0`` (MedMIX);
    * ``uses_teacher_input`` / ``deploys_teachers``: the teacher cache is an input expert
      (named :data:`medmix.methods.TEACHER_EXPERT`) at training and inference time;
    * ``uses_reference``: the model keeps reference buffers computed from training samples
      (:meth:`reference_buffers`), refreshed by the trainer before every evaluation.
    """

    method_name = "base"
    router_modules: tuple[str, ...] = ()
    supports_distillation = False
    uses_teacher_input = False
    deploys_teachers = False
    uses_reference = False

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = ExpertEncoder(spec)
        self.prior = nn.Parameter(torch.zeros(spec.n_outputs))

    @torch.no_grad()
    def set_prior(self, logits: torch.Tensor) -> None:
        self.prior.copy_(logits.to(self.prior))

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        raise NotImplementedError

    def forward_groups(
        self,
        groups: list[torch.Tensor],
        delta: torch.Tensor,
        stats: list[torch.Tensor] | None = None,
    ) -> FusionOutput:
        delta = delta.to(self.prior.dtype)
        u = self.encoder.encode_groups(groups, delta, stats)
        out = self.fuse(u, delta)
        any_available = (delta.amax(dim=(1, 2)) > 0).unsqueeze(-1)
        out.logits = torch.where(any_available, out.logits, self.prior.expand_as(out.logits))
        return out

    def forward(self, xs: list[torch.Tensor], delta: torch.Tensor) -> FusionOutput:
        return self.forward_groups(self.encoder.group_inputs(xs), delta)

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.router_modules for p in getattr(self, name).parameters()]

    def reference_buffers(
        self, groups: list[torch.Tensor], delta: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """New values of the reference buffers from training inputs (``uses_reference``)."""
        return {}


@register_method("medmix")
class MedMIX(FusionModel):
    """Intra-modality MoE router over experts, then learned inter-modality logit fusion."""

    router_modules = ("routers", "fusion_scorer")
    supports_distillation = True

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        d, c = spec.d, spec.n_outputs
        hidden = max(d // 2, 8)
        m = len(spec.modalities)
        self.routers = GroupedMLP(m, d, hidden, 1)  # g_m, shared by the experts of modality m
        self.heads = GroupedMLP(m, d, d, c, spec.dropout)  # f_m
        self.fusion_scorer = mlp(d, hidden, 1)  # q, shared by all modalities
        # Both gates start uniform (zero output layer, as zero-initialised MoE gates): with
        # random output weights the softmaxes start skewed, the favoured heads get most of the
        # gradient and the gates lock in early. On the demo cohorts (3 seeds) this lifted test
        # AUROC from 0.800 to 0.817 (MIMIC), 0.629 to 0.665 (ccRCC) and 0.614 to 0.620 (OpenI).
        for w, b in ((self.routers.w2, self.routers.bias2),
                     (self.fusion_scorer[-1].weight, self.fusion_scorer[-1].bias)):  # fmt: skip
            nn.init.zeros_(w)
            nn.init.zeros_(b)

    def route(
        self, u: torch.Tensor, delta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The intra-modality step: availability (B, M, E), α, z_m and the heads' logits ℓ_m."""
        avail = delta > 0  # (B, M, E)
        scores = self.routers(u.transpose(1, 2)).squeeze(-1).transpose(1, 2)  # (B, M, E)
        alpha = masked_softmax(scores, avail, dim=-1)
        z = (alpha.unsqueeze(-1) * u).sum(dim=2)  # (B, M, d)
        return avail, alpha, z, self.heads(z)  # ℓ_m: (B, M, C)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        avail, alpha, z, logits_m = self.route(u, delta)
        r = self.fusion_scorer(z).squeeze(-1)  # (B, M)
        beta = masked_softmax(r, avail.any(dim=-1), dim=-1)
        logits = (beta.unsqueeze(-1) * logits_m).sum(dim=1)
        return FusionOutput(logits=logits, alpha=alpha, beta=beta, z=z, modality_logits=logits_m)
