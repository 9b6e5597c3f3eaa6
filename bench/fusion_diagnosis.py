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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusion.metrics import seed_mean_std  # noqa: E402
from fusion.train import run_training  # noqa: E402
from medmix.config import load_config  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml", help="the pipeline's config file")
    ap.add_argument("--datasets", nargs="+", help="default: every dataset with methods")
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS),
                    help="arms to run (default: all)")  # fmt: skip
    ap.add_argument("--seeds", nargs="+", type=int, help="default: the config's seeds")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
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
