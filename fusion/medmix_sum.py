"""MedMIX-Σ: MedMIX whose inter-modality fusion adds evidence and sees what is missing.

**Ours, not the paper's.** The paper's MedMIX (:class:`fusion.medmix.MedMIX`, the ``medmix``
row) fuses the per-modality logits with a convex mixture: ``ŷ = Σ_m β_m ℓ_m`` with β a softmax
over the *available* modalities. Two properties of that form cost accuracy on small cohorts
(docs/fusion.md, "Why MedMIX trails a linear probe"):

* the weights are renormalised over the present modalities, so a sample with one modality
  and a sample with three get logits on the same scale: independent evidence from several
  modalities cannot add up the way a sum (late fusion, a logistic model) adds it;
* the softmax gate learns to collapse onto one modality early on, and the missingness
  pattern itself (a signal in clinical data: sicker patients miss different tests) never
  reaches the output.

MedMIX-Σ keeps MedMIX's experts, adapters, intra-modality router α and heads f_m, and
replaces the fusion step::

    π      = 1[modality m has an available expert]            (B, M)
    w_m    = 2 σ(q(z_m) + (G π)_m) · π_m                      non-normalised gates in (0, 2)
    ŷ      = Σ_m w_m ℓ_m + A π + b                            A (C × M): availability → logits

q and G start at zero (every w_m = 1: a plain sum of the modality heads, i.e. late fusion),
A at zero. G and A read π scaled by :data:`AVAILABILITY_SCALE` (30): under Adam a weight moves
about one learning rate per step whatever its gradient's size, so with π in {0, 1} the
zero-initialised G and A stayed near 0.01-0.03 after a demo cohort's ~40 steps and the
missingness pattern never reached the output; reading 30 π is Adam's step times 30 for these
weights alone (measured in docs/fusion.md: the availability terms then learn, and ccRCC's test
AUROC rises from 0.825 to 0.852 over 5 seeds). A missing modality gets ``w_m = 0`` exactly; a sample with nothing available gets
the learned prior, as in every fusion model (:class:`fusion.medmix.FusionModel`). Reported
``beta`` is ``w`` (non-normalised: it does not sum to 1).
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.medmix import FusionOutput, MedMIX
from fusion.registry import ModelSpec, register_method

SUM_METHOD = "medmix-sum"

# π's scale as G and A read it: the learning-rate multiplier of the availability weights under
# Adam (module docstring); 30 measured on the demo cohorts, 10 learns about half as much
AVAILABILITY_SCALE = 30.0


@register_method(SUM_METHOD)
class MedMIXSum(MedMIX):
    """MedMIX with additive, availability-aware inter-modality fusion (ours; module docstring)."""

    router_modules = ("routers", "fusion_scorer", "gate_availability")

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        m, c = len(spec.modalities), spec.n_outputs
        self.gate_availability = nn.Linear(m, m, bias=False)  # G: who else is present
        self.availability = nn.Linear(m, c)  # A π + b: the missingness pattern as evidence
        for p in (self.gate_availability.weight, self.availability.weight, self.availability.bias):
            nn.init.zeros_(p)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        avail, alpha, z, logits_m = self.route(u, delta)  # MedMIX's intra-modality step
        present = avail.any(dim=-1).to(u.dtype)  # π (B, M)
        scaled = present * AVAILABILITY_SCALE
        r = self.fusion_scorer(z).squeeze(-1) + self.gate_availability(scaled)  # (B, M)
        w = 2.0 * torch.sigmoid(r) * present  # exactly 0 for a missing modality
        logits = (w.unsqueeze(-1) * logits_m).sum(dim=1) + self.availability(scaled)
        return FusionOutput(logits=logits, alpha=alpha, beta=w, z=z, modality_logits=logits_m)
