"""Simple fusion baselines on the same caches and the same per-expert adapters + projections.

* ``meanavg``: mean of the available projected expert embeddings (all experts of all
  modalities) → MLP head.
* ``concat``: all projected expert embeddings concatenated (zeros where missing) plus the
  availability mask → MLP head.

Samples with nothing available get the learned prior, as in MedMIX (see FusionModel).
A new baseline is one class here: subclass FusionModel, implement ``fuse``, register it.
"""

from __future__ import annotations

import torch

from fusion.medmix import FusionModel, FusionOutput, mlp
from fusion.registry import ModelSpec, register_method


@register_method("meanavg")
class MeanAvg(FusionModel):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.head = mlp(spec.d, spec.d, spec.n_outputs, spec.dropout)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        count = delta.sum(dim=(1, 2)).clamp_min(1.0).unsqueeze(-1)  # (B, 1)
        pooled = u.sum(dim=(1, 2)) / count  # u is already zero where δ = 0
        return FusionOutput(logits=self.head(pooled))


@register_method("concat")
class Concat(FusionModel):
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
