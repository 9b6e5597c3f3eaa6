"""Efficiency: FLOP counting, parameters, memory, EffScore (paper App. E, Table E6)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fusion.efficiency import (
    Cost,
    activation_peak,
    combine,
    count_flops,
    count_params,
    eff_score,
    efficiency_rows,
    find_modules,
    fusion_cost,
    geomean,
    measure,
    perf,
)
from fusion.registry import ModelSpec, build_model
from fusion.report.figures.pareto import pareto_front


def test_flops_of_a_small_mlp_match_a_hand_count() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(10, 20), nn.GELU(), nn.Linear(20, 5))
    x = torch.randn(3, 10)
    # FlopCounterMode: 2 FLOPs per multiply-add of each matmul (bias adds and GELU not counted)
    assert count_flops(lambda: mlp(x)) == 2 * 3 * (10 * 20 + 20 * 5)
    assert count_params([mlp]) == 10 * 20 + 20 + 20 * 5 + 5
    # a module held twice (two attributes, a list) counts once
    holder = type("H", (), {})()
    holder.a, holder.b, holder.c = mlp, [mlp, mlp[0]], {"x": 1}
    assert find_modules(holder) == [mlp]


def test_medmix_fusion_cost_counts_its_matmuls() -> None:
    spec = ModelSpec("medmix", ["a", "b"], {"a": ["a1", "a2"], "b": ["b1"]},
                     {"a": {"a1": 12, "a2": 6}, "b": {"b1": 8}}, "binary", ["y"], 1,
                     d=8, adapter_bottleneck=4)  # fmt: skip
    model = build_model(spec)
    cost = fusion_cost(model)
    assert cost.params == sum(p.numel() for p in model.parameters())
    tensors = [*model.parameters(), *model.buffers()]
    assert cost.resident_bytes == sum(t.numel() * t.element_size() for t in tensors)
    # at least the adapters' and projections' matmuls of the three experts (batch 1)
    lower = sum(2 * (d * 4 + 4 * d + d * 8) for d in (12, 6, 8))
    assert lower <= cost.flops < 10 * lower
    assert cost.activation_bytes > 0


def test_activation_peak_sees_a_large_temporary() -> None:
    def fn() -> None:
        a = torch.ones(1000, 1000)  # 4 MB, freed before the next one
        del a
        b = torch.ones(500, 1000)  # 2 MB
        del b

    peak = activation_peak(fn)
    assert 4_000_000 <= peak < 6_100_000
    c = measure("not torch", lambda: sum(range(10)), object())
    assert c.params == 0 and c.flops == 0 and not c.torch


def test_combine_counts_shared_models_once() -> None:
    a = Cost(
        "frontal/dino", params=100, flops=10, resident_bytes=400, activation_bytes=50, model="dino"
    )
    b = Cost(
        "lateral/dino", params=100, flops=12, resident_bytes=400, activation_bytes=70, model="dino"
    )
    f = Cost("fusion/medmix", params=5, flops=1, resident_bytes=20, activation_bytes=5, model="f")
    tot = combine([a, b, f])
    assert tot == {"params": 105.0, "flops": 23.0, "memory_bytes": 420.0 + 70.0}


def test_effscore_formula_reproduces_the_paper() -> None:
    """Table E6 (OpenI): MedMIX 2.85 B / 773.74 G / 14.44 GB, Perf 0.851 -> EffScore 1;
    AdaCoMed 8.20 B / 909.39 G / 14.58 GB, Perf 0.788 -> 0.615; MeanAvg -> 0.891."""
    med = {"params": 2.85e9, "flops": 773.74e9, "memory_bytes": 14.44e9}
    ada = {"params": 8.20e9, "flops": 909.39e9, "memory_bytes": 14.58e9}
    assert eff_score(0.851, med, 0.851, med) == pytest.approx(1.0)
    assert eff_score(0.788, ada, 0.851, med) == pytest.approx(0.615, abs=1e-3)
    assert eff_score(0.759, med, 0.851, med) == pytest.approx(0.891, abs=1e-3)
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert math.isnan(geomean([1.0, 0.0]))
    # Perf: mean of AUROC, AUPRC, mF1, Acc (MedMIX OpenI, Table 1 -> 0.851)
    assert perf({"auroc": 0.9570, "auprc": 0.7780, "macro_f1": 0.7246, "accuracy": 0.9463}) == (
        pytest.approx(0.8515, abs=1e-4)
    )


def test_efficiency_rows_and_average_rows() -> None:
    def res(p, f, m):
        return {"params": p, "flops": f, "memory_bytes": m}

    costs = {
        "d1": {"methods": {"medmix": res(2.0, 10.0, 4.0), "big": res(8.0, 10.0, 4.0)}},
        "d2": {"methods": {"medmix": res(4.0, 30.0, 4.0), "big": res(4.0, 30.0, 32.0)}},
    }
    perfs = {("d1", "medmix"): 0.8, ("d1", "big"): 0.8, ("d2", "medmix"): 0.6, ("d2", "big"): 0.9}
    rows = {(r.dataset, r.method): r for r in efficiency_rows(costs, perfs)}
    assert rows[("d1", "medmix")].eff_score == pytest.approx(1.0)
    assert rows[("d1", "big")].eff_score == pytest.approx(1.0 / geomean([4.0, 1.0, 1.0]))
    assert rows[("d2", "big")].eff_score == pytest.approx(1.5 / 2.0)
    avg = rows[("Average", "big")]
    assert (avg.params, avg.flops, avg.memory_bytes) == (6.0, 20.0, 18.0)
    assert avg.perf == pytest.approx(0.85)
    assert rows[("Average", "medmix")].eff_score == pytest.approx(1.0)
    assert avg.eff_score == pytest.approx((0.85 / 0.7) / geomean([2.0, 1.0, 4.5]))


def test_pareto_front() -> None:
    pts = [(1.0, 0.8), (1.0, 0.7), (2.0, 0.9), (3.0, 0.85), (0.5, 0.5)]
    assert pareto_front(pts) == [4, 0, 2]


# -- the roll-up over a dataset's deployed paths ---------------------------------------------

TINY_BERT_EXPERT = {"type": "gatortron", "random_init": True, "max_length": 24,
                    "config": {"hidden_size": 32, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "intermediate_size": 64}}  # fmt: skip
TINY_QWEN2_EXPERT = {"type": "qwen2", "random_init": True, "max_length": 24,
                     "config": {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "num_key_value_heads": 1, "intermediate_size": 96}}  # fmt: skip
TINY_RAG = {
    "query_encoder": {"random_init": True, "max_length": 32,
                      "config": {"hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64}},
    "llm": {"model_class": "Qwen2Model", "random_init": True, "max_length": 32,
            "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "intermediate_size": 64}},
    "device": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-modality text cohort: a torch expert (tiny GatorTron), a non-torch one
    (TF-IDF+SVD) and the RAG expert per modality; tiny Qwen2 teachers; MedMIX and AdaCoMed
    trained on it (their checkpoints are what the roll-up reads)."""
    from cohorts.manifest import read_manifest, write_manifest
    from extractors.cache import CacheMeta, CacheRecords, write_cache
    from fusion.train import run_training
    from medmix.config import dataset_paths
    from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic

    cfg = make_config(tmp_path_factory.mktemp("results"), FUSION | {"max_epochs": 2, "d": 8,
                                                                    "adapter_bottleneck": 4})  # fmt: skip
    write_synthetic(cfg, n=120, teacher_dim=8)
    paths = dataset_paths(cfg, DATASET)
    df, meta = read_manifest(paths.manifest)
    words = ["effusion", "edema", "normal", "atelectasis", "opacity", "stable", "small", "left"]
    for m in ("a", "b"):  # varied texts: TF-IDF+SVD needs a vocabulary to fit
        texts = [
            " ".join(words[(i * k) % 8] for k in range(1, 7)) + f" {m} {i}" for i in range(len(df))
        ]
        df[m] = df[m].where(df[m].isna(), pd.Series(texts, index=df.index))
    write_manifest(df, paths.manifest, meta)
    ids = df["sample_id"].tolist()
    for m in ("a", "b"):
        status = ["ok"] * len(ids)
        emb = np.random.default_rng(0).normal(size=(len(ids), 6)).astype(np.float32)
        write_cache(paths.cache(m, "rag"), CacheRecords(ids, emb, status, [None] * len(ids)),
                    CacheMeta(expert="rag", model_id="offline:rag", dim=6, pooling="none",
                              preprocess_hash="x"))  # fmt: skip
    cfg["datasets"][DATASET]["modalities"] = {"a": ["a1", "a2", "rag"], "b": ["b1", "b2", "rag"]}
    cfg["experts"].update({
        "a1": TINY_BERT_EXPERT, "b1": TINY_BERT_EXPERT,
        "a2": {"type": "tfidf-svd", "n_components": 4}, "b2": {"type": "tfidf-svd", "n_components": 4},
        "rag": {"type": "rag"}, "big-a": TINY_QWEN2_EXPERT, "big-b": TINY_QWEN2_EXPERT,
    })  # fmt: skip
    cfg["rag"] = TINY_RAG
    for method in ("medmix", "adacomed"):
        run_training(cfg, DATASET, method, "full", paths.run_dir("full", method), seeds=[0])
    return cfg


def test_dataset_efficiency_rolls_up_experts_teachers_and_rag(deployed: dict) -> None:
    from extractors.registry import create_expert, register_preset
    from fusion.checkpoint import load_model
    from fusion.efficiency import dataset_efficiency, expert_cost, rag_cost
    from medmix.config import dataset_paths
    from tests.fusion.test_fusion_train import DATASET

    res = dataset_efficiency(deployed, DATASET, ["medmix", "adacomed", "concat"])
    assert set(res["methods"]) == {"medmix", "adacomed"}  # concat has no checkpoint: skipped
    experts = {e["name"]: e for e in res["experts"]}
    # the torch expert: every parameter of its model, FLOPs of one sample, resident bytes
    a1 = experts["a/a1"]
    register_preset("a1", deployed["experts"]["a1"])
    ex = create_expert("a1")
    ex.embed([ex.load("effusion small left", Path("."))])
    modules = find_modules(ex)
    assert a1["torch"] and a1["params"] == count_params(modules) > 10_000
    assert a1["flops"] > 2 * a1["params"] // 4  # at least a few matmuls over the sequence
    # the non-torch expert: measured, 0 parameters and 0 FLOPs, and said so
    a2 = experts["a/a2"]
    assert not a2["torch"] and a2["params"] == a2["flops"] == 0 and "not a torch" in a2["note"]
    b2 = expert_cost(deployed, DATASET, "b", "b2")  # fitted on the manifest's texts first
    assert (b2.name, b2.torch, b2.params, b2.flops) == ("b/b2", False, 0, 0)
    # RAG: the query encoder + the LLM, once for both modalities
    rag = rag_cost(deployed, DATASET, "a")
    assert experts["a/rag"]["params"] == experts["b/rag"]["params"] == rag.params > 0
    assert "retrieval index" in rag.note
    # MedMIX: its committee + its fusion model; RAG and each expert model counted once
    fusion = load_model(dataset_paths(deployed, DATASET).run_dir("full", "medmix") / "seed0")
    med = res["methods"]["medmix"]
    assert med["components"] == ["a/a1", "a/a2", "a/rag", "b/b1", "b/b2", "b/rag", "fusion/medmix"]
    n_fusion = sum(p.numel() for p in fusion.model.parameters())
    assert med["fusion"]["params"] == n_fusion
    assert med["params"] == a1["params"] + experts["b/b1"]["params"] + rag.params + n_fusion
    assert med["flops"] == sum(experts[c]["flops"] for c in med["components"][:-1]) + med[
        "fusion"]["flops"]  # fmt: skip
    assert med["teachers"] == []
    # AdaCoMed runs its large branch at inference: the teachers are on its deployed path
    ada = res["methods"]["adacomed"]
    assert ada["teachers"] == ["a/big-a", "b/big-b"]
    assert {"a/big-a", "b/big-b"} <= set(ada["components"])
    assert set(med["components"][:-1]) < set(ada["components"])
    big = experts["a/big-a"]
    assert big["torch"] and big["params"] == experts["b/big-b"]["params"] > 0  # one preset
    assert ada["params"] == med["params"] - n_fusion + 2 * big["params"] + ada["fusion"]["params"]
    assert ada["flops"] == sum(experts[c]["flops"] for c in ada["components"][:-1]) + ada[
        "fusion"]["flops"]  # fmt: skip
    assert ada["flops"] > med["flops"] - med["fusion"]["flops"] + 2 * big["flops"] - 1
