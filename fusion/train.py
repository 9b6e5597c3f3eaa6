"""Training of one (dataset, method, protocol) job: every seed in one process (paper App. C).

AdamW (decoupled weight decay on weight matrices only; ``betas``, ``eps``), a separate router
learning rate (parameter groups), gradient-norm clipping, linear LR warm-up over
``warmup_epochs``, up to ``max_epochs``, early stopping on validation loss with ``patience``,
the best-validation state restored, bf16 / fp16 autocast on GPU (``amp``). Distillation
(:mod:`fusion.distill`) with λ ramped over the warm-up epochs. All numbers come from the
config's ``fusion:`` section (:class:`FusionHParams`).

Speed. The embeddings are loaded once per process (:func:`fusion.data.load_fusion_data_cached`)
and shared by every seed (and by every method trained in the process). With
``vectorize_seeds`` (default) the seeds are trained *together*: their parameters are stacked
along a leading seed axis and one step runs every seed's own minibatch through
``torch.func.vmap`` — S small problems become one S-times larger one, so the matrix products
are large enough to run near the machine's matmul speed. Each seed keeps its own
initialisation (seeded like a lone run), its own minibatch order, gradient clipping, early
stopping and best checkpoint. Dropout masks come from one random stream for the whole stack,
so a seed's numbers depend on which seeds were trained with it (the same seed list always
gives identical results; ``vectorize_seeds: false`` trains seeds one after another, each
independent of the others). The optimiser (fused multi-tensor AdamW) and the per-seed
gradient clipping work on the stacked tensors directly.

Outputs (docs/design.md §3.3), built in a temp folder beside ``out`` and renamed into place at the
end, so a killed job leaves nothing that looks finished::

    {out}/seed{k}/predictions.parquet  metrics.json  history.csv  model.safetensors  config.json
    {out}/summary.json                 (written last)

A method that cannot run here (OneLLM without its weights) writes only ``summary.json`` with
``"status": "unavailable"`` and the reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusion.data import FusionData, load_fusion_data_cached
from fusion.distill import DistillHeads, teacher_batch
from fusion.losses import kd_lambda, task_loss
from fusion.medmix import PROJECTIONS, FusionModel, row_stats
from fusion.metrics import (
    LABEL_METRICS,
    auroc_defined,
    bootstrap_ci,
    choose_thresholds,
    evaluate_split,
    macro_auroc,
    seed_mean_std,
)
from fusion.predict import predict_data
from fusion.protocols import apply_protocol, protocol_severity
from fusion.registry import (
    MethodPlan,
    ModelSpec,
    Predictions,
    build_model,
    method_class,
    resolve_method,
    save_model,
)
from fusion.run_status import unavailable_runs  # noqa: F401  (re-exported)
from medmix.config import dataset_paths
from medmix.io import atomic_path, fresh_tmp_dir, replace_dir
from medmix.methods import MethodError, MethodUnavailable, is_probe
from medmix.plan import method_inputs

log = logging.getLogger("medmix.fusion.train")


EVAL_SPLITS = ("val", "test", "external")
CI_SPLITS = ("test", "external")
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "task_loss", "kd_loss", "lambda_kd"]


@dataclass
class FusionHParams:
    """The config's ``fusion:`` section (defaults = the schema's defaults)."""

    d: int = 64
    adapter_bottleneck: int = 32
    dropout: float = 0.2
    projection: str = "paper"  # paper | linear: the expert encoder (ModelSpec.projection)
    lr: float = 1.0e-3
    router_lr: float = 5.0e-4
    weight_decay: float = 1.0e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    clip_grad_norm: float = 1.0
    warmup_epochs: int = 5
    max_epochs: int = 200
    patience: int = 10
    # the validation score that picks the best epoch and stops training: "loss" (the task
    # loss, as the paper) or "auroc" (macro AUROC, as the linear probe chooses C)
    early_stopping: str = "loss"
    batch_size: int = 128
    lambda_kd: float = 0.0
    rkd_gamma: float = 1.0
    # None, one number for every output, "auto" (train-split n_neg / n_pos per output), a
    # list (one per output) or a mapping {label: weight} (others 1)
    pos_weight: float | str | list[float] | dict[str, float] | None = None
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | none
    vectorize_seeds: bool = True
    # per_seed: each seed its own minibatch order (default); shared: every seed follows the
    # first seed's order — one gather and S-times wider products per step (faster), seeds then
    # differ only by initialisation and dropout
    batch_order: str = "per_seed"
    bootstrap: int = 1000  # bootstrap replicates for the test-set CIs (0: none)
    m3care_bank: int = 256
    adacomed_align: float = 0.1
    onellm_weights: str | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> FusionHParams:
        section = {k: v for k, v in (section or {}).items() if k not in NON_HPARAM_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"fusion: unknown key(s) {unknown}")
        hp = cls(**section)
        if hp.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"fusion.amp: {hp.amp!r} is not one of auto, bf16, fp16, none")
        if hp.projection not in PROJECTIONS:
            raise ValueError(f"fusion.projection: {hp.projection!r} is not one of {PROJECTIONS}")
        if hp.early_stopping not in ("loss", "auroc"):
            raise ValueError(f"fusion.early_stopping: {hp.early_stopping!r} is not loss or auroc")
        if hp.batch_order not in ("per_seed", "shared"):
            raise ValueError(f"fusion.batch_order: {hp.batch_order!r} is not per_seed or shared")
        if len(hp.betas) != 2:
            raise ValueError(f"fusion.betas: two numbers, got {hp.betas}")
        return hp

    def with_selection(
        self, path: str | os.PathLike, dataset: str, method: str
    ) -> tuple[FusionHParams, dict[str, Any]]:
        """These values with those chosen on val for (dataset, method) (:mod:`fusion.select`'s
        JSON at ``path``), and the run's ``selection`` entry (chosen values + path)."""
        record = json.loads(Path(path).read_text())
        if (record.get("dataset"), record.get("method")) != (dataset, method):
            raise ValueError(
                f"{path}: a selection for {record.get('dataset')} {record.get('method')}, "
                f"not {dataset} {method}"
            )
        chosen = dict(record["chosen"])
        hp = FusionHParams.from_config({**asdict(self), **chosen})
        return hp, {"chosen": chosen, "path": str(path)}


# keys of the config's fusion: section that are not hyper-parameters of one run
NON_HPARAM_KEYS = ("select",)


@dataclass
class SeedResult:
    seed: int
    model: FusionModel
    history: pd.DataFrame
    predictions: Predictions
    metrics: dict[str, Any]
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float


@dataclass
class RunSummary:
    out: Path
    method: str
    protocol: str
    seeds: list[int]
    per_seed: dict[int, dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    seconds: float
    status: str = "ok"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_spec(data: FusionData, plan: MethodPlan, hp: FusionHParams) -> ModelSpec:
    extra: dict[str, Any] = {}
    if plan.base == "m3care":
        extra["m3care_bank"] = int(hp.m3care_bank)
    if plan.base == "adacomed":
        extra["adacomed_align"] = float(hp.adacomed_align)
    return ModelSpec(
        method=plan.base,
        modalities=list(data.modalities),
        experts={m: list(data.experts[m]) for m in data.modalities},
        dims={m: dict(data.dims[m]) for m in data.modalities},
        task_type=data.task_type,
        label_names=list(data.label_names),
        n_outputs=data.n_outputs,
        class_names=data.class_names,
        d=hp.d,
        adapter_bottleneck=hp.adapter_bottleneck,
        dropout=hp.dropout,
        projection=hp.projection,
        run_method=plan.name,
        extra=extra,
    )


def prior_logits(data: FusionData) -> torch.Tensor:
    """Train-split label prevalence as logits (the prior's starting value)."""
    y = data.y[data.split_index("train")].cpu()
    if data.task_type == "multiclass":
        counts = torch.bincount(y[y >= 0], minlength=data.n_outputs).double() + 1.0
        return torch.log(counts / counts.sum()).float()
    known = torch.isfinite(y)
    pos = torch.where(known, y, torch.zeros_like(y)).sum(0).double()
    n = known.sum(0).double()
    p = ((pos + 0.5) / (n + 1.0)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p)).float()


def resolve_pos_weight(value: Any, data: FusionData) -> torch.Tensor | None:
    """The ``pos_weight`` option as a (C,) tensor (None: unweighted; multiclass: ignored)."""
    if value is None or data.task_type == "multiclass":
        if value is not None:
            log.warning("pos_weight is ignored for a multiclass task")
        return None
    c = data.n_outputs
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"fusion.pos_weight: {value!r} (a number, a list, a mapping or auto)")
        y = data.y[data.split_index("train")].cpu()
        known = torch.isfinite(y)
        pos = (torch.where(known, y, torch.zeros_like(y)) > 0.5).sum(0).double()
        neg = known.sum(0).double() - pos
        w = (neg.clamp_min(1.0) / pos.clamp_min(1.0)).float()
    elif isinstance(value, dict):
        unknown = sorted(set(value) - set(data.label_names))
        if unknown:
            raise ValueError(f"fusion.pos_weight: unknown label(s) {unknown}")
        w = torch.tensor([float(value.get(n, 1.0)) for n in data.label_names])
    elif isinstance(value, list | tuple):
        if len(value) != c:
            raise ValueError(f"fusion.pos_weight: {len(value)} weights for {c} outputs")
        w = torch.tensor([float(v) for v in value])
    else:
        w = torch.full((c,), float(value))
    if not torch.all(w > 0):
        raise ValueError(f"fusion.pos_weight must be positive, got {w.tolist()}")
    return w


# -- optimiser groups and the single-model AdamW -------------------------------------------


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
            grads = [_dense(p.grad) for p in params]
            m = [_dense(s["exp_avg"]) for s in states]
            v = [_dense(s["exp_avg_sq"]) for s in states]
            params = [_dense(p) for p in params]
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


def _dense(t: torch.Tensor) -> torch.Tensor:
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


# -- the stacked, vectorised trainer ----------------------------------------------------------


class TrainModule(nn.Module):
    """What one seed trains: the fusion model and (training only) its distillation heads."""

    def __init__(
        self,
        model: FusionModel,
        heads: DistillHeads | None,
        task_type: str,
        pos_weight: torch.Tensor | None,
        rkd_gamma: float,
    ) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.task_type = task_type
        self.pos_weight = pos_weight
        self.rkd_gamma = float(rkd_gamma)

    def forward(
        self, mode: str, groups, delta, y=None, t=None, t_ok=None, stats=None, lam: float = 0.0
    ):
        if mode == "reference":
            return self.model.reference_buffers(groups, delta)
        out = self.model.forward_groups(groups, delta, stats)
        if mode == "logits":
            return out.logits.float()
        pw = self.pos_weight.to(out.logits.device) if self.pos_weight is not None else None
        lt = task_loss(out.logits.float(), y, self.task_type, pw)
        if mode == "eval":
            return lt
        kd = lt.new_zeros(())
        if self.heads is not None and t is not None and out.z is not None:
            tb = teacher_batch(t, t_ok, delta, self.heads.modality_index)
            kd = self.heads(out.z, tb, self.rkd_gamma).total
        total = lt + lam * kd if lam > 0 else lt
        if out.aux_loss is not None:
            total = total + out.aux_loss
        return total, lt, kd


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
                ):  # (S, K, ...) whose memory is (K, S, ...): see _SharedInputProduct
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
            else torch.linalg.vector_norm(_dense(g), dim=tuple(range(2, g.ndim)) or None).norm(
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


def _amp(hp: FusionHParams, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or hp.amp == "none":
        return None
    return torch.float16 if hp.amp == "fp16" else torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None = torch.bfloat16):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class _Inputs:
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


class SeedTrainer:
    """Trains the seeds of one (data, method) together (or one seed: ``len(seeds) == 1``)."""

    def __init__(
        self,
        datas: list[FusionData],
        plan: MethodPlan,
        hp: FusionHParams,
        seeds: list[int],
        device: torch.device,
        order_seed: int | None = None,
    ) -> None:
        self.datas, self.plan, self.hp, self.seeds, self.device = datas, plan, hp, seeds, device
        # the seed whose generator orders every seed's minibatches (batch_order: shared)
        self.order_seed = order_seed if order_seed is not None else seeds[0]
        data = datas[0]
        self.spec = build_spec(data, plan, hp)
        cls = method_class(plan.base)
        self.pos_weight = resolve_pos_weight(hp.pos_weight, data)
        self.distill = bool(
            hp.lambda_kd > 0 and cls.supports_distillation and data.teacher is not None
        )
        if hp.lambda_kd > 0 and cls.supports_distillation and data.teacher is None:
            log.warning(
                "lambda_kd > 0 but no teacher cache for %s: no distillation", data.modalities
            )
        prior = prior_logits(data)
        self.models: list[FusionModel] = []
        modules: list[TrainModule] = []
        for seed in seeds:
            seed_everything(seed)
            model = build_model(self.spec)
            model.set_prior(prior)
            heads = None
            if self.distill:
                t = data.teacher
                heads = DistillHeads(
                    [t.dims[m] for m in t.modalities],
                    [data.modalities.index(m) for m in t.modalities],
                    hp.d,
                )
            self.models.append(model)
            modules.append(TrainModule(model, heads, data.task_type, self.pos_weight, hp.rkd_gamma))
        router_ids = {id(p) for p in modules[0].model.router_parameters()}
        groups = param_group_names(modules[0], router_ids)
        self.vectorized = len(seeds) > 1
        # the same rows for every seed and the same data behind them: gather once, and let the
        # input products read one minibatch for all seeds
        self.shared_batches = (
            hp.batch_order == "shared"
            and self.vectorized
            and _Inputs.same_data(datas)
            and all(d.y is datas[0].y and d.teacher is datas[0].teacher for d in datas)
        )
        inner = frozenset(
            n for names in groups.values() for n in names if n.endswith(".w_in")
        ) if self.shared_batches else frozenset()  # fmt: skip
        self.stack = SeedStack(modules, groups, device, seed_inner=inner)
        self.skeleton = modules[0].to(device)
        self.opt = StackAdamW(self.stack, hp)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        if self.vectorized:  # one dropout stream for the whole stack, from the seed list
            seed_everything(int(np.random.SeedSequence(seeds).generate_state(1)[0]) % 2**31)
        self.inputs = _Inputs(datas, self.skeleton.model.encoder.group_members)
        self.amp = _amp(hp, device)
        self.scale = 2.0**16 if self.amp == torch.float16 else 1.0
        self.good_steps = 0

    # -- functional calls over the seed axis --------------------------------------------------

    def _call(self, mode: str, per_seed_inputs: bool, *args, lam: float = 0.0):
        """Run ``TrainModule.forward(mode, *args)`` for every seed (vmap, or the lone seed)."""
        params, buffers = self.stack.params, self.stack.buffers
        module = self.skeleton

        def f(p, b, *a):
            return torch.func.functional_call(module, (p, b), (mode, *a), {"lam": lam})

        with _autocast(self.device, self.amp):
            if not self.vectorized:
                p1 = {k: v.squeeze(0) for k, v in params.items()}
                b1 = {k: v.squeeze(0) for k, v in buffers.items()}
                a1 = [_squeeze(a) if per_seed_inputs else a for a in args]
                return _unsqueeze(f(p1, b1, *a1))
            dims = (0, 0, *[_dims(a, per_seed_inputs) for a in args])
            return torch.func.vmap(f, in_dims=dims, randomness="different")(params, buffers, *args)

    @torch.no_grad()
    def refresh_reference(self) -> None:
        """Recompute reference buffers (M3Care's bank) from fixed training samples per seed."""
        if not getattr(self.skeleton.model, "uses_reference", False):
            return
        if not hasattr(self, "_ref_idx"):
            size = int(self.spec.extra.get("m3care_bank", 256))
            train = self.datas[0].split_index("train")
            rows = []
            for seed in self.seeds:
                g = torch.Generator().manual_seed(seed + 104729)
                perm = torch.randperm(len(train), generator=g)[: min(size, len(train))]
                rows.append(train[perm.to(train.device)])
            self._ref_idx = torch.stack(rows)
        idx = self._ref_idx
        self.skeleton.eval()
        new = self._call("reference", True, self.inputs.groups(idx), self.inputs.delta(idx))
        for name, value in new.items():
            self.stack.buffers[f"model.{name}"].copy_(value.to(self.stack.buffers[f"model.{name}"]))

    @torch.no_grad()
    def _eval_chunks(
        self, idx: torch.Tensor, mode: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Eval-mode ``mode`` outputs ("eval": task loss, "logits") for every seed, over rows
        ``idx`` in chunks sized to the input width: yields (chunk rows, per-seed output)."""
        s = len(self.seeds)
        self.skeleton.eval()
        data = self.datas[0]
        width = sum(x.shape[1] for x in data.x)
        chunk = max(64, min(8192, int(32e6 // max(1, width * (1 if self.inputs.shared else s)))))
        with_y = mode == "eval"
        for start in range(0, len(idx), chunk):
            b = idx[start : start + chunk]
            if self.inputs.shared:
                y = (data.y.index_select(0, b),) if with_y else ()
                args = (self.inputs.shared_groups(b), data.delta.index_select(0, b), *y)
                yield b, self._call(mode, False, *args)
            else:
                bb = b.unsqueeze(0).expand(s, -1)
                y = (self.inputs.y(bb),) if with_y else ()
                yield b, self._call(mode, True, self.inputs.groups(bb), self.inputs.delta(bb), *y)

    @torch.no_grad()
    def val_losses(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-seed task loss over rows ``idx`` in eval mode (weighted by known labels)."""
        s = len(self.seeds)
        if len(idx) == 0:
            return torch.full((s,), float("nan"))
        data = self.datas[0]
        total = torch.zeros(s, dtype=torch.float64)
        weight = 0.0
        for b, loss in self._eval_chunks(idx, "eval"):
            y = data.y.index_select(0, b)
            w = float((y >= 0).sum() if data.task_type == "multiclass" else torch.isfinite(y).sum())
            total += loss.detach().double().cpu().view(s) * w
            weight += w
        return (total / weight).float() if weight else torch.full((s,), float("nan"))

    @torch.no_grad()
    def val_auroc(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-seed macro AUROC over rows ``idx`` in eval mode (``early_stopping: auroc``)."""
        s = len(self.seeds)
        data = self.datas[0]
        parts = [
            out.float().cpu().view(s, len(b), -1) for b, out in self._eval_chunks(idx, "logits")
        ]
        logits = torch.cat(parts, dim=1).numpy()
        y = data.y.index_select(0, idx).cpu().numpy()
        return torch.tensor([macro_auroc(y, logits[k], data.task_type) for k in range(s)])

    def _step(self, idx: torch.Tensor, lam: float) -> tuple[torch.Tensor, ...]:
        inp = self.inputs
        if self.shared_batches:  # one minibatch for every seed: gathered once, no seed axis
            i0 = idx[0]
            d0 = self.datas[0]
            teacher = inp.teacher(i0.unsqueeze(0)) if self.distill else None
            t, t_ok = (
                ([x[0] for x in teacher[0]], teacher[1][0]) if teacher is not None else (None, None)
            )
            args = (
                inp.shared_groups(i0),
                d0.delta.index_select(0, i0),
                d0.y.index_select(0, i0),
                t,
                t_ok,
                inp.shared_stats(i0),
            )
            total, task, kd = self._call("train", False, *args, lam=lam)
        else:
            groups, delta, y = inp.groups(idx), inp.delta(idx), inp.y(idx)
            teacher = inp.teacher(idx) if self.distill else None
            t, t_ok = teacher if teacher is not None else (None, None)
            args = (groups, delta, y, t, t_ok, inp.stats(idx))
            total, task, kd = self._call("train", True, *args, lam=lam)
        self.stack.zero_grad()
        (total.float().sum() * self.scale).backward()
        if self.amp == torch.float16:  # dynamic loss scaling
            finite = all(bool(torch.isfinite(g).all()) for g in self.stack.grads())
            if not finite:
                self.scale /= 2.0
                self.good_steps = 0
                return total.detach(), task.detach(), kd.detach()
            for g in self.stack.grads():
                g.div_(self.scale)
            self.good_steps += 1
            if self.good_steps % 2000 == 0:
                self.scale *= 2.0
        self.stack.clip_(self.hp.clip_grad_norm)
        self.opt.step()
        return total.detach(), task.detach(), kd.detach()

    def train(self) -> list[dict[str, Any]]:
        """The training loop; returns per seed: history rows, best epoch and loss, epochs."""
        hp, device, data = self.hp, self.device, self.datas[0]
        s = len(self.seeds)
        train_idx = data.split_index("train")
        val_idx = data.split_index("val")
        if len(train_idx) == 0:
            raise ValueError(f"{data.dataset}: no training samples")
        if len(val_idx) == 0:
            log.warning(
                "%s: no validation split; early stopping on the training loss", data.dataset
            )
        n_train = len(train_idx)
        bs = max(1, min(hp.batch_size, n_train))
        steps_per_epoch = math.ceil(n_train / bs)
        warmup_steps = hp.warmup_epochs * steps_per_epoch
        if hp.batch_order == "shared":  # every seed follows the order seed's permutation
            gens = [torch.Generator().manual_seed(self.order_seed)]
        else:
            gens = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        history: list[list[dict[str, float]]] = [[] for _ in range(s)]
        best_loss = [math.inf] * s
        best_score = [math.inf] * s
        by_auroc = hp.early_stopping == "auroc" and auroc_defined(
            data.y[val_idx].cpu().numpy(), data.task_type
        )
        if hp.early_stopping == "auroc" and not by_auroc:
            log.warning(
                "%s: no validation label has both classes; early stopping on the val loss",
                data.dataset,
            )
        best_epoch = [-1] * s
        bad = [0] * s
        active = [True] * s
        step = 0
        self.refresh_reference()
        for epoch in range(hp.max_epochs):
            self.skeleton.train()
            lam = kd_lambda(epoch, hp.warmup_epochs, hp.lambda_kd) if self.distill else 0.0
            perms = torch.stack(
                [train_idx[torch.randperm(n_train, generator=g).to(train_idx.device)] for g in gens]
            ).expand(s, -1)
            sums = torch.zeros(3, s, dtype=torch.float64, device=device)
            factor = 1.0
            for start in range(0, n_train, bs):
                idx = perms[:, start : start + bs]
                factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
                for g, lr0 in zip(self.opt.param_groups, self.base_lrs, strict=True):
                    g["lr"] = lr0 * factor
                total, task, kd = self._step(idx, lam)
                sums += torch.stack([total, task, kd]).view(3, s).double() * idx.shape[1]
                step += 1
            train_loss, task_l, kd_l = (sums / n_train).cpu().tolist()
            self.refresh_reference()
            val = self.val_losses(val_idx) if len(val_idx) else torch.tensor(train_loss)
            # the score to minimise: the loss, or minus the val AUROC (the loss without val)
            score = -self.val_auroc(val_idx) if by_auroc else val
            for k in range(s):
                if not active[k]:
                    continue
                v = float(val[k])
                history[k].append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss[k],
                        "val_loss": v,
                        "lr": hp.lr * factor,
                        "task_loss": task_l[k],
                        "kd_loss": kd_l[k],
                        "lambda_kd": lam,
                    }  # fmt: skip
                )
                sc = float(score[k])
                if math.isfinite(sc) and sc < best_score[k]:
                    best_score[k], best_loss[k], best_epoch[k], bad[k] = sc, v, epoch, 0
                    self.stack.save_best(k)
                else:
                    bad[k] += 1
                    if bad[k] >= hp.patience:
                        active[k] = False
            if not any(active):
                break
        self.stack.restore_best()
        for k, model in enumerate(self.models):
            model.load_state_dict(self.stack.state_dict_of(k, "model."))
            model.to(device).eval()
        return [
            {"history": history[k], "best_epoch": best_epoch[k], "best_val_loss": best_loss[k]}
            for k in range(s)
        ]


def _dims(a: Any, per_seed: bool):
    if a is None:
        return None
    if isinstance(a, list | tuple):
        return type(a)(0 if per_seed else None for _ in a)
    return 0 if per_seed else None


def _squeeze(a: Any):
    if isinstance(a, list | tuple):
        return type(a)(x.squeeze(0) for x in a)
    return a.squeeze(0) if isinstance(a, torch.Tensor) else a


def _unsqueeze(out: Any):
    if isinstance(out, dict):
        return {k: v.unsqueeze(0) for k, v in out.items()}
    if isinstance(out, tuple):
        return tuple(o.unsqueeze(0) for o in out)
    return out.unsqueeze(0)


# -- predictions, metrics, one run -------------------------------------------------------------


@torch.no_grad()
def split_loss(
    model: FusionModel, data: FusionData, idx: torch.Tensor, hp: FusionHParams, chunk: int = 8192
) -> float:
    """Task loss over rows ``idx`` in eval mode (weighted by known labels per chunk)."""
    model.eval()
    device = model.prior.device
    pw = resolve_pos_weight(hp.pos_weight, data)
    total, weight = 0.0, 0.0
    for s in range(0, len(idx), chunk):
        b = idx[s : s + chunk]
        xs, delta = data.batch(b)
        out = model([x.to(device) for x in xs], delta.to(device))
        y = data.y[b].to(device)
        w = float((y >= 0).sum() if data.task_type == "multiclass" else torch.isfinite(y).sum())
        total += float(task_loss(out.logits.float(), y, data.task_type, pw)) * w
        weight += w
    return total / weight if weight else float("nan")


def predict(model: FusionModel, data: FusionData, batch_size: int = 8192) -> Predictions:
    """Eval-mode outputs for every sample of ``data`` (see :func:`fusion.predict.predict_data`)."""
    return predict_data(model, data, batch_size=batch_size)


def predictions_frame(data: FusionData, spec: ModelSpec, pred: Predictions) -> pd.DataFrame:
    cols: dict[str, Any] = {
        "sample_id": data.sample_ids.astype(str),
        "split": data.split.astype(str),
    }
    for j, name in enumerate(spec.output_names):
        cols[f"prob_{name}"] = pred.probs[:, j].astype(np.float32)
    if pred.alpha is not None:
        for mi, m in enumerate(spec.modalities):
            for ei, e in enumerate(spec.experts[m]):
                cols[f"alpha_{m}_{e}"] = np.nan_to_num(pred.alpha[:, mi, ei]).astype(np.float32)
    if pred.beta is not None:
        for mi, m in enumerate(spec.modalities):
            cols[f"beta_{m}"] = np.nan_to_num(pred.beta[:, mi]).astype(np.float32)
    return pd.DataFrame(cols)


def compute_metrics(
    data: FusionData, spec: ModelSpec, pred: Predictions, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Thresholds chosen on val, metrics of val / test / external (+ bootstrap CIs)."""
    y = data.y.cpu().numpy()
    names = spec.output_names
    no_mod = ~data.modality_mask.any(dim=1).cpu().numpy()
    thresholds: dict[str, float] = {}
    if data.task_type != "multiclass":
        val = data.split == "val"
        thresholds = (
            choose_thresholds(y[val], pred.probs[val], names)
            if val.any()
            else {n: 0.5 for n in names}
        )
    splits = {}
    for s in EVAL_SPLITS:
        rows = data.split == s
        if rows.any():
            sm = evaluate_split(
                y[rows],
                pred.probs[rows],
                data.task_type,
                names,
                thresholds,
                int(no_mod[rows].sum()),
            )
            if s in CI_SPLITS and n_boot > 0:
                sm.ci = bootstrap_ci(
                    y[rows], pred.probs[rows], data.task_type, names, thresholds,
                    n_boot=n_boot, seed=seed, skip=sm.skipped_labels,
                )  # fmt: skip
            splits[s] = sm.to_dict()
    return {
        "task_type": data.task_type,
        "labels": names,
        "thresholds": thresholds,
        "splits": splits,
    }


def train_seeds(
    datas: list[FusionData],
    plan: MethodPlan,
    hp: FusionHParams,
    seeds: list[int],
    device: str | torch.device = "cpu",
    order_seed: int | None = None,
) -> list[SeedResult]:
    """Train ``seeds`` (``datas[k]``: the data of seed k, already masked by its protocol) and
    evaluate them; vectorised over the seeds unless ``hp.vectorize_seeds`` is false."""
    device = torch.device(device)
    if len(datas) != len(seeds):
        raise ValueError("one data object per seed")
    if not hp.vectorize_seeds and len(seeds) > 1:
        first = order_seed if order_seed is not None else seeds[0]
        return [
            r
            for d, s in zip(datas, seeds, strict=True)
            for r in train_seeds([d], plan, hp, [s], device, order_seed=first)
        ]
    t0 = time.perf_counter()
    datas = [d.to(device) for d in datas]
    trainer = SeedTrainer(datas, plan, hp, seeds, device, order_seed=order_seed)
    outcomes = trainer.train()
    per_seed_seconds = (time.perf_counter() - t0) / len(seeds)
    results = []
    for k, seed in enumerate(seeds):
        t1 = time.perf_counter()
        model = trainer.models[k]
        pred = predict_data(model, datas[k])
        metrics = compute_metrics(datas[k], trainer.spec, pred, n_boot=hp.bootstrap, seed=seed)
        if trainer.distill:
            metrics["distillation"] = {"teachers": list(datas[k].teacher.modalities)}
        o = outcomes[k]
        results.append(
            SeedResult(
                seed=seed,
                model=model,
                history=pd.DataFrame(o["history"], columns=HISTORY_COLUMNS),
                predictions=pred,
                metrics=metrics,
                epochs_run=len(o["history"]),
                best_epoch=o["best_epoch"],
                best_val_loss=o["best_val_loss"],
                seconds=per_seed_seconds + time.perf_counter() - t1,
            )
        )
    return results


def train_seed(
    data: FusionData,
    plan: MethodPlan,
    hp: FusionHParams,
    seed: int,
    device: str | torch.device = "cpu",
) -> SeedResult:
    """Train one seed on ``data`` (already masked by its protocol) and evaluate it."""
    return train_seeds([data], plan, hp, [seed], device)[0]


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)


def write_seed(result: SeedResult, data: FusionData, directory: Path, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    spec = result.model.spec
    predictions_frame(data, spec, result.predictions).to_parquet(
        directory / "predictions.parquet", index=False
    )
    result.history.to_csv(directory / "history.csv", index=False)
    meta = {
        **info,
        "seed": result.seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss if math.isfinite(result.best_val_loss) else None,
        "seconds": round(result.seconds, 3),
        "n_params": sum(p.numel() for p in result.model.parameters()),
    }
    (directory / "metrics.json").write_text(_json({**meta, **result.metrics}))
    save_model(directory, result.model, data.standardization, info={**info, "seed": result.seed})


def _write_masks(
    data: FusionData, protocol: str, seed: int, directory: Path, severity: Any = None
) -> None:
    if protocol == "full":
        return
    try:
        from fusion.protocols import write_masks
    except ImportError:  # pragma: no cover - protocols without mask files
        return
    write_masks(data, protocol, seed, directory, severity=severity)


def _unavailable(
    out: Path, info: dict[str, Any], seeds: list[int], reason: str, kind: str, t0: float
) -> RunSummary:
    tmp = fresh_tmp_dir(out)
    summary = {
        **info,
        "status": "unavailable",
        "reason": reason,
        "unavailable_kind": kind,
        "split": "test",
        "seeds": seeds,
        "per_seed": {},
        "mean": {},
        "std": {},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (tmp / "summary.json").write_text(_json(summary))
    replace_dir(tmp, out)
    log.error(
        "%s %s %s: unavailable — %s", info["dataset"], info["method"], info["protocol"], reason
    )
    return RunSummary(out, info["method"], info["protocol"], seeds, {}, {}, {}, 0.0, "unavailable")


def run_training(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    protocol: str,
    out: str | os.PathLike,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
    selection: str | os.PathLike | None = None,
) -> RunSummary:
    """Train every seed of (dataset, method, protocol) and write the run folder ``out``.

    ``selection``: the JSON of :mod:`fusion.select` for (dataset, method); its chosen values
    replace the config's, and the run records them (``selection`` in summary.json and
    every seed's metrics.json).
    """
    if is_probe(method):  # scikit-learn logistic regression, same run layout (fusion.probe)
        if selection is not None:
            raise ValueError(f"{method}: the linear probe selects its own settings on val")
        from fusion.probe import run_probe

        return run_probe(cfg, dataset, method, protocol, out, seeds, threads, device)
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    hp = FusionHParams.from_config(cfg.get("fusion"))
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.get("seeds", [0]))]
    out = Path(out)
    info: dict[str, Any] = {"dataset": dataset, "method": method, "protocol": protocol}
    if selection is not None:
        hp, info["selection"] = hp.with_selection(selection, dataset, method)
        log.info("%s %s: hyper-parameters chosen on val %s", dataset, method, info["selection"])
    info["hparams"] = asdict(hp)
    # summary.json names the hyper-parameters only when they were chosen on val
    short = {k: v for k, v in info.items() if k != "hparams" or selection is not None}
    inputs = method_inputs(cfg, dataset, method)
    if inputs.unavailable:
        return _unavailable(
            out, short, seeds, inputs.unavailable, inputs.unavailable_kind or "inputs missing", t0
        )
    dcfg = cfg["datasets"][dataset]
    plan = resolve_method(method, list(dcfg["modalities"]), dcfg.get("teachers") or {})
    missing = [str(p) for ev in inputs.caches.values() for p in ev.values() if not Path(p).exists()]
    if missing and getattr(method_class(plan.base), "requires_weights", False):
        why = f"embedding caches missing: {missing}"
        return _unavailable(out, short, seeds, why, "weights absent", t0)
    paths = dataset_paths(cfg, dataset)
    data = load_fusion_data_cached(paths.manifest, inputs.caches, inputs.teachers or None)
    log.info(
        "%s %s %s: %d samples, modalities %s, task %s (%d outputs), seeds %s%s",
        dataset, method, protocol, data.n, data.modalities, data.task_type, data.n_outputs, seeds,
        f", teachers {data.teacher.modalities}" if data.teacher is not None else "",
    )  # fmt: skip
    tmp = fresh_tmp_dir(out)
    per_seed: dict[int, dict[str, float]] = {}
    extra: dict[int, dict[str, Any]] = {}
    try:
        severity = protocol_severity(cfg, dataset, data, protocol)  # mnar-severity: a column
        sdatas = [apply_protocol(data, protocol, seed, severity=severity) for seed in seeds]
        results = train_seeds(sdatas, plan, hp, seeds, device=device)
        for res, sdata in zip(results, sdatas, strict=True):
            seed = res.seed
            write_seed(res, sdata, tmp / f"seed{seed}", info)
            _write_masks(data, protocol, seed, tmp / f"seed{seed}", severity)
            test = res.metrics["splits"].get("test", {})
            per_seed[seed] = dict(test.get("macro", {}))
            extra[seed] = {
                "epochs_run": res.epochs_run,
                "best_epoch": res.best_epoch,
                "skipped_labels": test.get("skipped_labels", []),
            }
            log.info(
                "seed %d: %d epochs (best %d), best val loss %.4f, test AUROC %s, %.1fs",
                seed, res.epochs_run, res.best_epoch, res.best_val_loss,
                f"{per_seed[seed]['auroc']:.3f}" if "auroc" in per_seed[seed] else "n/a", res.seconds,
            )  # fmt: skip
        mean, std = seed_mean_std(per_seed)
        seconds = time.perf_counter() - t0
        summary = {
            **short,
            "status": "ok",
            "split": "test",
            "seeds": seeds,
            "per_seed": {str(s): {**per_seed[s], **extra[s]} for s in seeds},
            "mean": mean,
            "std": std,
            "std_ddof": 1,
            "seconds": round(seconds, 3),
        }
        (tmp / "summary.json").write_text(_json(summary))  # last file of the run
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    auroc = f"{mean['auroc']:.3f}±{std['auroc']:.3f}" if "auroc" in mean else "n/a"
    log.info(
        "%s %s %s: test AUROC %s over %d seed(s), %.1fs -> %s",
        dataset, method, protocol, auroc, len(seeds), seconds, out,
    )  # fmt: skip
    return RunSummary(out, method, protocol, seeds, per_seed, mean, std, seconds)


METRIC_COLUMNS = ["dataset", "protocol", "method", "seed", "split", "task", "metric", "value"]


def collect_metrics(runs_root: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """Every finished ``{runs_root}/{protocol}/{method}/seed*/metrics.json`` as a long table.

    Besides the metrics, bootstrap intervals appear as ``{metric}_ci_low`` / ``_ci_high``
    rows (test / external splits). Runs marked unavailable have no seed folders: no rows.
    """
    rows = []
    runs_root = Path(runs_root)
    for path in sorted(runs_root.glob("*/*/seed*/metrics.json")):
        seed_dir, method_dir = path.parent, path.parent.parent
        protocol_dir = method_dir.parent
        if any(p.name.startswith(".") for p in (seed_dir, method_dir, protocol_dir)):
            continue
        if not (method_dir / "summary.json").exists():
            log.warning("%s: run without summary.json skipped", method_dir)
            continue
        m = json.loads(path.read_text())
        seed = int(m.get("seed", seed_dir.name.removeprefix("seed")))
        for split, sm in m.get("splits", {}).items():
            key = (dataset, protocol_dir.name, method_dir.name, seed, split)
            for metric, value in sm.get("macro", {}).items():
                rows.append((*key, "macro", metric, float(value)))
            for task, vals in sm.get("per_label", {}).items():
                rows.extend(
                    (*key, task, metric, float(vals[metric]))
                    for metric in LABEL_METRICS
                    if metric in vals
                )
            ci = sm.get("ci") or {}
            for task, entry in [("macro", ci.get("macro", {}))] + list(
                (ci.get("per_label") or {}).items()
            ):
                for metric, (lo, hi) in entry.items():
                    rows.append((*key, task, f"{metric}_ci_low", float(lo)))
                    rows.append((*key, task, f"{metric}_ci_high", float(hi)))
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return df.astype({"seed": "int64", "value": "float64"})


def write_metrics_table(
    runs_root: str | os.PathLike, dataset: str, out: str | os.PathLike
) -> pd.DataFrame:
    df = collect_metrics(runs_root, dataset)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    return df


__all__ = [
    "AdamW",
    "FusionHParams",
    "MethodError",
    "MethodUnavailable",
    "RunSummary",
    "SeedResult",
    "collect_metrics",
    "compute_metrics",
    "make_optimizer",
    "predictions_frame",
    "run_training",
    "split_loss",
    "train_seed",
    "train_seeds",
    "write_metrics_table",
]
