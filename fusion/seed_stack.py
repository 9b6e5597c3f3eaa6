"""The seeds of one job stacked: parameters with a leading seed axis, and their minibatches.

With ``vectorize_seeds`` the seeds are trained *together* (:class:`fusion.trainer.SeedTrainer`):
their parameters are stacked along a leading seed axis (:class:`SeedStack`) and one step runs
every seed's own minibatch (:class:`SeedInputs`) through ``torch.func.vmap``. The optimiser
(:class:`StackAdamW`, fused multi-tensor AdamW) and the per-seed gradient clipping work on the
stacked tensors directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fusion.medmix import row_stats
from fusion.optim import AdamW, dense_view

if TYPE_CHECKING:
    from fusion.data import FusionData
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


class SeedInputs:
    """Per-step minibatch assembly for every seed: expert groups, δ, labels, teachers."""

    def __init__(self, datas: list[FusionData], members: list[list[int]]) -> None:
        self.datas = datas
        self.members = members
        self.shared = self.same_data(datas)
        self._bufs: dict[tuple[int, bool], list[torch.Tensor]] = {}
        self._stats: dict[int, list[torch.Tensor]] = {}
        for data in datas:  # each row's mean and 1/σ, once per data object (rows are data)
            if id(data) not in self._stats:
                self._stats[id(data)] = [
                    torch.stack([row_stats(data.x[k]) for k in ks]) for ks in members
                ]  # per group (K_g, N, 2)

    @staticmethod
    def same_data(datas: list[FusionData]) -> bool:
        """Every seed reads the same embeddings and availability (no per-seed protocol mask)."""
        first = datas[0]
        return all(
            d.x is first.x or all(a is b for a, b in zip(d.x, first.x, strict=True)) for d in datas
        ) and all(d.delta is first.delta for d in datas)

    def _buffers(self, b: int, per_seed: bool) -> list[torch.Tensor]:
        key = (b, per_seed)
        if key not in self._bufs:
            first = self.datas[0]
            s = len(self.datas) if per_seed else 1
            self._bufs[key] = [
                torch.empty(s, len(ks), b, first.x[ks[0]].shape[1], device=first.x[ks[0]].device)
                for ks in self.members
            ]
        return self._bufs[key]

    def groups(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """``idx (S, b)`` -> per group ``(S, K_g, b, D_g)`` (each seed its own rows)."""
        bufs = self._buffers(idx.shape[1], True)
        for buf, ks in zip(bufs, self.members, strict=True):
            for s, data in enumerate(self.datas):
                for j, k in enumerate(ks):
                    torch.index_select(data.x[k], 0, idx[s], out=buf[s, j])
        return bufs

    def stats(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Row statistics of the same rows as :meth:`groups`: per group ``(S, K_g, b, 2)``."""
        return [
            torch.stack(
                [
                    self._stats[id(d)][g].index_select(1, i)
                    for d, i in zip(self.datas, idx, strict=True)
                ]
            )
            for g in range(len(self.members))
        ]

    def shared_groups(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """``idx (b,)`` -> per group ``(K_g, b, D_g)`` from the first seed's data."""
        bufs = self._buffers(idx.shape[0], False)
        for buf, ks in zip(bufs, self.members, strict=True):
            for j, k in enumerate(ks):
                torch.index_select(self.datas[0].x[k], 0, idx, out=buf[0, j])
        return [b[0] for b in bufs]

    def shared_stats(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Row statistics of :meth:`shared_groups`' rows: per group ``(K_g, b, 2)``."""
        st = self._stats[id(self.datas[0])]
        return [st[g].index_select(1, idx) for g in range(len(self.members))]

    def delta(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [d.delta.index_select(0, i) for d, i in zip(self.datas, idx, strict=True)]
        )

    def y(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([d.y.index_select(0, i) for d, i in zip(self.datas, idx, strict=True)])

    def teacher(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        tds = [d.teacher for d in self.datas]
        if any(t is None for t in tds):
            return None
        t = [
            torch.stack([td.x[j].index_select(0, i) for td, i in zip(tds, idx, strict=True)])
            for j in range(len(tds[0].modalities))
        ]
        ok = torch.stack([td.ok.index_select(0, i) for td, i in zip(tds, idx, strict=True)])
        return t, ok


__all__ = ["SeedInputs", "SeedStack", "StackAdamW"]
