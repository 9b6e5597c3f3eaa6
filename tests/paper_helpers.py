"""A small synthetic cohort written as real manifest + cache files, for the paper-grid tests.

Three modalities (two experts each), three binary tasks; the chance that a modality is
missing rises with the label (structured missingness), a few samples miss everything.
``shift`` moves the feature distribution (an external cohort).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import CacheMeta, CacheRecords, write_cache
from medmix.config import dataset_paths

EXPERTS = {"a": {"a1": 10, "a2": 6}, "b": {"b1": 8, "b2": 5}, "c": {"c1": 7, "c2": 4}}
LABELS = ["y1", "y2", "y3"]

FUSION = {
    "d": 8,
    "adapter_bottleneck": 4,
    "dropout": 0.1,
    "lr": 5.0e-3,
    "router_lr": 2.5e-3,
    "warmup_epochs": 1,
    "max_epochs": 6,
    "patience": 3,
    "batch_size": 128,
}


def make_config(root: Path, datasets: tuple[str, ...] = ("syn",), **extra) -> dict:
    cfg = {
        "results": str(root),
        "seeds": [0, 1],
        "datasets": {
            ds: {"adapter": "demo", "modalities": {m: list(ex) for m, ex in EXPERTS.items()}}
            for ds in datasets
        },
        "experts": {e: {"type": "synthetic"} for ex in EXPERTS.values() for e in ex},
        "methods": ["medmix", "meanavg"],
        "fusion": dict(FUSION),
    }
    cfg.update(extra)
    return cfg


def write_cohort(
    cfg: dict,
    dataset: str = "syn",
    n: int = 400,
    seed: int = 0,
    shift: float = 0.0,
    all_missing: int = 3,
    hashes: dict[str, str] | None = None,
) -> None:
    rng = np.random.default_rng(seed)
    paths = dataset_paths(cfg, dataset)
    z = rng.normal(size=(n, 3))
    y = np.stack(
        [
            (z[:, 0] + z[:, 1] + 0.4 * rng.normal(size=n) > 0.3),
            (z[:, 1] - z[:, 2] + 0.4 * rng.normal(size=n) > 0.0),
            (z[:, 2] + 0.4 * rng.normal(size=n) > 0.5),
        ],
        axis=1,
    ).astype(np.int8)
    ids = np.array([f"p{i:04d}" for i in range(n)])
    order = rng.permutation(n)  # manifest rows not in id order
    n_tr, n_va = int(0.6 * n), int(0.15 * n)
    split = np.array(["train"] * n_tr + ["val"] * n_va + ["test"] * (n - n_tr - n_va))
    sick = y.sum(axis=1)
    have = {
        "a": rng.random(n) > 0.05 + 0.05 * sick,
        "b": rng.random(n) > 0.15 + 0.1 * sick,
        "c": rng.random(n) > 0.1,
    }
    for m in have:
        have[m][:all_missing] = False
    df = pd.DataFrame(
        {
            "sample_id": ids,
            "patient_id": ids,
            "split": split,
            **{m: np.where(have[m], f"text {m}", None) for m in have},
            **{f"label_{k}": y[:, j] for j, k in enumerate(LABELS)},
        }
    ).iloc[order]
    meta = ManifestMeta(dataset, "binary", {m: "text" for m in have}, list(LABELS), adapter="test")
    write_manifest(df.reset_index(drop=True), paths.manifest, meta)
    for mi, (m, experts) in enumerate(EXPERTS.items()):
        for e, dim in experts.items():
            w = np.random.default_rng(100 + dim).normal(size=dim)
            emb = np.outer(z[:, mi], w) + 0.6 * rng.normal(size=(n, dim)) + shift
            status = np.where(have[m], "ok", "missing")
            reason = [None if s == "ok" else s for s in status]
            write_cache(
                paths.cache(m, e),
                CacheRecords(
                    ids[order].tolist(),
                    emb[order].astype(np.float32),
                    status[order].tolist(),
                    [reason[i] for i in order],
                ),  # fmt: skip
                CacheMeta(
                    expert=e,
                    model_id=f"offline:{e}",
                    dim=dim,
                    pooling="none",
                    preprocess_hash=(hashes or {}).get(e, "x"),
                ),
            )
