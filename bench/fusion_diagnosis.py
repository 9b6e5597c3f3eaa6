"""Why does a fusion model trail a linear probe? One ablation per suspected cause.

Each *arm* trains one method with one change to the config's ``fusion:`` settings, on the
same embedding caches, splits and seeds as the pipeline's own runs (through
:func:`fusion.train.run_training`, or :func:`fusion.probe.run_probe` for the probe), and the
script prints, per dataset and arm, the macro AUROC on val and test (mean ± std over the
seeds) and, for the gated models, how far the inter-modality gate collapses (mean over test
samples with ≥ 2 modalities of the largest normalised modality weight; 1/M = uniform, 1 =
one modality only).

    python bench/fusion_diagnosis.py [--config config.yaml] [--datasets demo-openi ...]
                                     [--arms medmix wd-0.1 ...] [--seeds 0 1 2 3 4]
                                     [--out results/diagnosis.json]

It reads the caches the workflow wrote (run ``snakemake`` first) and writes its run folders
under a temporary directory, never into ``results/{dataset}/runs``. Arms (:data:`ARMS`):
what each one tests is in its description.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fusion.medmix import FusionOutput, MedMIX  # noqa: E402
from fusion.medmix_sum import AVAILABILITY_SCALE, MedMIXSum  # noqa: E402
from fusion.metrics import seed_mean_std  # noqa: E402
from fusion.registry import register_method  # noqa: E402
from fusion.train import run_training  # noqa: E402
from medmix.config import load_config  # noqa: E402
from medmix.methods import BASELINE, METHODS, MethodInfo  # noqa: E402

# -- diagnosis-only fusion variants ------------------------------------------------------------
# Catalogued and registered in this process only (never a Table 1 row; named medmix-* so they
# distil like MedMIX): each changes one
# property of the paper's inter-modality step, to tell apart what MedMIX-Σ's two changes buy.
for _name, _label in (
    ("medmix-diag-count", "MedMIX x n present (diagnosis)"),
    ("medmix-diag-avail", "MedMIX + availability (diagnosis)"),
    ("medmix-diag-sum-noavail", "MedMIX-Σ without availability (diagnosis)"),
):
    METHODS[_name] = MethodInfo(_name, _label, BASELINE, in_config=False)


@register_method("medmix-diag-count")
class MedMIXCount(MedMIX):
    """The paper's convex β-mixture times the number of present modalities (no renormalisation
    of the evidence's scale; the missingness pattern still never reaches the output)."""

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        out = super().fuse(u, delta)
        n_present = (delta.amax(dim=-1) > 0).sum(dim=-1, keepdim=True).to(u.dtype)  # (B, 1)
        return FusionOutput(out.logits * n_present, out.alpha, out.beta, out.z, out.modality_logits)


@register_method("medmix-diag-avail")
class MedMIXAvail(MedMIX):
    """The paper's convex β-mixture plus an availability term A π + b on the output (the
    missingness pattern as evidence; the mixture still renormalises over present modalities).
    π is read at MedMIX-Σ's scale (:data:`fusion.medmix_sum.AVAILABILITY_SCALE`) so that A learns."""

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.availability = torch.nn.Linear(len(spec.modalities), spec.n_outputs)
        torch.nn.init.zeros_(self.availability.weight)
        torch.nn.init.zeros_(self.availability.bias)

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        out = super().fuse(u, delta)
        present = (delta.amax(dim=-1) > 0).to(u.dtype)
        logits = out.logits + self.availability(present * AVAILABILITY_SCALE)
        return FusionOutput(logits, out.alpha, out.beta, out.z, out.modality_logits)


@register_method("medmix-diag-sum-noavail")
class MedMIXSumNoAvail(MedMIXSum):
    """MedMIX-Σ's additive gates without its availability terms (G and A stay zero)."""

    def fuse(self, u: torch.Tensor, delta: torch.Tensor) -> FusionOutput:
        avail, alpha, z, logits_m = self.route(u, delta)
        present = avail.any(dim=-1).to(u.dtype)
        w = 2.0 * torch.sigmoid(self.fusion_scorer(z).squeeze(-1)) * present
        logits = (w.unsqueeze(-1) * logits_m).sum(dim=1)
        return FusionOutput(logits=logits, alpha=alpha, beta=w, z=z, modality_logits=logits_m)


@dataclass(frozen=True)
class Arm:
    method: str
    why: str
    fusion: dict[str, Any] = field(default_factory=dict)


ARMS: dict[str, Arm] = {
    "medmix": Arm("medmix", "the paper's MedMIX with the config's settings (reference)"),
    "wd-0.1": Arm("medmix", "overfitting: 10x weight decay", {"weight_decay": 0.1}),
    "wd-1": Arm("medmix", "overfitting: 100x weight decay", {"weight_decay": 1.0}),
    "dropout-0.5": Arm("medmix", "overfitting: dropout 0.5", {"dropout": 0.5}),
    "d-16": Arm(
        "medmix", "capacity: width d = 16, bottleneck 8", {"d": 16, "adapter_bottleneck": 8}
    ),  # fmt: skip
    "d-128": Arm(
        "medmix", "capacity: width d = 128, bottleneck 64", {"d": 128, "adapter_bottleneck": 64}
    ),  # fmt: skip
    "lr-3e-4": Arm("medmix", "optimisation: learning rate / 3", {"lr": 3e-4, "router_lr": 1.5e-4}),
    "batch-32": Arm(
        "medmix", "optimisation: 4x the steps per epoch (batch 32)", {"batch_size": 32}
    ),
    "lr-3e-3": Arm("medmix", "optimisation: learning rate x 3", {"lr": 3e-3, "router_lr": 1.5e-3}),
    "linear-batch-32": Arm(
        "medmix", "linear projection, batch 32", {"projection": "linear", "batch_size": 32}
    ),  # fmt: skip
    "medmix-sum-linear-batch-32": Arm(
        "medmix-sum",
        "additive gates, linear projection, batch 32",
        {"projection": "linear", "batch_size": 32},
    ),  # fmt: skip
    "concat-linear-batch-32": Arm(
        "concat", "Concat, linear projection, batch 32", {"projection": "linear", "batch_size": 32}
    ),  # fmt: skip
    "patience-30": Arm("medmix", "early stopping: patience 30 epochs", {"patience": 30}),
    "stop-auroc": Arm(
        "medmix", "early stopping on val AUROC instead of val loss", {"early_stopping": "auroc"}
    ),  # fmt: skip
    "no-kd": Arm("medmix", "distillation off (lambda_kd = 0)", {"lambda_kd": 0.0}),
    "uniform-experts": Arm("medmix-uniform", "intra-modality router replaced by the mean"),
    "medmix-sum": Arm("medmix-sum", "convex beta-mixture -> additive gates + availability"),
    "medmix-sum-wd-0.1": Arm(
        "medmix-sum", "additive gates and 10x weight decay", {"weight_decay": 0.1}
    ),  # fmt: skip
    "medmix-sum-stop-auroc": Arm(
        "medmix-sum", "additive gates, early stopping on val AUROC", {"early_stopping": "auroc"}
    ),  # fmt: skip
    "linear-projection": Arm(
        "medmix",
        "expert encoder: linear projection (no adapter, LN, GELU)",
        {"projection": "linear"},
    ),  # fmt: skip
    "medmix-sum-linear": Arm(
        "medmix-sum", "additive gates and the linear projection", {"projection": "linear"}
    ),  # fmt: skip
    "medmix-sum-linear-auroc": Arm(
        "medmix-sum",
        "additive gates, linear projection, stop on val AUROC",
        {"projection": "linear", "early_stopping": "auroc"},
    ),  # fmt: skip
    "pos-auto": Arm(
        "medmix", "rare labels: BCE pos_weight n_neg/n_pos per label", {"pos_weight": "auto"}
    ),  # fmt: skip
    "linear-pos-auto": Arm(
        "medmix",
        "linear projection and pos_weight n_neg/n_pos",
        {"projection": "linear", "pos_weight": "auto"},
    ),  # fmt: skip
    "medmix-sum-linear-pos-auto": Arm(
        "medmix-sum",
        "additive gates, linear projection, pos_weight n_neg/n_pos",
        {"projection": "linear", "pos_weight": "auto"},
    ),  # fmt: skip
    "count": Arm("medmix-diag-count", "renormalisation: paper gates x number present"),
    "avail": Arm("medmix-diag-avail", "missingness signal: paper mixture + A pi"),
    "count-linear": Arm(
        "medmix-diag-count",
        "renormalisation: paper gates x number present, linear projection",
        {"projection": "linear"},
    ),  # fmt: skip
    "avail-linear": Arm(
        "medmix-diag-avail",
        "missingness signal: paper mixture + A pi, linear projection",
        {"projection": "linear"},
    ),  # fmt: skip
    "sum-noavail-linear": Arm(
        "medmix-diag-sum-noavail",
        "MedMIX-Sigma gates without availability terms, linear projection",
        {"projection": "linear"},
    ),  # fmt: skip
    "concat": Arm("concat", "Concat baseline (reference)"),
    "concat-linear": Arm("concat", "Concat with the linear projection", {"projection": "linear"}),
    "concat-stop-auroc": Arm(
        "concat", "Concat, early stopping on val AUROC", {"early_stopping": "auroc"}
    ),  # fmt: skip
    "linear-probe": Arm("linear-probe", "logistic regression, C on val (reference)"),
}
DEFAULT_ARMS = list(ARMS)


@dataclass
class ArmResult:
    dataset: str
    arm: str
    val: tuple[float, float]
    test: tuple[float, float]
    gate_max: float | None
    seconds: float


def _split_auroc(run: Path, seeds: list[int], split: str) -> dict[int, dict[str, float]]:
    out = {}
    for s in seeds:
        m = json.loads((run / f"seed{s}" / "metrics.json").read_text())
        out[s] = {"auroc": float(m["splits"][split]["macro"]["auroc"])}
    return out


def gate_collapse(run: Path, seeds: list[int], modalities: list[str]) -> float | None:
    """Mean over test samples with >= 2 modalities of max_m w_m / sum_m w_m (None: no gates)."""
    vals = []
    for s in seeds:
        pred = pd.read_parquet(run / f"seed{s}" / "predictions.parquet")
        cols = [f"beta_{m}" for m in modalities if f"beta_{m}" in pred.columns]
        if len(cols) < 2:
            return None
        w = pred.loc[pred["split"] == "test", cols].to_numpy(dtype=float)
        w = w[(w > 0).sum(1) >= 2]
        if len(w):
            vals.append(float((w.max(1) / w.sum(1)).mean()))
    return float(np.mean(vals)) if vals else None


def run_arm(
    cfg: dict[str, Any], dataset: str, name: str, seeds: list[int], root: Path
) -> ArmResult:
    arm = ARMS[name]
    acfg = copy.deepcopy(cfg)
    acfg["fusion"] = {**(acfg.get("fusion") or {}), **arm.fusion}
    out = root / dataset / name
    t0 = time.perf_counter()
    run_training(acfg, dataset, arm.method, "full", out, seeds=seeds)
    seconds = time.perf_counter() - t0
    val = seed_mean_std(_split_auroc(out, seeds, "val"))
    test = seed_mean_std(_split_auroc(out, seeds, "test"))
    mods = list(cfg["datasets"][dataset]["modalities"])
    gates = None if arm.method in ("concat", "linear-probe") else gate_collapse(out, seeds, mods)
    return ArmResult(
        dataset,
        name,
        (val[0]["auroc"], val[1].get("auroc", 0.0)),
        (test[0]["auroc"], test[1].get("auroc", 0.0)),
        gates,
        seconds,
    )


def markdown(results: list[ArmResult]) -> str:
    lines = ["| dataset | arm | what it tests | val AUROC | test AUROC | gate max | s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        gate = f"{r.gate_max:.2f}" if r.gate_max is not None else "–"
        lines.append(
            f"| {r.dataset} | {r.arm} | {ARMS[r.arm].why} | {r.val[0]:.3f} ± {r.val[1]:.3f} "
            f"| {r.test[0]:.3f} ± {r.test[1]:.3f} | {gate} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def fusion_overrides(items: list[str]) -> dict[str, Any]:
    """``["dropout=0", "lr=3e-3"]`` -> ``{"dropout": 0, "lr": 0.003}`` (values read as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml", help="the pipeline's config file")
    ap.add_argument("--datasets", nargs="+", help="default: every dataset with methods")
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS),
                    help="arms to run (default: all)")  # fmt: skip
    ap.add_argument("--seeds", nargs="+", type=int, help="default: the config's seeds")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="fusion settings applied to the config before every arm "
                         "(YAML values, e.g. dropout=0 patience=30)")  # fmt: skip
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    cfg["fusion"] = {**(cfg.get("fusion") or {}), **fusion_overrides(args.set)}
    seeds = args.seeds or [int(s) for s in cfg.get("seeds", [0])]
    targets = {e["target"] for e in cfg.get("external") or []}  # evaluated, never trained on
    datasets = args.datasets or [d for d in cfg["datasets"] if d not in targets]
    results = []
    with tempfile.TemporaryDirectory(prefix="medmix-diagnosis-") as tmp:
        for dataset in datasets:
            for name in args.arms:
                r = run_arm(cfg, dataset, name, seeds, Path(tmp))
                print(f"{dataset:14s} {name:20s} val {r.val[0]:.3f} test {r.test[0]:.3f} "
                      f"({r.seconds:.0f}s)", flush=True)  # fmt: skip
                results.append(r)
    print()
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
