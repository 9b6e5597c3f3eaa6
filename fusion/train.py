"""Training of one (dataset, method, protocol) job: every seed in one process (paper App. C).

AdamW (weight decay on weight matrices only), a separate router learning rate (parameter
groups), gradient-norm clipping, linear LR warm-up over ``warmup_epochs``, up to
``max_epochs``, early stopping on validation loss with ``patience``, the best-validation
state restored, minibatches indexed from tensors that were loaded once. All numbers come
from the config's ``fusion:`` section.

Outputs (DESIGN §3.3), built in a temp folder beside ``out`` and renamed into place at the
end, so a killed job leaves nothing that looks finished::

    {out}/seed{k}/predictions.parquet  metrics.json  history.csv  model.safetensors  config.json
    {out}/summary.json                 (written last)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.data import FusionData, apply_protocol, load_fusion_data
from fusion.losses import TeacherBatch, kd_lambda, task_loss, total_loss
from fusion.medmix import FusionModel
from fusion.metrics import LABEL_METRICS, METRICS, choose_thresholds, evaluate_split
from fusion.registry import (
    MethodPlan,
    ModelSpec,
    Predictions,
    build_model,
    resolve_method,
    save_model,
)
from medmix.config import cache_paths, dataset_paths
from medmix.io import atomic_path

log = logging.getLogger("medmix.fusion.train")

EVAL_SPLITS = ("val", "test", "external")


@dataclass
class FusionHParams:
    """The config's ``fusion:`` section (defaults = the schema's defaults)."""

    d: int = 64
    adapter_bottleneck: int = 32
    dropout: float = 0.2
    lr: float = 1.0e-3
    router_lr: float = 5.0e-4
    weight_decay: float = 1.0e-2
    clip_grad_norm: float = 1.0
    warmup_epochs: int = 5
    max_epochs: int = 200
    patience: int = 15
    batch_size: int = 64
    lambda_kd: float = 0.0
    rkd_gamma: float = 1.0
    pos_weight: float | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> FusionHParams:
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"fusion: unknown key(s) {unknown}")
        return cls(**section)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_spec(data: FusionData, plan: MethodPlan, hp: FusionHParams) -> ModelSpec:
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
        run_method=plan.name,
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


class AdamW:
    """AdamW (decoupled weight decay, Loshchilov & Hutter) over parameter groups.

    Same update as ``torch.optim.AdamW(amsgrad=False)``; groups are dicts with ``params``,
    ``lr`` and ``weight_decay`` (the training loop sets ``lr`` for the warm-up). It exists
    because constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (2–8 s of a
    few-second CPU job); it runs the fused ``torch._fused_adamw_`` kernel where available
    (one call per group) and the per-tensor formula otherwise.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.param_groups = [dict(g, params=list(g["params"])) for g in param_groups]
        self.betas = betas
        self.eps = eps
        self.state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
        self.fused = hasattr(torch, "_fused_adamw_")

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def _state(self, p: torch.nn.Parameter) -> dict[str, torch.Tensor]:
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
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
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


def make_optimizer(model: FusionModel, hp: FusionHParams) -> AdamW:
    """AdamW with base / router groups; weight decay on weight matrices only.

    Biases (any parameter named ``*bias*``), LayerNorm parameters and the prior (all of them
    1-D, or named bias) are not decayed.
    """
    router_ids = {id(p) for p in model.router_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and "bias" not in name.rsplit(".", 1)[-1]
            groups.setdefault((id(p) in router_ids, decay), []).append(p)
    param_groups = []
    for (is_router, decay), params in sorted(groups.items()):
        param_groups.append(
            {
                "params": params,
                "lr": hp.router_lr if is_router else hp.lr,
                "weight_decay": hp.weight_decay if decay else 0.0,
                "name": ("router" if is_router else "base") + ("" if decay else "_nodecay"),
            }
        )
    return AdamW(param_groups)


def teacher_batch(data: FusionData, idx: torch.Tensor) -> TeacherBatch | None:
    """Teacher embeddings of a minibatch — the distillation hook (no teachers loaded yet)."""
    return None


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def split_loss(
    model: FusionModel, data: FusionData, idx: torch.Tensor, hp: FusionHParams, chunk: int = 8192
) -> float:
    """Task loss over rows ``idx`` in eval mode (weighted by known labels per chunk)."""
    model.eval()
    device = model.prior.device
    total, weight = 0.0, 0.0
    for s in range(0, len(idx), chunk):
        b = idx[s : s + chunk]
        xs, delta = data.batch(b)
        with _autocast(device):
            out = model([x.to(device) for x in xs], delta.to(device))
        y = data.y[b].to(device)
        w = float((y >= 0).sum() if data.task_type == "multiclass" else torch.isfinite(y).sum())
        total += float(task_loss(out.logits.float(), y, data.task_type, hp.pos_weight)) * w
        weight += w
    return total / weight if weight else float("nan")


@torch.no_grad()
def predict(model: FusionModel, data: FusionData, batch_size: int = 8192) -> Predictions:
    """Eval-mode outputs for every sample of ``data``."""
    model.eval()
    device = model.prior.device
    logits, alphas, betas = [], [], []
    for s in range(0, data.n, batch_size):
        idx = torch.arange(s, min(s + batch_size, data.n), device=data.delta.device)
        xs, delta = data.batch(idx)
        with _autocast(device):
            out = model([x.to(device) for x in xs], delta.to(device))
        logits.append(out.logits.float().cpu())
        if out.alpha is not None:
            alphas.append(out.alpha.float().cpu())
        if out.beta is not None:
            betas.append(out.beta.float().cpu())
    lg = torch.cat(logits) if logits else torch.zeros(0, data.n_outputs)
    probs = torch.softmax(lg, dim=-1) if data.task_type == "multiclass" else torch.sigmoid(lg)
    return Predictions(
        probs=probs.numpy(),
        logits=lg.numpy(),
        alpha=torch.cat(alphas).numpy() if alphas else None,
        beta=torch.cat(betas).numpy() if betas else None,
    )


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


def compute_metrics(data: FusionData, spec: ModelSpec, pred: Predictions) -> dict[str, Any]:
    """Thresholds chosen on val, metrics of val / test / external."""
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
            splits[s] = evaluate_split(
                y[rows],
                pred.probs[rows],
                data.task_type,
                names,
                thresholds,
                int(no_mod[rows].sum()),
            ).to_dict()
    return {
        "task_type": data.task_type,
        "labels": names,
        "thresholds": thresholds,
        "splits": splits,
    }


def train_seed(
    data: FusionData,
    plan: MethodPlan,
    hp: FusionHParams,
    seed: int,
    device: str | torch.device = "cpu",
) -> SeedResult:
    """Train one seed on ``data`` (already masked by its protocol) and evaluate it."""
    t0 = time.perf_counter()
    device = torch.device(device)
    data = data.to(device)
    seed_everything(seed)
    spec = build_spec(data, plan, hp)
    model = build_model(spec).to(device)
    model.set_prior(prior_logits(data))
    opt = make_optimizer(model, hp)
    base_lrs = [g["lr"] for g in opt.param_groups]
    params = [p for g in opt.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(seed)

    train_idx = data.split_index("train")
    val_idx = data.split_index("val")
    if len(train_idx) == 0:
        raise ValueError(f"{data.dataset}: no training samples")
    if len(val_idx) == 0:
        log.warning("%s: no validation split; early stopping on the training loss", data.dataset)
    n_train = len(train_idx)
    bs = max(1, min(hp.batch_size, n_train))
    steps_per_epoch = math.ceil(n_train / bs)
    warmup_steps = hp.warmup_epochs * steps_per_epoch

    history = []
    best = (math.inf, -1)
    best_state = copy.deepcopy(model.state_dict())
    bad, step = 0, 0
    for epoch in range(hp.max_epochs):
        model.train()
        lam = kd_lambda(epoch, hp.warmup_epochs, hp.lambda_kd)
        perm = train_idx[torch.randperm(n_train, generator=gen).to(train_idx.device)]
        running = torch.zeros((), device=device)
        factor = 1.0
        for s in range(0, n_train, bs):
            idx = perm[s : s + bs]
            factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
            for g, lr0 in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = lr0 * factor
            xs, delta = data.batch(idx)
            with _autocast(device):
                out = model(xs, delta)
            out.logits = out.logits.float()
            parts = total_loss(
                out,
                data.y[idx],
                data.task_type,
                hp.pos_weight,
                teacher=teacher_batch(data, idx),
                lambda_kd=lam,
            )
            opt.zero_grad()
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(params, hp.clip_grad_norm)
            opt.step()
            step += 1
            running += parts.total.detach() * len(idx)
        train_loss = float(running) / n_train
        val_loss = split_loss(model, data, val_idx, hp) if len(val_idx) else train_loss
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": hp.lr * factor}
        )
        if math.isfinite(val_loss) and val_loss < best[0]:
            best = (val_loss, epoch)
            best_state = copy.deepcopy(model.state_dict())
            bad = 0
        else:
            bad += 1
            if bad >= hp.patience:
                break
    model.load_state_dict(best_state)
    pred = predict(model, data)
    metrics = compute_metrics(data, spec, pred)
    return SeedResult(
        seed=seed,
        model=model,
        history=pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss", "lr"]),
        predictions=pred,
        metrics=metrics,
        epochs_run=len(history),
        best_epoch=best[1],
        best_val_loss=best[0],
        seconds=time.perf_counter() - t0,
    )


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


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` onto ``out`` (an older ``out`` is moved aside, then removed)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_training(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    protocol: str,
    out: str | os.PathLike,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
) -> RunSummary:
    """Train every seed of (dataset, method, protocol) and write the run folder ``out``."""
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    hp = FusionHParams.from_config(cfg.get("fusion"))
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.get("seeds", [0]))]
    paths = dataset_paths(cfg, dataset)
    caches = cache_paths(cfg, dataset)
    plan = resolve_method(method, list(caches))
    data = load_fusion_data(paths.manifest, {m: caches[m] for m in plan.modalities}).to(device)
    log.info(
        "%s %s %s: %d samples, modalities %s, task %s (%d outputs), seeds %s",
        dataset, method, protocol, data.n, data.modalities, data.task_type, data.n_outputs, seeds,
    )  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    info = {"dataset": dataset, "method": method, "protocol": protocol, "hparams": asdict(hp)}
    per_seed: dict[int, dict[str, float]] = {}
    extra: dict[int, dict[str, Any]] = {}
    try:
        for seed in seeds:
            sdata = apply_protocol(data, protocol, seed)
            res = train_seed(sdata, plan, hp, seed, device=device)
            write_seed(res, sdata, tmp / f"seed{seed}", info)
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
        keys = [m for m in METRICS if all(m in v for v in per_seed.values())]
        mean = {m: float(np.mean([v[m] for v in per_seed.values()])) for m in keys}
        std = {
            m: float(np.std([v[m] for v in per_seed.values()], ddof=1)) if len(seeds) > 1 else 0.0
            for m in keys
        }
        seconds = time.perf_counter() - t0
        summary = {
            **{k: v for k, v in info.items() if k != "hparams"},
            "split": "test",
            "seeds": seeds,
            "per_seed": {str(s): {**per_seed[s], **extra[s]} for s in seeds},
            "mean": mean,
            "std": std,
            "std_ddof": 1,
            "seconds": round(seconds, 3),
        }
        (tmp / "summary.json").write_text(_json(summary))  # last file of the run
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    auroc = f"{mean['auroc']:.3f}±{std['auroc']:.3f}" if "auroc" in mean else "n/a"
    log.info(
        "%s %s %s: test AUROC %s over %d seed(s), %.1fs -> %s",
        dataset,
        method,
        protocol,
        auroc,
        len(seeds),
        seconds,
        out,
    )
    return RunSummary(out, method, protocol, seeds, per_seed, mean, std, seconds)


METRIC_COLUMNS = ["dataset", "protocol", "method", "seed", "split", "task", "metric", "value"]


def collect_metrics(runs_root: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """Every finished ``{runs_root}/{protocol}/{method}/seed*/metrics.json`` as a long table."""
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
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return df.astype({"seed": "int64", "value": "float64"})


def write_metrics_table(
    runs_root: str | os.PathLike, dataset: str, out: str | os.PathLike
) -> pd.DataFrame:
    df = collect_metrics(runs_root, dataset)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    return df
