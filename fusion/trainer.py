"""The training loop of one (data, method): every seed of a job, trained together.

AdamW (decoupled weight decay on weight matrices only; ``betas``, ``eps``), a separate router
learning rate (parameter groups), gradient-norm clipping, linear LR warm-up over
``warmup_epochs``, up to ``max_epochs``, early stopping on validation loss with ``patience``,
the best-validation state restored, bf16 / fp16 autocast on GPU (``amp``). Distillation
(:mod:`fusion.distill`) with λ ramped over the warm-up epochs. All numbers come from the
config's ``fusion:`` section (:class:`medmix.hparams.FusionHParams`).

Speed. With ``vectorize_seeds`` (default) the seeds are trained *together*: their parameters
are stacked along a leading seed axis (:mod:`fusion.seed_stack`) and one step runs every seed's
own minibatch through ``torch.func.vmap`` — S small problems become one S-times larger one, so
the matrix products are large enough to run near the machine's matmul speed. Each seed keeps
its own initialisation (seeded like a lone run), its own minibatch order, gradient clipping,
early stopping and best checkpoint. Dropout masks come from one random stream for the whole
stack, so a seed's numbers depend on which seeds were trained with it (the same seed list
always gives identical results; ``vectorize_seeds: false`` trains seeds one after another,
each independent of the others). In a long run on the CPU the vectorised step is recorded
once per batch shape (:class:`fusion.seed_stack.StepReplay`) and replayed: the same
operations, without the per-operation cost of ``vmap`` and the autograd engine.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from fusion.data import FusionData
from fusion.distill import DistillHeads, teacher_batch
from fusion.losses import kd_lambda, task_loss
from fusion.medmix import FusionModel
from fusion.metrics import auroc_defined, macro_auroc
from fusion.optim import param_group_names
from fusion.registry import MethodPlan, ModelSpec, build_model, method_class
from fusion.seed_inputs import SeedInputs
from fusion.seed_stack import SeedStack, StackAdamW, StepReplay
from fusion.train_checks import TrainingError, check_labels
from medmix.hparams import FusionHParams

log = logging.getLogger("medmix.fusion.train")


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
    return ModelSpec.of_data(
        data,
        plan.base,
        plan.name,
        d=hp.d,
        adapter_bottleneck=hp.adapter_bottleneck,
        dropout=hp.dropout,
        projection=hp.projection,
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


def _amp(hp: FusionHParams, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or hp.amp == "none":
        return None
    return torch.float16 if hp.amp == "fp16" else torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None = torch.bfloat16):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class SeedTrainer:
    """Trains the seeds of one (data, method) together (or one seed: ``len(seeds) == 1``)."""

    # vectorised training steps on the CPU replayed from their recorded operations
    # (:class:`fusion.seed_stack.StepReplay`, bit-identical; False: ``vmap`` every step), in
    # a training run of at least ``replay_min_steps`` planned steps: the first recording
    # imports ``torch._inductor``'s config (about 1 s CPU) and each (one per batch size and λ)
    # costs 0.5–1.5 s, what some hundreds of replayed steps save (early stopping ends most runs
    # well before ``max_epochs``)
    replay_steps = True
    replay_min_steps = 5000

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
            and SeedInputs.same_data(datas)
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
        self.inputs = SeedInputs(datas, self.skeleton.model.encoder.group_members)
        # training steps replayed from their recorded operations (vectorised, CPU, no autocast)
        self.replay = (
            StepReplay(self._train_call)
            if self.replay_steps and self.vectorized and device.type == "cpu"
            else None
        )
        self.replaying = self.replay is not None  # train() decides from its number of steps
        self.amp = _amp(hp, device)
        self.scale = 2.0**16 if self.amp == torch.float16 else 1.0
        self.good_steps = 0
        self.warnings: list[str] = []  # the label checks' findings (fusion.train_checks)

    # -- functional calls over the seed axis --------------------------------------------------

    def _train_call(self, params, buffers, per_seed_inputs: bool, lam: float, training, *args):
        """``TrainModule.forward("train", *args)`` of every seed through ``vmap`` (what
        :meth:`_call` runs; ``training``: the modules' modes, part of the replay's key)."""
        module = self.skeleton

        def f(p, b, *a):
            return torch.func.functional_call(module, (p, b), ("train", *a), {"lam": lam})

        dims = (0, 0, *[_dims(a, per_seed_inputs) for a in args])
        return torch.func.vmap(f, in_dims=dims, randomness="different")(params, buffers, *args)

    def _call(self, mode: str, per_seed_inputs: bool, *args, lam: float = 0.0):
        """Run ``TrainModule.forward(mode, *args)`` for every seed (vmap, or the lone seed)."""
        params, buffers = self.stack.params, self.stack.buffers
        module = self.skeleton
        if mode == "train" and self.replaying and self.amp is None:
            training = tuple(m.training for m in module.modules())
            return self.replay(params, buffers, per_seed_inputs, lam, training, *args)

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

    def _check_finite(
        self, epoch: int, active: list[bool], losses: dict[str, list[float]], total: list[float]
    ) -> None:
        """Stop the run when an active seed's task, distillation or validation loss, or its
        weights, became NaN / inf: the early stopping would otherwise keep an earlier (or the
        initial) state as "best". A non-finite *total* with all of those finite is the value of
        an auxiliary term whose gradient is finite (AdaCoMed's alignment with a sample lacking
        one branch): logged, the run goes on."""
        finite = self.stack.finite_seeds()
        checks = [*losses.items(), ("weights", [0.0 if ok else math.nan for ok in finite])]
        for what, values in checks:
            bad = [k for k, v in enumerate(values) if active[k] and not math.isfinite(v)]
            if bad:
                which = ", ".join(str(self.seeds[k]) for k in bad)
                which = f"seeds {which}" if len(bad) > 1 else f"seed {which}"
                became = "became non-finite" if what == "weights" else f"became {values[bad[0]]}"
                raise TrainingError(
                    f"{self.datas[0].dataset} {self.plan.name}: the {what} of {which} {became} "
                    f"at epoch {epoch}: training diverged (look for extreme embedding values, or "
                    "lower fusion.lr)"
                )
        odd = [k for k, v in enumerate(total) if active[k] and not math.isfinite(v)]
        if odd and not getattr(self, "_odd_total", False):
            self._odd_total = True
            log.warning(
                "%s %s: the total training loss of seed(s) %s is %s from epoch %d (an auxiliary "
                "term's value; task loss, gradients and weights are finite)",
                self.datas[0].dataset, self.plan.name, ", ".join(str(self.seeds[k]) for k in odd),
                total[odd[0]], epoch,
            )  # fmt: skip

    def train(self) -> list[dict[str, Any]]:
        """The training loop; returns per seed: history rows, best epoch and loss, epochs."""
        hp, device, data = self.hp, self.device, self.datas[0]
        s = len(self.seeds)
        train_idx = data.split_index("train")
        val_idx = data.split_index("val")
        if len(train_idx) == 0:
            raise ValueError(f"{data.dataset}: no training samples")
        checks = check_labels(data, self.plan.name)  # refuses a train split without labels
        self.warnings = checks.warnings
        for w in checks.warnings:
            log.warning("%s", w)
        use_val = checks.val_usable  # else: early stopping on the training loss
        n_train = len(train_idx)
        bs = max(1, min(hp.batch_size, n_train))
        steps_per_epoch = math.ceil(n_train / bs)
        warmup_steps = hp.warmup_epochs * steps_per_epoch
        planned = steps_per_epoch * hp.max_epochs
        self.replaying = self.replay is not None and planned >= self.replay_min_steps
        if hp.batch_order == "shared":  # every seed follows the order seed's permutation
            gens = [torch.Generator().manual_seed(self.order_seed)]
        else:
            gens = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        history: list[list[dict[str, float]]] = [[] for _ in range(s)]
        best_loss = [math.inf] * s
        best_score = [math.inf] * s
        by_auroc = (
            hp.early_stopping == "auroc"
            and use_val
            and auroc_defined(data.y[val_idx].cpu().numpy(), data.task_type)
        )
        if hp.early_stopping == "auroc" and use_val and not by_auroc:
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
            val = self.val_losses(val_idx) if use_val else torch.tensor(train_loss)
            # the score to minimise: the loss, or minus the val AUROC (the loss without val)
            score = -self.val_auroc(val_idx) if by_auroc else val
            losses = {"training loss": task_l, "distillation loss": kd_l}
            if use_val:
                losses["validation loss"] = val.tolist()
            self._check_finite(epoch, active, losses, train_loss)
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
        never = [k for k in range(s) if best_epoch[k] < 0]
        if never:  # restoring "the best" would hand back the initial weights as trained
            raise TrainingError(
                f"{data.dataset} {self.plan.name}: seed {self.seeds[never[0]]} never reached a "
                f"finite {'validation' if use_val else 'training'} score in "
                f"{len(history[never[0]])} epoch(s): nothing was trained"
            )
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


__all__ = [
    "SeedTrainer",
    "TrainModule",
    "build_spec",
    "prior_logits",
    "resolve_pos_weight",
    "seed_everything",
    "split_loss",
]
