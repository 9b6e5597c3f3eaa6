"""Training objective (docs/design.md §6 item 7): ``L = L_task + λ(t) · L_KD`` (+ a method's own term).

``L_task`` is BCE-with-logits per label / task (multilabel, binary — several binary tasks at
once are one output each; optional ``pos_weight``; unknown labels, stored as NaN, are left
out) or cross-entropy (multiclass; -1 = unknown). ``L_KD`` is the distillation loss of
:mod:`fusion.distill`, weighted by λ(t), a linear ramp 0 → λ_max over the warm-up epochs.
A method may add its own training term (``FusionOutput.aux_loss``, e.g. AdaCoMed's
contrastive alignment). Every loss is written with masks only, so it runs under
``torch.func.vmap`` over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fusion.distill import DistillHeads, TeacherBatch
from fusion.medmix import FusionOutput

__all__ = ["LossParts", "TeacherBatch", "kd_lambda", "kd_loss", "task_loss", "total_loss"]


@dataclass
class LossParts:
    total: torch.Tensor
    task: torch.Tensor
    kd: torch.Tensor
    lambda_kd: float
    aux: torch.Tensor | None = None


def kd_lambda(epoch: int, warmup_epochs: int, lambda_max: float) -> float:
    """λ(t): linear ramp 0 → λ_max over the first ``warmup_epochs`` epochs (0-based), then held."""
    if lambda_max <= 0:
        return 0.0
    if warmup_epochs <= 0:
        return float(lambda_max)
    return float(lambda_max) * min(1.0, epoch / warmup_epochs)


def task_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    task_type: str,
    pos_weight: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over known labels (0 if none is known, never NaN).

    ``pos_weight``: one number for every output, or a ``(C,)`` tensor (per label / task).
    """
    if task_type == "multiclass":
        known = y >= 0
        ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        w = known.to(ce.dtype)
        return (ce * w).sum() / w.sum().clamp_min(1.0)
    known = torch.isfinite(y)
    target = torch.where(known, y, torch.zeros_like(y))
    pw = None
    if pos_weight is not None:
        pw = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
        pw = pw.expand(logits.shape[-1])
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    weight = known.to(bce.dtype)
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)


def kd_loss(
    out: FusionOutput,
    teacher: TeacherBatch | None,
    heads: DistillHeads | None = None,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Distillation loss L_KD (cosine + γ·RKD per modality); 0 without teachers or heads."""
    if teacher is None or heads is None or out.z is None:
        return out.logits.new_zeros(())
    return heads(out.z, teacher, gamma).total


def total_loss(
    out: FusionOutput,
    y: torch.Tensor,
    task_type: str,
    pos_weight: float | torch.Tensor | None = None,
    teacher: TeacherBatch | None = None,
    lambda_kd: float = 0.0,
    heads: DistillHeads | None = None,
    rkd_gamma: float = 1.0,
) -> LossParts:
    lt = task_loss(out.logits.float(), y, task_type, pos_weight)
    lk = kd_loss(out, teacher, heads, rkd_gamma)
    total = lt + lambda_kd * lk if lambda_kd > 0 else lt
    if out.aux_loss is not None:
        total = total + out.aux_loss
    return LossParts(total=total, task=lt, kd=lk, lambda_kd=lambda_kd, aux=out.aux_loss)
