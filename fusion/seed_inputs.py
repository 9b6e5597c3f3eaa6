"""Per-step minibatch assembly for the seeds of one job (:class:`fusion.trainer.SeedTrainer`).

Each seed reads its own rows (its own minibatch order, or a protocol mask of its own) or, with
``batch_order: shared``, every seed reads the same rows gathered once. Rows are read with
:meth:`fusion.data.FusionData.rows` (memory-mapped caches, standardised on the fly, zero where
δ = 0) straight into preallocated float32 step buffers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fusion.medmix import row_stats

if TYPE_CHECKING:
    from fusion.data import FusionData


class SeedInputs:
    """Per-step minibatch assembly for every seed: expert groups, δ, labels, teachers."""

    def __init__(self, datas: list[FusionData], members: list[list[int]]) -> None:
        self.datas = datas
        self.members = members
        self.shared = self.same_data(datas)
        self._bufs: dict[tuple[int, bool], list[torch.Tensor]] = {}
        self._stats: dict[int, list[torch.Tensor]] = {}
        # each group's δ columns (modality, expert), looked up once instead of per row read
        slots = [[datas[0].slot(k) for k in ks] for ks in members]
        device = datas[0].delta.device
        self._slots = [
            tuple(torch.tensor(c, dtype=torch.long, device=device) for c in zip(*sl, strict=True))
            for sl in slots
        ]
        for data in datas:  # each row's mean and 1/σ, once per data object (rows are data)
            if id(data) not in self._stats:
                self._stats[id(data)] = [self._group_stats(data, ks) for ks in members]

    @staticmethod
    def _group_stats(data: FusionData, ks: list[int]) -> torch.Tensor:
        """``(K_g, N, 2)``: :func:`row_stats` of each expert's standardised rows, those of a
        zero row where δ = 0 (what the gathered, zeroed row gives). The unmasked statistics
        are computed once per expert's rows and shared by every data object over them."""
        out = []
        for k in ks:
            st = data.x[k].per_row(row_stats)
            mi, ei = data.slot(k)
            masked = data.delta[:, mi, ei] <= 0
            if masked.any():
                zero = row_stats(torch.zeros(1, data.x[k].shape[1], device=st.device))
                st = torch.where(masked.to(st.device).unsqueeze(-1), zero, st)
            out.append(st)
        return torch.stack(out)

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
                torch.empty(s, len(ks), b, first.x[ks[0]].shape[1], device=first.delta.device)
                for ks in self.members
            ]
        return self._bufs[key]

    def groups(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """``idx (S, b)`` -> per group ``(S, K_g, b, D_g)`` (each seed its own rows)."""
        bufs = self._buffers(idx.shape[1], True)
        for s, data in enumerate(self.datas):
            self._gather(data, idx[s], [buf[s] for buf in bufs])
        return bufs

    def _gather(self, data: FusionData, idx: torch.Tensor, outs: list[torch.Tensor]) -> None:
        """Rows ``idx`` of every expert into ``outs`` (per group ``(K_g, b, D_g)``), zero where
        δ = 0: what :meth:`fusion.data.FusionData.rows` gives, with δ's rows gathered once for
        all experts (not once per expert), and only the rows where δ = 0 written over with
        zeros, with one call per group (not a masked pass over every row of every expert)."""
        avail = data.delta.index_select(0, idx.to(data.delta.device)) > 0  # (b, M, E)
        for out, ks, (mi, ei) in zip(outs, self.members, self._slots, strict=True):
            for j, k in enumerate(ks):
                data.x[k].gather(idx, out=out[j])
            gone = avail[:, mi, ei].logical_not_().t().reshape(-1)  # (K_g · b,): rows to zero
            out.view(-1, out.shape[-1]).index_fill_(0, gone.nonzero().squeeze(1), 0.0)

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
        bufs = [b[0] for b in self._buffers(idx.shape[0], False)]
        self._gather(self.datas[0], idx, bufs)
        return bufs

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
        tds = [d.teacher for d in self.datas[: idx.shape[0]]]  # (shared rows: idx (1, b))
        if any(t is None for t in tds):
            return None
        t = [
            torch.stack([td.rows(j, i) for td, i in zip(tds, idx, strict=True)])
            for j in range(len(tds[0].modalities))
        ]
        ok = torch.stack([td.ok.index_select(0, i) for td, i in zip(tds, idx, strict=True)])
        return t, ok


__all__ = ["SeedInputs"]
