"""MedMIX with a uniform intra-modality mean: the ablation variant ``medmix-uniform``.

The "w/o intra-modality fusion (uniform mean)" row of the ablation table
(:mod:`medmix.ablation_plan`): MedMIX whose router scores every expert 0, so the masked
softmax gives α uniform over the available experts of each modality. Trained by
``python -m fusion ablation train --variant uniform_mean``.
"""

from __future__ import annotations

from torch import nn

from fusion.medmix import MedMIX
from fusion.registry import ModelSpec, register_method
from medmix.ablation_plan import UNIFORM_METHOD


class _ZeroScorer(nn.Module):
    """A router that scores every expert 0: the masked softmax is then uniform."""

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], 1)


@register_method(UNIFORM_METHOD)
class MedMIXUniform(MedMIX):
    """MedMIX with the intra-modality router replaced by the mean of available experts."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.routers = _ZeroScorer()
