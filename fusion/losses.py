"""Training objective (DESIGN §6 item 7): ``L = L_task + λ(t) · L_KD``.

``L_task`` is BCE-with-logits per label / task (multilabel, binary; optional ``pos_weight``;
unknown labels, stored as NaN, are left out) or cross-entropy (multiclass; -1 = unknown).
``L_KD`` (distillation, item 6) is not implemented yet: :func:`kd_loss` returns 0 and the
training loop already passes it a teacher batch (``None`` for now) and the ramp λ(t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fusion.medmix import FusionOutput


@dataclass
class TeacherBatch:
    """Teacher embeddings of one minibatch (distillation; filled in by a later issue)."""

    t: list[torch.Tensor]  # per modality (B, D_T)
    available: torch.Tensor  # (B, M) bool


@dataclass
class LossParts:
    total: torch.Tensor
    task: torch.Tensor
    kd: torch.Tensor
    lambda_kd: float


def kd_lambda(epoch: int, warmup_epochs: int, lambda_max: float) -> float:
    """λ(t): linear ramp 0 → λ_max over the first ``warmup_epochs`` epochs (0-based), then held."""
    if lambda_max <= 0:
        return 0.0
    if warmup_epochs <= 0:
        return float(lambda_max)
    return float(lambda_max) * min(1.0, epoch / warmup_epochs)


def task_loss(
    logits: torch.Tensor, y: torch.Tensor, task_type: str, pos_weight: float | None = None
) -> torch.Tensor:
    """Mean loss over known labels (0 if none is known, never NaN)."""
    if task_type == "multiclass":
        known = y >= 0
        if not bool(known.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[known], y[known])
    known = torch.isfinite(y)
    target = torch.where(known, y, torch.zeros_like(y))
    pw = None
    if pos_weight is not None:
        pw = torch.full(
            (logits.shape[-1],), float(pos_weight), dtype=logits.dtype, device=logits.device
        )
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    weight = known.to(bce.dtype)
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)


def kd_loss(out: FusionOutput, teacher: TeacherBatch | None) -> torch.Tensor:
    """Distillation loss L_KD (cosine + γ·RKD per modality). Not implemented yet: 0."""
    return out.logits.new_zeros(())


def total_loss(
    out: FusionOutput,
    y: torch.Tensor,
    task_type: str,
    pos_weight: float | None = None,
    teacher: TeacherBatch | None = None,
    lambda_kd: float = 0.0,
) -> LossParts:
    lt = task_loss(out.logits, y, task_type, pos_weight)
    lk = kd_loss(out, teacher)
    total = lt + lambda_kd * lk if lambda_kd > 0 else lt
    return LossParts(total=total, task=lt, kd=lk, lambda_kd=lambda_kd)
