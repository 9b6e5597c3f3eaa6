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

How the expert encoder is computed (same function, fewer memory passes). Experts with the same
input dim D are one *group*: their weights are stacked ``(K, …)`` and the group runs as a few
batched matrix products instead of K small ones. Two exact reparametrisations remove every
elementwise pass over the D-wide inputs, which dominate CPU time at D ≈ 768:

* the adapter's LayerNorm affine is not a separate parameter: ``W₁(γ⊙x̂ + β) + b₁`` is
  ``(W₁ diag γ) x̂ + (W₁β + b₁)``, i.e. the same function class as ``W₁ x̂ + b₁``;
* ``W₁ x̂`` with ``x̂ = (h − μ)/σ`` is computed as ``(W₁h − μ W₁1)/σ`` from the row mean μ and
  standard deviation σ of h (h is data: no gradient flows into it), so x̂ is never
  materialised; the up-projection's bias is left out for the same reason (``P(h̃ + b₂) + p``
  only shifts the projection bias p);
* ``P h̃ = P h + (P W₂) a``: the adapter's up-projection is parametrised as Q = P·W₂ (bn × d),
  which reaches every such product (P has full row rank), so the D-wide h̃ = h + W₂a is never
  formed either (:class:`ExpertGroup`).

Per sample and expert, the only D-wide work left is one product of h with ``[W₁ | P]``
(forward) and one for their weight gradient (backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fusion.registry import ModelSpec, register_method
from medmix.hparams import PROJECTIONS

# Expert encoders (ModelSpec.projection, PROJECTIONS): the paper's adapter + normalised
# projection, or a plain linear projection (ours: on the demo cohorts it keeps the linear signal
# a logistic regression finds; docs/fusion.md, "Why the fusion models trailed a linear probe").
LN_EPS = 1e-5


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


def keep_mask(
    shape: tuple[int, ...], p: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Inverted-dropout mask: 1/(1−p) with probability 1−p, else 0 (shape ``shape``).

    Draws 16 random bits per entry (four entries per 64-bit draw) instead of a float per
    entry: the CPU generator is the slow part of dropout. The keep rate is 1−p up to 2⁻¹⁶.
    """
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    bits = words.view(torch.int16)[:n].view(shape)
    threshold = round(p * 65536) - 32768
    return torch.where(bits >= threshold, 1.0 / (1.0 - p), 0.0).to(dtype)


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


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init (weights and biases)
    nn.init.uniform_(t, -bound, bound)


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
            _uniform_(w, fan_in)
            _uniform_(b, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("...ni,nih->...nh", x, self.w1) + self.bias1
        h = self.drop(F.gelu(h))
        return torch.einsum("...nh,nho->...no", h, self.w2) + self.bias2


class _InputProduct(torch.autograd.Function):
    """``h @ [W₁ | P]`` with W₁'s columns centred by the row means: ``(W₁h − μ W₁1, Ph)``.

    One product forward, one for the weight gradient backward; the centring's gradient, the
    rank-1 term ``−1 ⊗ Σ_b μ_b dz_b``, is added in place to W₁'s block instead of flowing
    through a separate reduction (which would cost a full-size gradient sum per step).
    ``h`` and ``μ`` are data: no gradient. Under ``torch.func.vmap`` (seeds) the batch axis is
    folded into the K axis, so forward and backward stay one batched product each.
    """

    @staticmethod
    def forward(h: torch.Tensor, w_in: torch.Tensor, mu: torch.Tensor, bn: int):
        both = torch.bmm(h, w_in.transpose(1, 2))  # (K, B, bn + d)
        row_sum = w_in[:, :bn].sum(dim=2)  # (K, bn): W₁1
        return both[..., :bn] - mu * row_sum.unsqueeze(1), both[..., bn:]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h, _, mu, bn = inputs
        ctx.save_for_backward(h, mu)
        ctx.bn = bn

    @staticmethod
    def backward(ctx, dz: torch.Tensor, dp: torch.Tensor):
        h, mu = ctx.saved_tensors
        dw = torch.bmm(torch.cat([dz, dp], dim=-1).transpose(1, 2), h)  # (K, bn + d, D)
        dw[:, : ctx.bn] -= (mu * dz).sum(dim=1).unsqueeze(2)
        return None, dw, None, None

    @staticmethod
    def vmap(info, in_dims, h, w_in, mu, bn):
        hd, wd, md, _ = in_dims
        n = info.batch_size
        if hd is None and md is None and wd is not None and torch.is_grad_enabled():
            # training on one minibatch shared by every stacked model (``batch_order: shared``)
            return _SharedInputProduct.apply(h, w_in.movedim(wd, 0), mu, bn), (0, 0)
        if hd is None:  # one input shared by every stacked model (evaluation)
            w = w_in.movedim(wd, 0) if wd is not None else w_in.expand(n, *w_in.shape)
            both = torch.einsum("kbd,skod->skbo", h, w)
            m = mu.movedim(md, 0) if md is not None else mu.expand(n, *mu.shape)
            return (both[..., :bn] - m * w[:, :, :bn].sum(dim=3).unsqueeze(2),
                    both[..., bn:]), (0, 0)  # fmt: skip

        def fold(x: torch.Tensor, dim: int | None) -> torch.Tensor:
            x = x.movedim(dim, 0) if dim is not None else x.expand(n, *x.shape)
            return x.reshape(n * x.shape[1], *x.shape[2:])

        zc, ph = _InputProduct.apply(fold(h, hd), fold(w_in, wd), fold(mu, md), bn)
        return (zc.view(n, -1, *zc.shape[1:]), ph.view(n, -1, *ph.shape[1:])), (0, 0)


class _SharedInputProduct(torch.autograd.Function):
    """:class:`_InputProduct` for S stacked models reading the *same* input rows.

    ``h (K, B, D)`` (no seed axis), ``w_in (S, K, bn + d, D)``, ``mu (K, B, 1)`` →
    ``(S, K, B, bn)``, ``(S, K, B, d)``. The seeds' weights are folded into the output axis,
    so forward and the weight gradient are one batched product over K each, S times wider
    than a seed's own (``fusion.batch_order: shared``: every seed follows one minibatch order).
    """

    @staticmethod
    def forward(h: torch.Tensor, w_in: torch.Tensor, mu: torch.Tensor, bn: int):
        s, k, o, dim = w_in.shape
        # a view when the stack keeps this weight seed-inner in memory (SeedStack seed_inner)
        wk = w_in.transpose(0, 1).reshape(k, s * o, dim)  # (K, S·O, D)
        both = torch.bmm(h, wk.transpose(1, 2)).view(k, -1, s, o).permute(2, 0, 1, 3)
        row_sum = w_in[..., :bn, :].sum(dim=3)  # (S, K, bn): W₁1 per seed
        return both[..., :bn] - mu * row_sum.unsqueeze(2), both[..., bn:]

    setup_context = staticmethod(_InputProduct.setup_context)  # saves h, μ and bn

    @staticmethod
    def backward(ctx, dz: torch.Tensor, dp: torch.Tensor):
        h, mu = ctx.saved_tensors
        s, k, b, bn = dz.shape
        o = bn + dp.shape[-1]
        # the output gradient laid out (K, B, S, O), so that per k it is one (B, S·O) matrix
        g = dz.new_empty(k, b, s, o)
        gs = g.permute(2, 0, 1, 3)  # (S, K, B, O) view
        gs[..., :bn].copy_(dz)
        gs[..., bn:].copy_(dp)
        dw = torch.bmm(g.view(k, b, s * o).transpose(1, 2), h)  # (K, S·O, D)
        dw = dw.view(k, s, o, -1).transpose(0, 1)  # (S, K, O, D), seed-inner
        dw[:, :, : ctx.bn] -= (mu * dz).sum(dim=2).unsqueeze(3)
        return None, dw, None, None


def row_stats(h: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` -> ``(..., 2)``: each row's mean and 1/sqrt(var + eps) (LayerNorm's)."""
    hs = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
    mu = hs.mean(dim=-1, keepdim=True)
    ms = torch.linalg.vector_norm(hs, dim=-1, keepdim=True).square() / hs.shape[-1]
    rstd = torch.rsqrt((ms - mu.square()).clamp_min(0.0) + LN_EPS)
    return torch.cat([mu, rstd], dim=-1)


class ExpertGroup(nn.Module):
    """Adapter + projection of K experts that share the input dim D, as batched products.

    Input ``(K, B, D)`` → ``(K, B, d)``:
    ``u = Dropout(GELU(LN(P h + Q a + p)))`` with ``a = Dropout(GELU(W₁ x̂ + b₁))``, x̂ the
    row-standardised h. Parameters (per expert k):

    * ``w_in (K, bn + d, D)`` (``nn.Linear`` layout): the adapter's down-projection W₁ (first
      ``bn`` rows) and the projection P (last ``d`` rows) stacked — both read the input h, so
      one product computes ``W₁h`` and ``Ph`` and one product gives both weight gradients;
    * ``down_bias (K, bn)`` (b₁); ``adapter_out (K, bn, d)``: Q = P·W₂, the adapter's
      up-projection expressed in the projected space (zero at init: the adapter starts as the
      identity); ``proj_bias (K, d)`` (p); the projection LayerNorm's ``norm_weight`` /
      ``norm_bias``.

    ``P h̃ = P (h + W₂a) = P h + (P W₂) a``: every pair (P, W₂) gives a Q and, P having full
    row rank (d ≤ D), every Q comes from some W₂ — the functions computed are exactly those of
    the adapter + projection of docs/design.md §6, the D-wide h̃ is never formed, and the adapter's
    output side costs bn × d instead of bn × D weights (the gradient dynamics differ from a
    literal W₂ parametrisation).
    """

    def __init__(
        self, k: int, dim: int, d: int, bottleneck: int, dropout: float, linear: bool = False
    ) -> None:
        super().__init__()
        self.linear = linear  # u = P h + p only (no adapter: bottleneck 0, no LN/GELU/dropout)
        bottleneck = 0 if linear else bottleneck
        self.dim, self.d, self.bn = dim, d, bottleneck
        self.p = float(dropout)
        self.w_in = nn.Parameter(torch.empty(k, bottleneck + d, dim))
        if linear:  # P and p only
            self.proj_bias = nn.Parameter(torch.empty(k, d))
            for t in (self.w_in, self.proj_bias):
                _uniform_(t, dim)
            return
        self.down_bias = nn.Parameter(torch.empty(k, bottleneck))
        self.adapter_out = nn.Parameter(torch.zeros(k, bottleneck, d))
        self.proj_bias = nn.Parameter(torch.empty(k, d))
        self.norm_weight = nn.Parameter(torch.ones(k, d))
        self.norm_bias = nn.Parameter(torch.zeros(k, d))
        for t in (self.w_in, self.down_bias, self.proj_bias):
            _uniform_(t, dim)

    def forward(self, h: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """``h (K, B, D)``; ``stats (K, B, 2)``: the rows' mean and 1/σ if precomputed
        (:func:`row_stats`; h is data, so the trainer computes them once per dataset)."""
        bn = self.bn
        if self.linear:  # (K, B, D) @ (K, D, d): autograd's own product, no row statistics
            return torch.baddbmm(self.proj_bias.unsqueeze(1), h, self.w_in.transpose(1, 2))
        if stats is None:
            stats = row_stats(h)
        mu, rstd = stats[..., :1], stats[..., 1:]
        zc, ph = _InputProduct.apply(h, self.w_in, mu.to(h.dtype), bn)
        z = zc * rstd.to(zc.dtype) + self.down_bias.unsqueeze(1)
        keep = None
        if self.training and self.p > 0:  # one draw for both dropout sites
            keep = keep_mask((*ph.shape[:-1], bn + self.d), self.p, ph.device, ph.dtype)
        a = F.gelu(z)
        if keep is not None:
            a = a * keep[..., :bn]
        pre = torch.baddbmm(ph, a, self.adapter_out) + self.proj_bias.unsqueeze(1)
        pre = F.layer_norm(pre, (self.d,), eps=LN_EPS)
        u = F.gelu(pre * self.norm_weight.unsqueeze(1) + self.norm_bias.unsqueeze(1))
        return u * keep[..., bn:] if keep is not None else u


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
