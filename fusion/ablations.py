"""Structural ablations of MedMIX (paper §4.4, Table E7, Figure 4).

The variants and their run folders are listed in :mod:`medmix.ablation_plan` (the
torch-free plan layer); this module trains them.

The best single expert of a modality is the one whose linear probe (L2 logistic regression
on the standardised embedding, fitted on the training split's available rows) has the
highest mean validation AUROC over the labels; the choice is made once per dataset (it does
not depend on the seed) and saved as ``selection.json`` in the run folder.

Expert families come from the config (``ablations.families: {family: [expert, …]}``);
without it, an expert of type ``rag`` is the RAG family, and the others are assigned by
their position in each modality's list: first = biomedical, second = general (the order of
the paper's committee, Table E1).

``python -m fusion ablation train --config … --dataset … --variant no_rag --out …`` trains
one variant (all seeds) through :func:`fusion.train.run_training` with a derived config.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

import fusion.train
from fusion.data import load_fusion_data
from medmix.ablation_plan import (
    UNIFORM_METHOD,
    Variant,
    ablation_variants,
    expert_families,
    variant_by_name,
)
from medmix.cli import add_config_options, command_parser, non_negative_int, positive_int
from medmix.config import cache_paths, dataset_paths, load_config_arg
from medmix.logs import setup_logging

log = logging.getLogger("medmix.fusion.ablations")


# -- best single expert ---------------------------------------------------------------------


def probe_auroc(
    x: np.ndarray, y: np.ndarray, task_type: str, train: np.ndarray, val: np.ndarray
) -> float:
    """Mean validation AUROC of one-vs-rest L2 logistic regressions on ``x`` (NaN if undefined)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if task_type == "multiclass":
        classes = [c for c in np.unique(y[y >= 0])]
        cols = [(y == c).astype(float) for c in classes]
        known = [y >= 0] * len(cols)
    else:
        cols = [y[:, j] for j in range(y.shape[1])]
        known = [np.isfinite(c) for c in cols]
    scores = []
    for c, k in zip(cols, known, strict=True):
        tr, va = train & k, val & k
        if len(np.unique(c[tr])) < 2 or len(np.unique(c[va])) < 2:
            continue
        clf = LogisticRegression(C=0.1, max_iter=300)
        clf.fit(x[tr], c[tr].astype(int))
        scores.append(roc_auc_score(c[va].astype(int), clf.predict_proba(x[va])[:, 1]))
    return float(np.mean(scores)) if scores else float("nan")


def select_best_experts(data: Any) -> dict[str, dict[str, Any]]:
    """Per modality: the expert with the best validation probe AUROC, and every score."""
    y = data.y.cpu().numpy()
    train, val = data.split == "train", data.split == "val"
    if not val.any():
        val = train
    out: dict[str, dict[str, Any]] = {}
    k = 0
    for mi, m in enumerate(data.modalities):
        scores = {}
        for ei, e in enumerate(data.experts[m]):
            ok = data.delta[:, mi, ei].cpu().numpy() > 0
            scores[e] = probe_auroc(
                data.dense(k).cpu().numpy(), y, data.task_type, train & ok, val & ok
            )
            k += 1
        finite = {e: s for e, s in scores.items() if np.isfinite(s)}
        best = max(finite, key=finite.get) if finite else data.experts[m][0]
        out[m] = {"expert": best, "val_auroc": scores}
    return out


# -- derived configs ------------------------------------------------------------------------


def variant_config(
    cfg: dict[str, Any], dataset: str, variant: Variant, selection: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """The (config, method) that trains ``variant``."""
    cfg = copy.deepcopy(cfg)
    dcfg = cfg["datasets"][dataset]
    if variant.kind == "no_distill":
        cfg.setdefault("fusion", {})["lambda_kd"] = 0.0
        return cfg, "medmix"
    if variant.kind == "uniform_mean":
        return cfg, UNIFORM_METHOD
    if variant.kind == "best_expert":
        if selection is None:
            raise ValueError("best_expert needs the selection")
        dcfg["modalities"] = {m: [selection[m]["expert"]] for m in dcfg["modalities"]}
        return cfg, "medmix"
    if variant.kind == "no_family":
        fam = variant.name.removeprefix("no_")
        fams = expert_families(cfg, dataset)
        kept = {m: [e for e in es if fams[e] != fam] for m, es in dcfg["modalities"].items()}
        dropped = [m for m, es in kept.items() if not es]
        if dropped:
            log.warning(
                "%s w/o %s experts: modalities %s have none left, dropped", dataset, fam, dropped
            )
        dcfg["modalities"] = {m: es for m, es in kept.items() if es}
        return cfg, "medmix"
    if variant.kind in ("reference", "single_modality"):
        return cfg, variant.method
    raise ValueError(f"unknown variant kind {variant.kind!r}")


def train_variant(
    cfg: dict[str, Any],
    dataset: str,
    variant_name: str,
    out: str | os.PathLike,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
) -> Path:
    """Train one ablation variant (all seeds) into ``out``."""
    variant = variant_by_name(cfg, dataset, variant_name)
    selection = None
    if variant.kind == "best_expert":
        data = load_fusion_data(dataset_paths(cfg, dataset).manifest, cache_paths(cfg, dataset))
        selection = select_best_experts(data)
        log.info(
            "%s: best single expert per modality (validation probe AUROC): %s",
            dataset,
            {m: v["expert"] for m, v in selection.items()},
        )
    vcfg, method = variant_config(cfg, dataset, variant, selection)
    fusion.train.run_training(
        vcfg, dataset, method, "full", out, seeds=seeds, threads=threads, device=device
    )
    out = Path(out)
    # lambda_kd as the variant's config writes it (null where the config leaves it out)
    meta = {"variant": variant.name, "label": variant.label, "method": method,
            "modalities": vcfg["datasets"][dataset]["modalities"],
            "lambda_kd": (vcfg.get("fusion") or {}).get("lambda_kd")}  # fmt: skip
    if selection is not None:
        meta["selection"] = selection
    (out / "selection.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=float))
    return out


def main(argv: list[str] | None = None) -> int:
    parser, sub = command_parser("python -m fusion ablation", __doc__, version=False)
    add_config_options(sub.add_parser("list", help="the ablation rows of a dataset"))
    p = sub.add_parser("train", help="train one ablation variant (all seeds)")
    add_config_options(p)
    p.add_argument("--variant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=non_negative_int, nargs="+")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config_arg(args.config)
    dataset_paths(cfg, args.dataset)  # an unknown --dataset: one line naming it
    if args.cmd == "list":
        for v in ablation_variants(cfg, args.dataset):
            print(f"{v.protocol}/{v.method}\t{v.label}")
        return 0
    train_variant(cfg, args.dataset, args.variant, args.out, args.seeds, args.threads, args.device)
    return 0
