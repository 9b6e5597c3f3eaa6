"""The optimiser: AdamW over parameter groups (base / router, with and without weight decay).

AdamW with decoupled weight decay on weight matrices only (not biases, norms, 1-D parameters
or the prior), a separate router learning rate, ``betas`` and ``eps`` from the config's
``fusion:`` section (:class:`medmix.hparams.FusionHParams`). :class:`AdamW` runs on one model's
parameters (:func:`make_optimizer`) or on the stacked parameters of every seed
(:class:`fusion.seed_stack.StackAdamW`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from fusion.medmix import FusionModel
    from medmix.hparams import FusionHParams


def _decayed(name: str, p: torch.Tensor) -> bool:
    """Weight decay on weight matrices only: not biases, norms, 1-D parameters or the prior."""
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim >= 2 and "bias" not in leaf and "norm" not in leaf


def param_group_names(module: nn.Module, router_ids: set[int]) -> dict[str, list[str]]:
    """Parameter names per optimiser group (``base``, ``base_nodecay``, ``router``, …)."""
    groups: dict[str, list[str]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            g = ("router" if id(p) in router_ids else "base") + (
                "" if _decayed(name, p) else "_nodecay"
            )
            groups.setdefault(g, []).append(name)
    return {k: groups[k] for k in sorted(groups)}


class AdamW:
    """AdamW (decoupled weight decay, Loshchilov & Hutter) over parameter groups.

    Same update as ``torch.optim.AdamW(amsgrad=False)``; groups are dicts with ``params``,
    ``lr`` and ``weight_decay``. It exists because constructing any ``torch.optim`` optimizer
    imports ``torch._dynamo`` (2–8 s of a few-second CPU job); it runs the fused
    ``torch._fused_adamw_`` kernel where available and the per-tensor formula otherwise.
    The trainer uses it on flat per-group buffers (all seeds of a group in one tensor).
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.param_groups = [dict(g, params=list(g["params"])) for g in param_groups]
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = eps
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.fused = hasattr(torch, "_fused_adamw_")

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.get(p)
        if st is None:
            st = self.state[p] = {
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
            }
        return st

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            grads = [dense_view(p.grad) for p in params]
            m = [dense_view(s["exp_avg"]) for s in states]
            v = [dense_view(s["exp_avg_sq"]) for s in states]
            params = [dense_view(p) for p in params]
            steps = [s["step"] for s in states]
            lr, wd = float(g["lr"]), float(g["weight_decay"])
            if self.fused:
                try:
                    for t in steps:
                        t.add_(1)
                    torch._fused_adamw_(
                        params, grads, m, v, [], steps, amsgrad=False, lr=lr, beta1=b1, beta2=b2,
                        weight_decay=wd, eps=self.eps, maximize=False, grad_scale=None, found_inf=None,
                    )  # fmt: skip
                    continue
                except (RuntimeError, TypeError, NotImplementedError):
                    for t in steps:
                        t.sub_(1)
                    self.fused = False
            for p, grad, ea, eas, t in zip(params, grads, m, v, steps, strict=True):
                t.add_(1)
                k = float(t)
                p.mul_(1 - lr * wd)
                ea.lerp_(grad, 1 - b1)
                eas.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (eas.sqrt() / math.sqrt(1 - b2**k)).add_(self.eps)
                p.addcdiv_(ea, denom, value=-lr / (1 - b1**k))


def dense_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous view where one exists (a seed-inner stacked weight is the
    transpose of its memory layout): the fused kernel would copy a strided tensor."""
    if t.is_contiguous() or t.ndim < 2:
        return t
    tt = t.transpose(0, 1)
    return tt if tt.is_contiguous() else t


def make_optimizer(model: FusionModel, hp: FusionHParams) -> AdamW:
    """AdamW with base / router groups; weight decay on weight matrices only (one model)."""
    router_ids = {id(p) for p in model.router_parameters()}
    named = dict(model.named_parameters())
    groups = []
    for name, names in param_group_names(model, router_ids).items():
        groups.append(
            {
                "params": [named[n] for n in names],
                "lr": hp.router_lr if name.startswith("router") else hp.lr,
                "weight_decay": hp.weight_decay if not name.endswith("_nodecay") else 0.0,
                "name": name,
            }
        )
    return AdamW(groups, betas=hp.betas, eps=hp.eps)


__all__ = ["AdamW", "dense_view", "make_optimizer", "param_group_names"]
