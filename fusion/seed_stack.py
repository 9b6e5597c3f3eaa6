"""The seeds of one job stacked: parameters with a leading seed axis, and their minibatches.

With ``vectorize_seeds`` the seeds are trained *together* (:class:`fusion.trainer.SeedTrainer`):
their parameters are stacked along a leading seed axis (:class:`SeedStack`) and one step runs
every seed's own minibatch (:class:`fusion.seed_inputs.SeedInputs`) through ``torch.func.vmap``. The optimiser
(:class:`StackAdamW`, fused multi-tensor AdamW) and the per-seed gradient clipping work on the
stacked tensors directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fusion.optim import AdamW, dense_view

if TYPE_CHECKING:
    from medmix.hparams import FusionHParams


class SeedStack:
    """S copies of a module's parameters, stacked: ``params[name]`` is a leaf ``(S, *shape)``.

    Gradients are left to autograd (``.grad`` is reset to None before each backward, so the
    computed gradient tensor is stored as is, never copied into a buffer); the optimiser's
    fused multi-tensor step and the per-seed gradient clipping work on the stacked tensors.
    Persistent buffers (e.g. M3Care's reference bank) are stacked in ``buffers``.
    """

    def __init__(
        self,
        modules: list[nn.Module],
        groups: dict[str, list[str]],
        device: torch.device,
        seed_inner: frozenset[str] = frozenset(),
    ) -> None:
        template = modules[0]
        named = [dict(m.named_parameters()) for m in modules]
        self.groups = groups
        self.params: dict[str, torch.Tensor] = {}
        for names in groups.values():
            for n in names:
                ts = [nm[n].detach() for nm in named]
                if (
                    n in seed_inner
                ):  # (S, K, ...) whose memory is (K, S, ...): see medmix._SharedInputProduct
                    t = torch.stack(ts, dim=1).to(device).contiguous().transpose(0, 1).detach()
                else:
                    t = torch.stack(ts).to(device).contiguous()
                self.params[n] = t.requires_grad_(True)
        non_persistent = {
            f"{mod_name}.{b}" if mod_name else b
            for mod_name, mod in template.named_modules()
            for b in mod._non_persistent_buffers_set
        }
        self.buffers = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in modules]).to(device)
            for n, _ in template.named_buffers()
            if n not in non_persistent
        }
        self.best = {n: p.detach().clone() for n, p in self.params.items()}
        self.best_buffers = {n: b.clone() for n, b in self.buffers.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params.values() if p.grad is not None]

    @torch.no_grad()
    def clip_(self, max_norm: float) -> torch.Tensor:
        """Per-seed gradient-norm clipping (as ``clip_grad_norm_`` does for one model)."""
        grads = self.grads()
        norms = [
            torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1, dtype=torch.float32)
            if g.is_contiguous()
            else torch.linalg.vector_norm(dense_view(g), dim=tuple(range(2, g.ndim)) or None).norm(
                dim=0
            )
            for g in grads
        ]
        norm = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        if bool((coef < 1.0).any()):
            for g in grads:
                g.mul_(coef.view(-1, *[1] * (g.ndim - 1)).to(g.dtype))
        return norm

    @torch.no_grad()
    def finite_seeds(self) -> list[bool]:
        """Per seed: whether every one of its parameters is finite (one sync for all)."""
        ok = None
        for p in self.params.values():
            seed_ok = torch.isfinite(p).reshape(p.shape[0], -1).all(dim=1)
            ok = seed_ok if ok is None else ok & seed_ok
        return [] if ok is None else ok.tolist()

    @torch.no_grad()
    def save_best(self, s: int) -> None:
        for n, p in self.params.items():
            self.best[n][s].copy_(p[s])
        for n, b in self.buffers.items():
            self.best_buffers[n][s].copy_(b[s])

    @torch.no_grad()
    def restore_best(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.best[n])
        for n, b in self.buffers.items():
            b.copy_(self.best_buffers[n])

    @torch.no_grad()
    def state_dict_of(self, s: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """Seed ``s``'s parameters and persistent buffers, names under ``prefix`` (stripped)."""
        out = {}
        for store in (self.params, self.buffers):
            for n, t in store.items():
                if n.startswith(prefix):
                    out[n[len(prefix) :]] = t[s].detach().clone()
        return out


class StackAdamW(AdamW):
    """AdamW over the stacked parameters of a :class:`SeedStack` (groups as configured)."""

    def __init__(self, stack: SeedStack, hp: FusionHParams) -> None:
        groups = [
            {
                "params": [stack.params[n] for n in names],
                "lr": hp.router_lr if g.startswith("router") else hp.lr,
                "weight_decay": 0.0 if g.endswith("_nodecay") else hp.weight_decay,
                "name": g,
            }
            for g, names in stack.groups.items()
        ]
        super().__init__(groups, betas=hp.betas, eps=hp.eps)


__all__ = ["SeedStack", "StackAdamW"]
