"""Structural ablations (Table E7): the variants train what their row labels say."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusion.ablations import select_best_experts, train_variant, variant_config
from fusion.checkpoint import load_model
from fusion.data import FusionData, Standardization
from fusion.registry import ModelSpec, build_model
from fusion.registry import load_builtin_methods as register_variants
from medmix.ablation_plan import UNIFORM_METHOD, ablation_variants, expert_families, variant_by_name
from medmix.config import dataset_paths
from tests.paper_helpers import make_config, write_cohort

FAMILIES = {"biomedical": ["a1", "b1", "c1"], "general": ["a2", "b2", "c2"]}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"), seeds=[0])
    cfg["fusion"]["max_epochs"] = 3
    write_cohort(cfg, n=240)
    return cfg


def test_uniform_mean_gives_equal_alpha_over_available_experts() -> None:
    register_variants()
    spec = ModelSpec(UNIFORM_METHOD, ["a", "b"], {"a": ["a1", "a2", "a3"], "b": ["b1"]},
                     {"a": {"a1": 6, "a2": 5, "a3": 4}, "b": {"b1": 3}}, "binary", ["y"], 1,
                     d=8, adapter_bottleneck=4)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(spec).eval()
    xs = [torch.randn(4, d) * 5 for d in (6, 5, 4, 3)]
    delta = torch.zeros(4, 2, 3)
    delta[0, 0, :] = 1  # all three experts
    delta[1, 0, [0, 2]] = 1  # two of three
    delta[2, 0, 1] = 1  # one
    delta[:3, 1, 0] = 1
    # sample 3: nothing at all
    for e_i in (0, 2, 1):
        xs[e_i][~delta[:, 0, e_i].bool()] = 0
    with torch.no_grad():
        out = model(xs, delta)
    want = torch.tensor([[1 / 3] * 3, [0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out.alpha[:, 0, :], want)
    torch.testing.assert_close(out.alpha[:, 1, 0], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # the same weights whatever the inputs: no router to learn
    xs2 = [x * -3 + 1 for x in xs]
    for e_i in range(3):
        xs2[e_i][~delta[:, 0, e_i].bool()] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(xs2, delta).alpha, out.alpha)


def _probe_data(n: int = 600, seed: int = 0) -> FusionData:
    """Two modalities, three experts each; the planted informative expert is the SECOND of
    modality a and the THIRD of b on the train/val splits (on test, the first one is)."""
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - 3 * n // 4))
    y = (rng.random(n) < 0.4).astype(np.float32)
    experts = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2", "b3"]}
    informative = {"a": 1, "b": 2}
    test = split == "test"
    xs = []
    for m, names in experts.items():
        for k, _ in enumerate(names):
            x = rng.normal(size=(n, 5))
            if k == informative[m]:
                x[~test, 0] += 2.0 * y[~test]
            if k == 0:  # a test-only signal: a selection that peeked at test would pick it
                x[test, 0] += 4.0 * y[test]
            xs.append(torch.tensor(x, dtype=torch.float32))
    delta = torch.ones(n, 2, 3)
    delta[:20, 0, 1] = 0  # a few samples miss the informative expert
    xs[1][:20] = 0
    dims = {m: {e: 5 for e in es} for m, es in experts.items()}
    std = Standardization({m: {e: np.zeros(5) for e in es} for m, es in experts.items()},
                          {m: {e: np.ones(5) for e in es} for m, es in experts.items()})  # fmt: skip
    return FusionData("probe", "binary", ["y"], None, ["a", "b"], experts, dims,
                      np.array([f"s{i:04d}" for i in range(n)], dtype=object),
                      split.astype(object), xs, delta, torch.tensor(y)[:, None], std)  # fmt: skip


def test_best_expert_is_picked_on_validation_never_on_test() -> None:
    data = _probe_data()
    sel = select_best_experts(data)
    assert {m: v["expert"] for m, v in sel.items()} == {"a": "a2", "b": "b3"}
    assert sel["a"]["val_auroc"]["a2"] > 0.8 > sel["a"]["val_auroc"]["a1"]
    # the test rows (features and labels) can be anything: the scores do not move
    test = torch.from_numpy(data.split == "test")
    scrambled = replace(
        data,
        x=[
            torch.where(test[:, None], torch.randn_like(x) * 9, x)
            for x in map(data.dense, range(len(data.x)))
        ],
        y=torch.where(test[:, None], 1 - data.y, data.y),
    )
    assert select_best_experts(scrambled) == sel
    # with no validation split the training split stands in (never the test split)
    no_val = replace(data, split=np.where(data.split == "val", "train", data.split))
    assert select_best_experts(no_val)["a"]["expert"] == "a2"


def test_family_variants_drop_the_right_experts(cohort: dict) -> None:
    cfg = {**cohort, "ablations": {"enabled": True, "families": FAMILIES}}
    cfg["datasets"] = {"syn": {**cohort["datasets"]["syn"]}}
    # modality c keeps only a general expert and a RAG one: w/o general leaves it the RAG one
    cfg["datasets"]["syn"]["modalities"] = {"a": ["a1", "a2"], "b": ["b1", "b2", "rag"],
                                            "c": ["c2"]}  # fmt: skip
    cfg["experts"] = {**cohort["experts"], "rag": {"type": "rag"}}
    fams = expert_families(cfg, "syn")
    assert fams == {"a1": "biomedical", "a2": "general", "b1": "biomedical", "b2": "general",
                    "rag": "rag", "c2": "general"}  # fmt: skip
    rows = {v.name: v for v in ablation_variants(cfg, "syn")}
    assert [v.label for v in rows.values() if v.kind == "no_family"] == [
        "w/o biomedical experts", "w/o general experts", "w/o RAG experts"]  # fmt: skip
    got = {}
    for name in ("no_biomedical", "no_general", "no_rag"):
        vcfg, method = variant_config(cfg, "syn", rows[name])
        assert method == "medmix"
        got[name] = vcfg["datasets"]["syn"]["modalities"]
    assert got["no_biomedical"] == {"a": ["a2"], "b": ["b2", "rag"], "c": ["c2"]}
    assert got["no_general"] == {"a": ["a1"], "b": ["b1", "rag"]}  # c emptied: dropped
    assert got["no_rag"] == {"a": ["a1", "a2"], "b": ["b1", "b2"], "c": ["c2"]}
    assert cfg["datasets"]["syn"]["modalities"]["c"] == ["c2"]  # the input config untouched
    # a family whose removal leaves no expert at all is not a row
    only_rag = {**cfg, "datasets": {"syn": {**cfg["datasets"]["syn"],
                                            "modalities": {"a": ["rag"]}}}}  # fmt: skip
    assert not [v for v in ablation_variants(only_rag, "syn") if v.kind == "no_family"]
    typo = {**cfg, "ablations": {"families": {"general": ["a2", "dinov2_b"]}}}
    with pytest.raises(ValueError, match=r"ablations\.families\.general: \['dinov2_b'\]"):
        expert_families(typo, "syn")


def test_no_distill_trains_medmix_with_lambda_zero(cohort: dict, monkeypatch) -> None:
    cfg = {**cohort, "fusion": {**cohort["fusion"], "lambda_kd": 0.3}}
    v = next(v for v in ablation_variants(cfg, "syn") if v.kind == "no_distill")
    assert (v.protocol, v.method, v.trained_here) == ("ablation", "no_distill", True)
    calls = []

    def fake_run(vcfg, dataset, method, protocol, out, **kw):
        calls.append((vcfg["fusion"]["lambda_kd"], method, protocol, vcfg["datasets"]))
        Path(out).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr("fusion.train.run_training", fake_run)
    out = train_variant(cfg, "syn", "no_distill", Path(cohort["results"]) / "nd")
    assert calls == [(0.0, "medmix", "full", cfg["datasets"])]
    assert cfg["fusion"]["lambda_kd"] == 0.3  # the caller's config untouched
    meta = json.loads((out / "selection.json").read_text())
    assert (meta["method"], meta["lambda_kd"], meta["label"]) == (
        "medmix", 0.0, "w/o distillation")  # fmt: skip
    # distillation off in the config: the row is MedMIX's own run, nothing retrained
    off = {**cohort, "fusion": {**cohort["fusion"], "lambda_kd": 0.0}}
    v = next(v for v in ablation_variants(off, "syn") if v.kind == "no_distill")
    assert (v.protocol, v.method, v.trained_here) == ("full", "medmix", False)
    assert variant_by_name(off, "syn", "no_distill").trained_here  # still trainable on request
    with pytest.raises(ValueError, match="no ablation variant 'no_router'"):
        variant_by_name(off, "syn", "no_router")


def test_table_e7_rows_and_what_they_train(cohort: dict) -> None:
    cfg = {**cohort, "ablations": {"enabled": True, "families": FAMILIES}}
    rows = ablation_variants(cfg, "syn")
    assert [(v.label, f"{v.protocol}/{v.method}") for v in rows] == [
        ("MedMIX", "full/medmix"),
        ("w/o distillation", "full/medmix"),  # lambda_kd is 0 in the helper's config
        ("w/o intra-modality fusion", "ablation/best_expert"),
        ("w/o intra-modality fusion (uniform mean)", "ablation/uniform_mean"),
        ("w/o biomedical experts", "ablation/no_biomedical"),
        ("w/o general experts", "ablation/no_general"),
        ("w/o inter-modality fusion (keep a)", "full/medmix-only-a"),
        ("w/o inter-modality fusion (keep b)", "full/medmix-only-b"),
        ("w/o inter-modality fusion (keep c)", "full/medmix-only-c"),
    ]
    only = {**cfg, "ablations": {"enabled": True, "variants": ["uniform_mean"]}}
    assert [v.name for v in ablation_variants(only, "syn")] == ["medmix", "uniform_mean"]
    runs = dataset_paths(cfg, "syn").root / "runs" / "ablation"
    # best_expert: one expert per modality, the validation pick, recorded with the run
    out = train_variant(cfg, "syn", "best_expert", runs / "best_expert")
    meta = json.loads((out / "selection.json").read_text())
    picks = {m: v["expert"] for m, v in meta["selection"].items()}
    assert meta["modalities"] == {m: [e] for m, e in picks.items()}
    spec = load_model(out / "seed0").spec
    assert spec.experts == meta["modalities"] and spec.method == "medmix"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and 0.0 <= summary["mean"]["auroc"] <= 1.0
    # uniform_mean: the medmix-uniform model over every expert; its α is uniform on test
    out = train_variant(cfg, "syn", "uniform_mean", runs / "uniform_mean")
    meta = json.loads((out / "selection.json").read_text())
    assert meta["method"] == UNIFORM_METHOD
    assert meta["modalities"] == cohort["datasets"]["syn"]["modalities"]
    pred = pd.read_parquet(out / "seed0" / "predictions.parquet")
    alpha = pred[["alpha_a_a1", "alpha_a_a2"]].to_numpy()
    both = (alpha > 0).all(axis=1)
    assert both.any()
    np.testing.assert_allclose(alpha[both], 0.5, atol=1e-6)
    # no_general through the real trainer: the checkpoint holds the biomedical experts only
    out = train_variant(cfg, "syn", "no_general", runs / "no_general")
    assert load_model(out / "seed0").spec.experts == {"a": ["a1"], "b": ["b1"], "c": ["c1"]}
