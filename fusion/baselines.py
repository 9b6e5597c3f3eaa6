"""Baselines on the same caches and the same per-expert adapters + projections (paper §4.1).

Every method here subclasses :class:`fusion.medmix.FusionModel`: it sees the projected expert
embeddings ``u (B, M, E_max, d)`` (zero where δ = 0) and the mask δ, and returns logits; a
sample with nothing available gets the learned prior, as in MedMIX.

=============  ===========================================================================
``meanavg``    mean of the available projected expert embeddings → MLP head
``concat``     all projected expert embeddings (zeros where missing) + the mask → MLP head
``max``        element-wise max over the available projected expert embeddings → MLP head
``attention``  attention pooling over the available expert tokens → MLP head
``m3care``     M3Care (Zhang et al., KDD 2022): similar-patient imputation in latent space
``adacomed``   AdaCoMed (Chen et al., CVPR 2025): MoME over the large (teacher) models,
               a small multimodal model, adaptive weighting, contrastive large–small alignment
``large``      ``<modality>-large``: a head on one modality's teacher cache (Table 1, *-Large)
``onellm``     OneLLM (Han et al., CVPR 2024), expert-style: a head on OneLLM embeddings;
               needs its 7B+ weights (the run is marked unavailable without them)
=============  ===========================================================================

The re-implemented baselines (M3Care, AdaCoMed, OneLLM) follow the papers' descriptions on
our pre-extracted embeddings; each class docstring lists where they differ from the original.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fusion.medmix import FusionModel, FusionOutput, GroupedMLP, masked_softmax, mlp
from fusion.registry import ModelSpec, register_method
from medmix.methods import TEACHER_EXPERT


def _masked_mean(u: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``u`` over ``dim`` where ``mask`` (u's shape without the last axis) is set."""
    w = mask.to(u.dtype).unsqueeze(-1)
    return (u * w).sum(dim=dim) / w.sum(dim=dim).clamp_min(1.0)


class TokenSelfAttention(nn.Module):
    """One pre-norm transformer block over a few tokens, with a key mask.

    ``x (B, T, d)``, ``mask (B, T)`` bool; masked keys get weight exactly 0 (masked softmax).
    Callers keep at least one key valid per row (a CLS token), so no row is empty.
    """

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.h = heads if d % heads == 0 else 1
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = mlp(d, 2 * d, d, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.h, d // self.h).unbind(dim=2)
        scores = torch.einsum("bqhc,bkhc->bhqk", q, k) / math.sqrt(d // self.h)
        w = masked_softmax(scores, mask[:, None, None, :].expand_as(scores), dim=-1)
        x = x + self.out(torch.einsum("bhqk,bkhc->bqhc", w, v).reshape(b, t, d))
        return x + self.ff(self.norm2(x))


@register_method("meanavg")
class MeanAvg(FusionModel):
    """Mean of the available projected expert embeddings (all modalities) → MLP head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.head = mlp(spec.d, spec.d, spec.n_outputs, spec.dropout)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        count = delta.sum(dim=(1, 2)).clamp_min(1.0).unsqueeze(-1)  # (B, 1)
        pooled = u.sum(dim=(1, 2)) / count  # u is already zero where δ = 0
        return FusionOutput(logits=self.head(pooled))


@register_method("concat")
class Concat(FusionModel):
    """All projected expert embeddings concatenated (zeros where missing) + δ → MLP head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        k = len(spec.flat_experts)
        self.slots = [
            (mi, ei) for mi, m in enumerate(spec.modalities) for ei in range(len(spec.experts[m]))
        ]
        self.head = mlp(k * spec.d + k, spec.d, spec.n_outputs, spec.dropout)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        feats = [u[:, mi, ei] for mi, ei in self.slots]
        mask = torch.stack([delta[:, mi, ei] for mi, ei in self.slots], dim=1)
        return FusionOutput(logits=self.head(torch.cat([*feats, mask], dim=1)))


@register_method("max")
class Max(FusionModel):
    """Element-wise max over the available projected expert embeddings → MLP head.

    Missing experts never win the max (their entries are the dtype's lowest value before
    pooling); a sample with nothing available pools to 0 and then gets the prior.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.head = mlp(spec.d, spec.d, spec.n_outputs, spec.dropout)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        avail = (delta > 0).flatten(1, 2).unsqueeze(-1)  # (B, K, 1)
        tokens = u.flatten(1, 2).masked_fill(~avail, torch.finfo(u.dtype).min)
        pooled = torch.where(avail.any(dim=1), tokens.amax(dim=1), torch.zeros_like(tokens[:, 0]))
        return FusionOutput(logits=self.head(pooled))


@register_method("attention")
class Attention(FusionModel):
    """Attention pooling over the expert tokens → MLP head.

    Every available projected expert embedding is a token; a learned scorer (an MLP, trained
    with the router learning rate) gives each token a score, a masked softmax over the
    available tokens gives the weights, and the weighted sum goes to the head. Unlike MedMIX
    there is no modality structure: all experts of all modalities compete in one softmax.
    """

    router_modules = ("scorer",)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.scorer = mlp(spec.d, max(spec.d // 2, 8), 1)
        self.head = mlp(spec.d, spec.d, spec.n_outputs, spec.dropout)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        tokens = u.flatten(1, 2)  # (B, K, d)
        weights = masked_softmax(self.scorer(tokens).squeeze(-1), delta.flatten(1, 2) > 0, dim=1)
        pooled = (weights.unsqueeze(-1) * tokens).sum(dim=1)
        return FusionOutput(logits=self.head(pooled))


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-modality squared distances: ``x (B, M, d)``, ``y (R, M, d)`` -> ``(M, B, R)``."""
    sq_x, sq_y = x.square().sum(-1).t(), y.square().sum(-1).t()
    return (
        sq_x.unsqueeze(2) + sq_y.unsqueeze(1) - 2 * torch.einsum("bmd,rmd->mbr", x, y)
    ).clamp_min(0)


def _gaussian_kernel(
    d2: torch.Tensor, pool_d2: torch.Tensor, pool_valid: torch.Tensor
) -> torch.Tensor:
    """Mean of three Gaussian kernels (bandwidths b/2, b, 2b), per modality; b is the mean
    squared distance between the valid pairs of the neighbour pool, so a query's similarities
    never depend on the other queries of its batch."""
    w = pool_valid.to(d2.dtype)
    bw = (pool_d2 * w).sum(dim=(1, 2), keepdim=True) / w.sum(dim=(1, 2), keepdim=True).clamp_min(
        1.0
    )
    bw = bw.detach().clamp_min(1e-6)
    return sum(torch.exp(-d2 / (bw * mul)) for mul in (0.5, 1.0, 2.0)) / 3.0


@register_method("m3care")
class M3Care(FusionModel):
    """M3Care — reimplemented from the paper's description (Zhang et al., KDD 2022).

    Per modality, a representation h_m (the mean of the available projected experts). A
    task-guided, modality-adaptive patient similarity: for each modality a mixture (learned
    weight) of a Gaussian kernel on h_m and one on a learned projection φ_m(h_m), averaged over
    the modalities both patients have, then sparsified by a learned threshold (similarities
    below it are 0). The missing modality m of a patient is imputed in latent space from the
    similar patients that have m (similarity-weighted mean of their h_m, then an MLP); an
    observed modality is adaptively mixed with its neighbours' aggregate (learned gate). The
    completed modality tokens (+ a modality embedding and a CLS token) go through a
    transformer block; CLS and the masked mean of the tokens feed the head. Everything is
    trained end to end with the task loss, so the similarity is task-guided.

    Differences from the original: the unimodal encoders are our shared expert adapters +
    projections (mean over a modality's experts) instead of raw-input encoders; one
    aggregation layer (the original stacks two graph convolutions) and one transformer block
    (two in the original); the kernel uses the mean of three bandwidths (the original sums
    them), scaled by the mean squared distance within the neighbour pool; the auxiliary
    stability term is omitted. Neighbours are the other patients of the
    minibatch during training (as in the original); at evaluation and in a saved model they
    are a fixed reference bank of ``m3care_bank`` (default 256) training patients, whose
    representations the trainer refreshes from the current weights before every evaluation,
    so a prediction never depends on which other samples are in the batch.
    """

    uses_reference = True

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        d, m = spec.d, len(spec.modalities)
        self.bank_size = int(spec.extra.get("m3care_bank", 256))
        self.sim_proj = GroupedMLP(m, d, d, d)  # φ_m
        self.kernel_mix = nn.Parameter(torch.zeros(m))  # σ(·): weight of the raw-h kernel
        self.threshold = nn.Parameter(torch.zeros(()))  # σ(·): similarity threshold
        self.impute = GroupedMLP(m, d, d, d, spec.dropout)
        self.gate_g = nn.Parameter(torch.zeros(m, d))
        self.gate_h = nn.Parameter(torch.zeros(m, d))
        self.gate_bias = nn.Parameter(torch.zeros(m, 2))
        self.modality_embedding = nn.Parameter(torch.randn(m, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.block = TokenSelfAttention(d, 4, spec.dropout)
        self.head = mlp(2 * d, d, spec.n_outputs, spec.dropout)
        self.register_buffer("ref_h", torch.zeros(self.bank_size, m, d))
        self.register_buffer("ref_mask", torch.zeros(self.bank_size, m))

    def _modality_repr(self, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        avail = delta > 0
        return _masked_mean(u, avail, dim=2), avail.any(dim=-1)  # (B, M, d), (B, M)

    def reference_buffers(
        self, groups: list[torch.Tensor], delta: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        delta = delta.to(self.prior.dtype)
        h, a = self._modality_repr(self.encoder.encode_groups(groups, delta), delta)
        pad = self.bank_size - h.shape[0]
        if pad < 0:
            raise ValueError(f"at most {self.bank_size} reference samples, got {h.shape[0]}")
        return {
            "ref_h": F.pad(h, (0, 0, 0, 0, 0, pad)),
            "ref_mask": F.pad(a.to(h.dtype), (0, 0, 0, pad)),
        }

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        h, a = self._modality_repr(u, delta)
        af = a.to(h.dtype)
        if self.training:  # neighbours: the other patients of the batch
            pool_h, pool_a = h, af
            not_self = 1.0 - torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        else:  # neighbours: the reference bank of training patients
            pool_h, pool_a = self.ref_h.to(h.dtype), self.ref_mask.to(h.dtype)
            not_self = torch.ones(h.shape[0], pool_h.shape[0], dtype=h.dtype, device=h.device)
        # per-modality pair validity (both have m) and kernels, (M, B, R)
        valid = af.t().unsqueeze(2) * pool_a.t().unsqueeze(1) * not_self
        r = pool_h.shape[0]
        eye = torch.eye(r, dtype=h.dtype, device=h.device)
        pool_valid = pool_a.t().unsqueeze(2) * pool_a.t().unsqueeze(1) * (1 - eye)
        kernels = []
        for x, y in ((h, pool_h), (self.sim_proj(h), self.sim_proj(pool_h))):
            pool_d2 = _sq_dist(y, y) if not self.training else None
            d2 = _sq_dist(x, y)
            kernels.append(_gaussian_kernel(d2, d2 if pool_d2 is None else pool_d2, pool_valid))
        mix = torch.sigmoid(self.kernel_mix).view(-1, 1, 1)
        k = mix * kernels[0] + (1 - mix) * kernels[1]
        sim = (k * valid).sum(0) / valid.sum(0).clamp_min(1.0)  # (B, R)
        th = torch.sigmoid(self.threshold)
        s = F.relu(sim - th)
        s = s + (s > 0).to(s.dtype) * th.detach()  # keep sim where it exceeds the threshold
        w = s.unsqueeze(0) * pool_a.t().unsqueeze(1) * not_self  # (M, B, R)
        norm = w.sum(-1)  # (M, B)
        agg = torch.einsum("mbr,rmd->bmd", w, pool_h) / norm.t().clamp_min(1e-12).unsqueeze(-1)
        has_nb = (norm > 0).t()  # (B, M)
        g = F.relu(self.impute(agg))
        wg = torch.sigmoid((g * self.gate_g).sum(-1) + self.gate_bias[:, 0])
        wh = torch.sigmoid((h * self.gate_h).sum(-1) + self.gate_bias[:, 1])
        gate = (wg / (wg + wh)).unsqueeze(-1)
        nb = has_nb.unsqueeze(-1)
        final = torch.where(a.unsqueeze(-1), torch.where(nb, gate * g + (1 - gate) * h, h), g)
        token_ok = a | has_nb
        final = final * token_ok.unsqueeze(-1).to(final.dtype)
        tokens = torch.cat(
            [self.cls.expand(h.shape[0], 1, -1), final + self.modality_embedding], dim=1
        )
        mask = torch.cat([torch.ones_like(token_ok[:, :1]), token_ok], dim=1)
        out = self.block(tokens, mask)
        pooled = torch.cat([out[:, 0], _masked_mean(out[:, 1:], token_ok, dim=1)], dim=-1)
        return FusionOutput(logits=self.head(pooled))


@register_method("adacomed")
class AdaCoMed(FusionModel):
    """AdaCoMed — reimplemented from the paper's description (Chen et al., CVPR 2025).

    Large–small collaboration. The *large* branch is a mixture of modality experts (MoME)
    over the single-modality large models — here each modality's teacher embedding (the
    expert named ``teacher`` in the modality, i.e. ``teachers/{m}.parquet``, read at
    inference too): a gating network scores each available large feature and a masked
    softmax combines them. The *small* branch is a multimodal small model over the SM expert
    committee (the same caches as every other method): per modality the mean of its
    available SM experts, then one transformer block across modalities (cross-modal
    reasoning), pooled over the available modalities. Adaptive co-learning: a sample-specific
    weight w = σ(MLP([F_large, F_small])) mixes the two branches' logits (w is forced to 1 or 0
    when only one branch has input), and a symmetric InfoNCE loss (τ = 0.1, weight
    ``adacomed_align``, default 0.1) aligns the large and small representations of the same
    sample against the other samples of the batch.

    Differences from the original: the large models are frozen and read from cached
    embeddings (the original also keeps them frozen, but feeds token-level features); the
    small model works on our cached SM embeddings instead of raw inputs; one transformer
    block; no separate per-branch classification losses (only the fused logits and the
    alignment term are trained). A modality without a configured teacher has no large
    feature.
    """

    router_modules = ("mome_router", "co_weight")
    uses_teacher_input = True
    deploys_teachers = True

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        d, c, m, e = spec.d, spec.n_outputs, len(spec.modalities), spec.max_experts
        self.align_weight = float(spec.extra.get("adacomed_align", 0.1))
        self.temperature = float(spec.extra.get("adacomed_temperature", 0.1))
        large = torch.zeros(m, e, dtype=torch.bool)
        small = torch.zeros(m, e, dtype=torch.bool)
        for mi, mod in enumerate(spec.modalities):
            for ei, name in enumerate(spec.experts[mod]):
                (large if name == TEACHER_EXPERT else small)[mi, ei] = True
        if not large.any():
            raise ValueError("adacomed needs a teacher expert in at least one modality")
        self.register_buffer("large_slots", large, persistent=False)
        self.register_buffer("small_slots", small, persistent=False)
        self.mome_router = mlp(d, max(d // 2, 8), 1)
        self.modality_embedding = nn.Parameter(torch.randn(m, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.small_block = TokenSelfAttention(d, 4, spec.dropout)
        self.co_weight = mlp(2 * d, max(d // 2, 8), 1)
        self.head_large = mlp(d, d, c, spec.dropout)
        self.head_small = mlp(d, d, c, spec.dropout)
        self.align_large = nn.Linear(d, d)
        self.align_small = nn.Linear(d, d)

    def _info_nce(self, a: torch.Tensor, b: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        za = F.normalize(self.align_large(a), dim=-1)
        zb = F.normalize(self.align_small(b), dim=-1)
        logits = za @ zb.t() / self.temperature
        cols = both.unsqueeze(0).expand_as(logits)
        lo = torch.finfo(logits.dtype).min
        w = both.to(logits.dtype)
        row = -F.log_softmax(logits.masked_fill(~cols, lo), dim=1).diagonal()
        col = -F.log_softmax(logits.t().masked_fill(~cols, lo), dim=1).diagonal()
        # where, not a product with w: a sample without both branches has an infinite row
        # (its own column is masked), and 0 * inf would make the reported loss NaN
        return torch.where(both, row + col, 0.0).sum() / (2 * w.sum().clamp_min(1.0))

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        avail = delta > 0
        large_ok = (avail & self.large_slots).any(dim=-1)  # (B, M)
        large = (u * self.large_slots.unsqueeze(-1).to(u.dtype)).sum(dim=2)  # (B, M, d)
        g = masked_softmax(self.mome_router(large).squeeze(-1), large_ok, dim=1)
        f_large = (g.unsqueeze(-1) * large).sum(dim=1)
        small_avail = avail & self.small_slots
        small_ok = small_avail.any(dim=-1)
        small = _masked_mean(u, small_avail, dim=2) + self.modality_embedding
        tokens = torch.cat([self.cls.expand(u.shape[0], 1, -1), small], dim=1)
        mask = torch.cat([torch.ones_like(small_ok[:, :1]), small_ok], dim=1)
        out = self.small_block(tokens, mask)
        f_small = out[:, 0] + _masked_mean(out[:, 1:], small_ok, dim=1)
        has_l, has_s = large_ok.any(dim=1, keepdim=True), small_ok.any(dim=1, keepdim=True)
        w = torch.sigmoid(self.co_weight(torch.cat([f_large, f_small], dim=-1)))
        w = torch.where(has_l & has_s, w, has_l.to(w.dtype))
        logits = w * self.head_large(f_large) + (1 - w) * self.head_small(f_small)
        aux = None
        if self.training and self.align_weight > 0:
            both = (has_l & has_s).squeeze(-1)
            aux = self.align_weight * self._info_nce(f_large, f_small, both)
        return FusionOutput(logits=logits, beta=g, aux_loss=aux)


@register_method("large")
class TeacherReference(MeanAvg):
    """``<modality>-large``: the single-modality teacher reference of Table 1 (*-Large).

    A head on one modality's teacher cache (loaded as the expert ``teacher``): the same
    adapter + projection as every expert, then an MLP head. The teacher is needed at
    inference (it is the model's only input).
    """

    uses_teacher_input = True
    deploys_teachers = True


@register_method("onellm")
class OneLLM(MeanAvg):
    """OneLLM — expert-style adapter (Han et al., CVPR 2024), fine-tuned head per task.

    OneLLM encodes every modality with one frozen universal encoder + projection module into
    LLaMA-2-7B. Here it is used like an expert: its per-modality embeddings are read from
    ``embeddings/{m}/onellm.parquet`` (produced by an ``onellm`` expert preset), then the
    masked mean over the modalities goes to an MLP head trained on the task.

    Differences from the original: the LLM is not fine-tuned end to end; modalities are
    pooled after encoding instead of being interleaved in one LLM context. The method needs
    the OneLLM 7B+ weights: without them (:func:`medmix.plan.onellm_unavailable`) the
    training job writes a run marked ``"status": "unavailable"`` with the reason, and the
    tables show the row as "weights absent".
    """

    requires_weights = True
