"""MedMIX (DESIGN §6) and the building blocks every fusion method shares.

Inputs of every model: ``xs``, one tensor ``(B, D_e)`` per expert in flat (modality, expert)
order, and ``delta`` ``(B, M, E_max)``, the expert availability mask δ.

1. Residual adapter per expert: ``h̃ = h + W₂ Dropout(GELU(W₁ LN(h)))`` (dropout on the
   bottleneck activations: same regularisation role, and ~D/bottleneck times fewer random
   numbers than dropping the D-dim output, which dominates CPU step time at D≈1000).
2. Projection: ``u = Dropout(GELU(LN(P h̃)))`` ∈ R^d; ``u ← δ·u``.
3. Router, one scorer ``g_m`` per modality shared by its experts: ``s = g_m(u)``, masked
   softmax over available experts → α; ``z_m = Σ_e α u``.
4. Per-modality head ``ℓ_m = f_m(z_m)``; fusion score ``r_m = q(z_m)``; masked softmax over
   available modalities → β; ``ŷ = Σ_m β ℓ_m``.
5. A sample without any modality gets the learned prior logits (a bias), never NaN.

The masked softmax gives exactly the result of the paper's conventions (s = −∞ for a missing
expert, r = −1e9 for a missing modality: weight 0 there, renormalised over the rest) without
ever forming ``exp(−∞)``, so outputs and gradients stay finite even when nothing is available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fusion.registry import ModelSpec, register_method


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


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear → GELU → Dropout → Linear (no dropout op at all when ``dropout`` is 0)."""
    drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
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
        self.drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for w, b, fan_in in ((self.w1, self.bias1, d_in), (self.w2, self.bias2, hidden)):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("...ni,nih->...nh", x, self.w1) + self.bias1
        h = self.drop(nn.functional.gelu(h))
        return torch.einsum("...nh,nho->...no", h, self.w2) + self.bias2


class ResidualAdapter(nn.Module):
    """``h + W₂ Dropout(GELU(W₁ LN(h)))``; W₂ starts at zero so the adapter starts as identity."""

    def __init__(self, dim: int, bottleneck: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.drop(nn.functional.gelu(self.down(self.norm(h)))))


class ExpertProjection(nn.Module):
    """Adapter then ``Dropout(GELU(LN(P h̃)))`` into the shared dimension d."""

    def __init__(self, dim: int, d: int, bottleneck: int, dropout: float) -> None:
        super().__init__()
        self.adapter = ResidualAdapter(dim, bottleneck, dropout)
        self.proj = nn.Linear(dim, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop(nn.functional.gelu(self.norm(self.proj(self.adapter(h)))))


class ExpertEncoder(nn.Module):
    """Adapter + projection per expert, assembled into ``U (B, M, E_max, d)``, zero where δ=0."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.counts = [len(spec.experts[m]) for m in spec.modalities]
        self.e_max = spec.max_experts
        self.d = spec.d
        self.experts = nn.ModuleList(
            ExpertProjection(spec.dims[m][e], spec.d, spec.adapter_bottleneck, spec.dropout)
            for m, e in spec.flat_experts
        )

    def forward(self, xs: list[torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
        us = [enc(x) for enc, x in zip(self.experts, xs, strict=True)]
        rows, k = [], 0
        for count in self.counts:
            block = us[k : k + count]
            k += count
            if count < self.e_max:
                pad = us[0].new_zeros(us[0].shape[0], self.d)
                block = block + [pad] * (self.e_max - count)
            rows.append(torch.stack(block, dim=1))
        u = torch.stack(rows, dim=1)  # (B, M, E_max, d)
        return u * delta.unsqueeze(-1).to(u.dtype)


@dataclass
class FusionOutput:
    logits: torch.Tensor  # (B, C) fused logits (prior where nothing is available)
    alpha: torch.Tensor | None = None  # (B, M, E_max) expert weights, 0 where missing
    beta: torch.Tensor | None = None  # (B, M) modality weights, 0 where missing
    z: torch.Tensor | None = None  # (B, M, d) modality representations (distillation)
    modality_logits: torch.Tensor | None = None  # (B, M, C)


class FusionModel(nn.Module):
    """Base of every fusion method: the shared expert encoder and the learned prior.

    Subclasses implement :meth:`fuse` (logits for samples with something available) and
    list their gating modules in ``router_modules`` (trained with the router learning rate).
    ``prior`` (C logits) is the output for samples without any available expert; training
    starts it at the train split's label prevalence and only such samples update it.
    """

    method_name = "base"
    router_modules: tuple[str, ...] = ()

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

    def forward(self, xs: list[torch.Tensor], delta: torch.Tensor) -> FusionOutput:
        delta = delta.to(self.prior.dtype)
        u = self.encoder(xs, delta)
        out = self.fuse(u, delta)
        any_available = (delta.amax(dim=(1, 2)) > 0).unsqueeze(-1)
        out.logits = torch.where(any_available, out.logits, self.prior.expand_as(out.logits))
        return out

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.router_modules for p in getattr(self, name).parameters()]


@register_method("medmix")
class MedMIX(FusionModel):
    """Intra-modality MoE router over experts, then learned inter-modality logit fusion."""

    router_modules = ("routers", "fusion_scorer")

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        d, c = spec.d, spec.n_outputs
        hidden = max(d // 2, 8)
        m = len(spec.modalities)
        self.routers = GroupedMLP(m, d, hidden, 1)  # g_m, shared by the experts of modality m
        self.heads = GroupedMLP(m, d, d, c, spec.dropout)  # f_m
        self.fusion_scorer = mlp(d, hidden, 1)  # q, shared by all modalities

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        avail = delta > 0  # (B, M, E)
        scores = self.routers(u.transpose(1, 2)).squeeze(-1).transpose(1, 2)  # (B, M, E)
        alpha = masked_softmax(scores, avail, dim=-1)
        z = (alpha.unsqueeze(-1) * u).sum(dim=2)  # (B, M, d)
        logits_m = self.heads(z)  # (B, M, C)
        r = self.fusion_scorer(z).squeeze(-1)  # (B, M)
        beta = masked_softmax(r, avail.any(dim=-1), dim=-1)
        logits = (beta.unsqueeze(-1) * logits_m).sum(dim=1)
        return FusionOutput(logits=logits, alpha=alpha, beta=beta, z=z, modality_logits=logits_m)
