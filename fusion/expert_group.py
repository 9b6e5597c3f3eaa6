"""The expert encoder's arithmetic: adapter + projection of K same-width experts (docs/design.md §6).

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

Training runs the whole group as one autograd node (:class:`_GroupTrainStep`): the same
operations in the same order as the composed modules (bit-identical results), without the
per-operation autograd and ``vmap`` bookkeeping, the copies the composed graph makes
(``baddbmm``'s ``β·self`` and its gradient, a re-assigned gradient slice) and with most
intermediates updated in place. Evaluation, autocast and direct calls of the building blocks
use the composed form (:class:`_InputProduct` and ordinary operations).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = 1e-5


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
    # bool -> uint8 (a view) -> float: several times faster than torch.where or a bool cast
    return (bits >= threshold).view(torch.uint8).to(dtype).mul_(1.0 / (1.0 - p))


def linear_init_(t: torch.Tensor, fan_in: int) -> None:
    """``nn.Linear``'s default initialisation (weights and biases) of a stacked tensor."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


# -- the input product h @ [W₁ | P] and its weight gradient (one implementation each) ---------


def input_product(
    h: torch.Tensor, w_in: torch.Tensor, mu: torch.Tensor, bn: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h (N, B, D)``, ``w_in (N, bn + d, D)`` → ``(W₁h − μ W₁1 (N, B, bn), Ph (N, B, d))``."""
    both = torch.bmm(h, w_in.transpose(1, 2))  # (N, B, bn + d)
    row_sum = w_in[:, :bn].sum(dim=2)  # (N, bn): W₁1
    return both[..., :bn] - mu * row_sum.unsqueeze(1), both[..., bn:]


def input_weight_grad(
    dz: torch.Tensor, dp: torch.Tensor, h: torch.Tensor, mu: torch.Tensor
) -> torch.Tensor:
    """The gradient of ``w_in`` from those of :func:`input_product`'s two outputs."""
    bn = dz.shape[-1]
    dw = torch.bmm(torch.cat([dz, dp], dim=-1).transpose(1, 2), h)  # (N, bn + d, D)
    dw[:, :bn].sub_((mu * dz).sum(dim=1).unsqueeze(2))
    return dw


def shared_input_product(
    h: torch.Tensor, w_in: torch.Tensor, mu: torch.Tensor, bn: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`input_product` of S stacked models reading the same rows: ``h (K, B, D)``,
    ``w_in (S, K, bn + d, D)``, ``mu (K, B, 1)`` → ``(S, K, B, bn)``, ``(S, K, B, d)``."""
    s, k, o, dim = w_in.shape
    # a view when the stack keeps this weight seed-inner in memory (SeedStack seed_inner)
    wk = w_in.transpose(0, 1).reshape(k, s * o, dim)  # (K, S·O, D)
    both = torch.bmm(h, wk.transpose(1, 2)).view(k, -1, s, o).permute(2, 0, 1, 3)
    row_sum = w_in[..., :bn, :].sum(dim=3)  # (S, K, bn): W₁1 per seed
    return both[..., :bn] - mu * row_sum.unsqueeze(2), both[..., bn:]


def shared_input_weight_grad(
    dz: torch.Tensor, dp: torch.Tensor, h: torch.Tensor, mu: torch.Tensor
) -> torch.Tensor:
    """The gradient of ``w_in (S, K, O, D)`` from those of :func:`shared_input_product`,
    returned seed-inner (the layout :class:`fusion.seed_stack.SeedStack` keeps it in)."""
    s, k, b, bn = dz.shape
    o = bn + dp.shape[-1]
    # the output gradient laid out (K, B, S, O), so that per k it is one (B, S·O) matrix
    g = dz.new_empty(k, b, s, o)
    gs = g.permute(2, 0, 1, 3)  # (S, K, B, O) view
    gs[..., :bn].copy_(dz)
    gs[..., bn:].copy_(dp)
    dw = torch.bmm(g.view(k, b, s * o).transpose(1, 2), h)  # (K, S·O, D)
    dw = dw.view(k, s, o, -1).transpose(0, 1)  # (S, K, O, D), seed-inner
    dw[:, :, :bn].sub_((mu * dz).sum(dim=2).unsqueeze(3))
    return dw


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
        return input_product(h, w_in, mu, bn)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h, _, mu, _ = inputs
        ctx.save_for_backward(h, mu)

    @staticmethod
    def backward(ctx, dz: torch.Tensor, dp: torch.Tensor):
        h, mu = ctx.saved_tensors
        return None, input_weight_grad(dz, dp, h, mu), None, None

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
        zc, ph = _InputProduct.apply(_fold(h, hd, n), _fold(w_in, wd, n), _fold(mu, md, n), bn)
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
        return shared_input_product(h, w_in, mu, bn)

    setup_context = staticmethod(_InputProduct.setup_context)  # saves h and μ

    @staticmethod
    def backward(ctx, dz: torch.Tensor, dp: torch.Tensor):
        h, mu = ctx.saved_tensors
        return None, shared_input_weight_grad(dz, dp, h, mu), None, None


def _fold(x: torch.Tensor, dim: int | None, n: int) -> torch.Tensor:
    """A vmapped tensor's batch axis moved first and merged with the next: ``(n·K, …)``."""
    x = x.movedim(dim, 0) if dim is not None else x.expand(n, *x.shape)
    return x.reshape(n * x.shape[1], *x.shape[2:])


def row_stats(h: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` -> ``(..., 2)``: each row's mean and 1/sqrt(var + eps) (LayerNorm's)."""
    hs = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
    mu = hs.mean(dim=-1, keepdim=True)
    ms = torch.linalg.vector_norm(hs, dim=-1, keepdim=True).square() / hs.shape[-1]
    rstd = torch.rsqrt((ms - mu.square()).clamp_min(0.0) + LN_EPS)
    return torch.cat([mu, rstd], dim=-1)


# -- the training step of a whole group, as one autograd node ---------------------------------


def _group_tail(
    zc: torch.Tensor,
    ph: torch.Tensor,
    rstd: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    keep: torch.Tensor | None,
    fused_add: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Everything after the input product, for leading dims ``L`` (``(N,)`` or ``(S, K)``):
    ``zc (*L, B, bn)``, ``ph (*L, B, d)``; returns u and the tensors backward needs.
    The operations and their order are those of :meth:`ExpertGroup.forward`; ``zc`` is
    overwritten. ``fused_add``: ``ph + a Q`` as one ``baddbmm`` (what a direct call computes);
    else a product and an addition (what ``vmap`` makes of ``baddbmm``)."""
    down_bias, adapter_out, proj_bias, norm_weight, norm_bias = params
    bn, d = zc.shape[-1], ph.shape[-1]
    z = zc.mul_(rstd).add_(down_bias.unsqueeze(-2))
    a = F.gelu(z)
    if keep is not None:
        a.mul_(keep[..., :bn])
    if fused_add:
        pre = torch.baddbmm(ph, a, adapter_out).add_(proj_bias.unsqueeze(-2))
    else:
        pre = torch.matmul(a, adapter_out).add_(ph).add_(proj_bias.unsqueeze(-2))
    ln, mean, rstd_p = torch.native_layer_norm(pre, [d], None, None, LN_EPS)
    y = torch.mul(ln, norm_weight.unsqueeze(-2)).add_(norm_bias.unsqueeze(-2))
    u = F.gelu(y)
    if keep is not None:
        u.mul_(keep[..., bn:])
    return u, (z, a, pre, mean, rstd_p, ln, y)


def _group_tail_grad(
    du: torch.Tensor,
    saved: tuple[torch.Tensor, ...],
    rstd: torch.Tensor,
    adapter_out: torch.Tensor,
    norm_weight: torch.Tensor,
    keep: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Backward of :func:`_group_tail` with autograd's formulas in autograd's order: the
    gradients of zc and ph, and of (down_bias, adapter_out, proj_bias, norm_weight, norm_bias)."""
    z, a, pre, mean, rstd_p, ln, y = saved
    bn, d = z.shape[-1], y.shape[-1]
    g = du * keep[..., bn:] if keep is not None else du
    g = torch.ops.aten.gelu_backward(g, y)
    d_norm_bias = g.sum(dim=-2)
    d_norm_weight = (g * ln).sum(dim=-2)
    dln = g.mul_(norm_weight.unsqueeze(-2))
    dpre = torch.ops.aten.native_layer_norm_backward(
        dln, pre, [d], mean, rstd_p, None, None, [True, False, False]
    )[0]
    d_proj_bias = dpre.sum(dim=-2)
    d_adapter_out = torch.matmul(a.transpose(-1, -2), dpre)
    da = torch.matmul(dpre, adapter_out.transpose(-1, -2))
    if keep is not None:
        da.mul_(keep[..., :bn])
    dz = torch.ops.aten.gelu_backward(da, z)
    d_down_bias = dz.sum(dim=-2)
    return (
        dz.mul_(rstd),
        dpre,
        (d_down_bias, d_adapter_out, d_proj_bias, d_norm_weight, d_norm_bias),
    )


class _GroupTrainStep(torch.autograd.Function):
    """:meth:`ExpertGroup.forward` in training, as one autograd node (bit-identical).

    Per model: ``h (N, B, D)``, every parameter with leading ``N``, ``stats``' parts
    ``mu``/``rstd (N, B, 1)``, ``keep (N, B, bn + d)`` or None. Shared rows (``batch_order:
    shared``): ``h``, ``mu``, ``rstd`` without a seed axis, ``(K, …)``, and the parameters
    ``(S, K, …)``. Under ``torch.func.vmap`` the seed axis is folded into N (own rows) or
    kept as S (shared rows), so the whole group is one call for every seed. Outputs: u, then
    the intermediates backward reads (returned so that ``vmap`` can carry them; no gradient).
    """

    @staticmethod
    def forward(h, w_in, mu, rstd, down_bias, adapter_out, proj_bias, norm_weight, norm_bias,
                keep, fused_add):  # fmt: skip
        bn = down_bias.shape[-1]
        product = shared_input_product if w_in.dim() == 4 else input_product
        zc, ph = product(h, w_in, mu, bn)
        params = (down_bias, adapter_out, proj_bias, norm_weight, norm_bias)
        u, saved = _group_tail(zc, ph, rstd, params, keep, fused_add)
        return u, *saved

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h, w_in, mu, rstd, _, adapter_out, _, norm_weight, _, keep, _ = inputs
        ctx.shared = w_in.dim() == 4
        ctx.set_materialize_grads(False)  # the intermediates get no gradient: no zero tensors
        ctx.save_for_backward(h, mu, rstd, adapter_out, norm_weight, keep, *output[1:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, du, *_):
        h, mu, rstd, adapter_out, norm_weight, keep, *saved = ctx.saved_tensors
        dzc, dph, dparams = _group_tail_grad(du, tuple(saved), rstd, adapter_out, norm_weight, keep)
        grad = shared_input_weight_grad if ctx.shared else input_weight_grad
        return None, grad(dzc, dph, h, mu), None, None, *dparams, None, None

    @staticmethod
    def vmap(info, in_dims, h, w_in, mu, rstd, *rest):
        n = info.batch_size
        hd, wd, md, rd, *pd = in_dims
        params, (keep, _) = rest[:-2], rest[-2:]
        if hd is None and md is None and rd is None:  # shared rows: keep S as its own axis
            stacked = [
                x.movedim(dim, 0) if dim is not None else x.expand(n, *x.shape)
                for x, dim in zip((w_in, *params), (wd, *pd[:-2]), strict=True)
            ]
            kd = pd[-2]
            keep = keep if keep is None or kd is None else keep.movedim(kd, 0)
            out = _GroupTrainStep.apply(h, stacked[0], mu, rstd, *stacked[1:], keep, False)
            return out, tuple(0 for _ in out)
        tensors = (h, w_in, mu, rstd, *params, keep)
        folded = [None if x is None else _fold(x, dim, n)
                  for x, dim in zip(tensors, in_dims[:-1], strict=True)]  # fmt: skip
        out = _GroupTrainStep.apply(*folded, False)
        return tuple(t.view(n, -1, *t.shape[1:]) for t in out), tuple(0 for _ in out)


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

    # training runs as one autograd node (:class:`_GroupTrainStep`); False: the composed
    # operations (the reference the tests compare it with)
    fused_training = True

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
                linear_init_(t, dim)
            return
        self.down_bias = nn.Parameter(torch.empty(k, bottleneck))
        self.adapter_out = nn.Parameter(torch.zeros(k, bottleneck, d))
        self.proj_bias = nn.Parameter(torch.empty(k, d))
        self.norm_weight = nn.Parameter(torch.ones(k, d))
        self.norm_bias = nn.Parameter(torch.zeros(k, d))
        for t in (self.w_in, self.down_bias, self.proj_bias):
            linear_init_(t, dim)

    def forward(self, h: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """``h (K, B, D)``; ``stats (K, B, 2)``: the rows' mean and 1/σ if precomputed
        (:func:`row_stats`; h is data, so the trainer computes them once per dataset)."""
        bn = self.bn
        if self.linear:  # (K, B, D) @ (K, D, d): autograd's own product, no row statistics
            return torch.baddbmm(self.proj_bias.unsqueeze(1), h, self.w_in.transpose(1, 2))
        if stats is None:
            stats = row_stats(h)
        mu, rstd = stats[..., :1].to(h.dtype), stats[..., 1:]
        keep = None
        if self.training and self.p > 0:  # one draw for both dropout sites
            keep = keep_mask((*h.shape[:-1], bn + self.d), self.p, h.device, h.dtype)
        if (
            self.fused_training
            and self.training
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(h.device.type)
        ):
            params = (self.down_bias, self.adapter_out, self.proj_bias, self.norm_weight,
                      self.norm_bias)  # fmt: skip
            out = _GroupTrainStep.apply(h, self.w_in, mu, rstd.to(h.dtype), *params, keep, True)
            return out[0]
        zc, ph = _InputProduct.apply(h, self.w_in, mu, bn)
        z = zc * rstd.to(zc.dtype) + self.down_bias.unsqueeze(1)
        a = F.gelu(z)
        if keep is not None:
            a = a * keep[..., :bn]
        pre = torch.baddbmm(ph, a, self.adapter_out) + self.proj_bias.unsqueeze(1)
        pre = F.layer_norm(pre, (self.d,), eps=LN_EPS)
        u = F.gelu(pre * self.norm_weight.unsqueeze(1) + self.norm_bias.unsqueeze(1))
        return u * keep[..., bn:] if keep is not None else u


__all__ = ["LN_EPS", "ExpertGroup", "keep_mask", "linear_init_", "row_stats"]
