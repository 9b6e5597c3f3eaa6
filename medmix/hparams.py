"""The config's ``fusion:`` section as one validated object: :class:`FusionHParams`.

Torch-free: the trainer, model selection and the plan layer (what a run reads, which
ablation rows exist) all read the section through :meth:`FusionHParams.from_config` /
:meth:`FusionHParams.of`, so they agree on its defaults and on what is valid.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# the expert encoder of a fusion model (ModelSpec.projection): "paper" (residual adapter, then
# Dropout(GELU(LN(P h̃ + p)))) or "linear" (u = P h + p)
PROJECTIONS = ("paper", "linear")

# keys of the config's fusion: section that are not hyper-parameters of one run
NON_HPARAM_KEYS = ("select",)


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

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> FusionHParams:
        """The hyper-parameters of a whole config (its ``fusion:`` section)."""
        return cls.from_config(cfg.get("fusion"))

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


__all__ = ["NON_HPARAM_KEYS", "PROJECTIONS", "FusionHParams"]
