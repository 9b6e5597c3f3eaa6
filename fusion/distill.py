"""Teacher–student distillation (docs/design.md §6 item 6, paper §3.5) — training only.

For each modality m with a teacher cache (``results/{dataset}/teachers/{m}.parquet``, the
cache format), a frozen large teacher gives ``t_m ∈ R^{D_T}`` per sample and a learned head
``k_m: R^{D_T} → R^d`` (one linear layer) maps it into the student's space. With ``z_m`` the
student's modality representation (MedMIX's router output) and ``a_{i,m}`` = 1 iff sample i
has both its teacher embedding and modality m available (after any protocol's mask):

* ``L_cos(i) = 1 − cos(z_{i,m}, k_m(t_{i,m}))``, averaged over the available samples;
* RKD distance loss (Park et al., 2019) over the batch's pairs (i ≠ j) where BOTH samples
  have modality m: ``ψ(i, j) = ‖x_i − x_j‖ / mean_{valid pairs} ‖x_i − x_j‖`` for the student
  (``x = z_m``) and for the teacher (``x = t_m``, the teacher's own embedding: RKD transfers
  the teacher space's relational structure, which no learned head can distort), and
  ``L_RKD = mean_{valid pairs} Huber(ψ_s − ψ_t)`` (smooth-L1, δ = 1);
* ``L_m = L_cos + γ L_RKD`` and ``L_KD = Σ_m L_m``, a modality with no available sample in the
  batch contributing 0. The trainer weights it by λ(t), which ramps 0 → λ_max over the
  warm-up epochs (:func:`fusion.losses.kd_lambda`): λ(0) = 0.

The heads live in :class:`DistillHeads`, beside the model, never inside it: the saved
inference model holds no teacher head, and prediction needs no teacher cache. Every function
here is written with masks only (no data-dependent control flow), so it runs unchanged under
``torch.func.vmap`` over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

PAIR_DIST_FLOOR = 1e-12


@dataclass
class TeacherBatch:
    """Teacher embeddings of one minibatch."""

    t: list[torch.Tensor]  # per teacher modality (B, D_T)
    available: torch.Tensor  # (B, M_T) bool: teacher present AND student modality present


@dataclass
class KDParts:
    total: torch.Tensor  # Σ_m (L_cos + γ L_RKD)
    cos: torch.Tensor  # Σ_m L_cos
    rkd: torch.Tensor  # Σ_m L_RKD


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances; the gradient is finite (0) on the diagonal."""
    sq = x.square().sum(dim=-1)
    d2 = sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * (x @ x.transpose(0, 1))
    return d2.clamp_min(PAIR_DIST_FLOOR).sqrt()


def rkd_distance_loss(
    student: torch.Tensor, teacher: torch.Tensor, available: torch.Tensor, delta: float = 1.0
) -> torch.Tensor:
    """RKD distance loss over the pairs (i ≠ j) of samples that are both ``available``.

    Samples that are not available change nothing (neither the normalising mean distance nor
    the loss); with fewer than two available samples the loss is 0.
    """
    a = available.to(student.dtype)
    b = student.shape[0]
    pair = a.unsqueeze(0) * a.unsqueeze(1) * (1.0 - torch.eye(b, dtype=a.dtype, device=a.device))
    n_pairs = pair.sum()
    denom = n_pairs.clamp_min(1.0)
    ds = pairwise_distance(student)
    dt = pairwise_distance(teacher.detach().to(student.dtype))
    psi_s = ds / ((ds * pair).sum() / denom).clamp_min(1e-6)
    psi_t = dt / ((dt * pair).sum() / denom).clamp_min(1e-6)
    huber = F.smooth_l1_loss(psi_s, psi_t, reduction="none", beta=delta)
    return (huber * pair).sum() / denom


def cosine_distill_loss(
    student: torch.Tensor, projected: torch.Tensor, available: torch.Tensor
) -> torch.Tensor:
    """Mean of ``1 − cos(z_i, k(t_i))`` over the available samples (0 if none)."""
    a = available.to(student.dtype)
    cos = F.cosine_similarity(student, projected, dim=-1, eps=1e-8)
    return ((1.0 - cos) * a).sum() / a.sum().clamp_min(1.0)


class DistillHeads(nn.Module):
    """One learned head ``k_m: R^{D_T} → R^d`` per teacher modality (training only).

    ``modality_index[j]`` is the position of teacher modality j among the student's
    modalities (the index into ``z``'s modality axis).
    """

    def __init__(self, teacher_dims: list[int], modality_index: list[int], d: int) -> None:
        super().__init__()
        if len(teacher_dims) != len(modality_index):
            raise ValueError("one modality index per teacher")
        self.modality_index = list(modality_index)
        self.heads = nn.ModuleList(nn.Linear(dim, d) for dim in teacher_dims)

    def forward(self, z: torch.Tensor, teacher: TeacherBatch, gamma: float) -> KDParts:
        cos_total = z.new_zeros(())
        rkd_total = z.new_zeros(())
        for j, (mi, head) in enumerate(zip(self.modality_index, self.heads, strict=True)):
            zm = z[:, mi].float()
            tm = teacher.t[j].to(zm.dtype)
            avail = teacher.available[:, j]
            cos_total = cos_total + cosine_distill_loss(zm, head(tm), avail)
            if gamma > 0:
                rkd_total = rkd_total + rkd_distance_loss(zm, tm, avail)
        return KDParts(cos_total + gamma * rkd_total, cos_total, rkd_total)


def teacher_batch(
    t: list[torch.Tensor], ok: torch.Tensor, delta: torch.Tensor, modality_index: list[int]
) -> TeacherBatch:
    """A minibatch's teacher inputs: ``ok (B, M_T)`` combined with the student's δ (B, M, E)
    (a modality masked by a protocol is missing for its teacher too)."""
    present = delta[:, modality_index].amax(dim=-1) > 0
    return TeacherBatch(t, ok & present)
