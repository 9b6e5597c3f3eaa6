"""Training end to end on a small synthetic cohort written as real manifest + cache files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import CacheMeta, CacheRecords, write_cache
from fusion.__main__ import main as fusion_main
from fusion.checkpoint import load_model
from fusion.data import load_fusion_data
from fusion.evaluate import collect_metrics
from fusion.protocols import apply_protocol
from fusion.train import run_training
from fusion.trainer import split_loss
from medmix.config import cache_paths, dataset_paths
from medmix.hparams import FusionHParams

DATASET = "synth"
EXPERTS = {"a": {"a1": 12, "a2": 20}, "b": {"b1": 16, "b2": 8}}


FUSION = {
    "d": 32,
    "adapter_bottleneck": 16,
    "dropout": 0.1,
    "lr": 3.0e-3,
    "router_lr": 1.5e-3,
    "weight_decay": 1.0e-2,
    "clip_grad_norm": 1.0,
    "warmup_epochs": 2,
    "max_epochs": 40,
    "patience": 8,
    "batch_size": 64,
}


def make_config(root: Path, fusion: dict | None = None) -> dict:
    return {
        "results": str(root),
        "seeds": [0],
        "datasets": {
            DATASET: {
                "adapter": "demo",
                "demo": {"kind": "openi"},
                "modalities": {m: list(ex) for m, ex in EXPERTS.items()},
            }
        },
        "experts": {e: {"type": "synthetic"} for ex in EXPERTS.values() for e in ex},
        "fusion": dict(FUSION if fusion is None else fusion),
    }


def write_synthetic(cfg: dict, n: int = 600, seed: int = 0, teacher_dim: int = 0) -> None:
    """Two latent signals a, b; modality a carries a, modality b carries b; the labels need both.

    Some samples miss a modality, some experts failed, a few samples have nothing at all.
    With ``teacher_dim``, teacher caches (``teachers/{m}.parquet``) carry the modality's
    latent with less noise (a better teacher), and the config names them.
    """
    rng = np.random.default_rng(seed)
    paths = dataset_paths(cfg, DATASET)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y1 = (a + b + 0.3 * rng.normal(size=n) > 0).astype(np.int8)
    y2 = (a - b + 0.3 * rng.normal(size=n) > 0.3).astype(np.int8)
    ids = [f"s{i:04d}" for i in range(n)]
    split = np.array(
        ["train"] * int(0.6 * n) + ["val"] * int(0.15 * n) + ["test"] * (n - int(0.75 * n))
    )
    have = {"a": rng.random(n) > 0.1, "b": rng.random(n) > 0.1}
    df = pd.DataFrame(
        {
            "sample_id": ids,
            "patient_id": ids,
            "split": split,
            "a": np.where(have["a"], "text a", None),
            "b": np.where(have["b"], "text b", None),
            "label_y1": y1,
            "label_y2": y2,
        }
    )
    meta = ManifestMeta(DATASET, "binary", {"a": "text", "b": "text"}, ["y1", "y2"], adapter="test")
    write_manifest(df, paths.manifest, meta)
    latent = {"a": a, "b": b}
    for m, experts in EXPERTS.items():
        for e, dim in experts.items():
            w = rng.normal(size=dim)
            emb = (
                np.outer(latent[m], w) + 0.7 * rng.normal(size=(n, dim)) + rng.normal(size=dim) * 3
            )
            failed = rng.random(n) < 0.05
            status = np.where(~have[m], "missing", np.where(failed, "failed", "ok"))
            reason = [None if s == "ok" else s for s in status]
            write_cache(
                paths.cache(m, e),
                CacheRecords(ids, emb.astype(np.float32), status.tolist(), reason),
                CacheMeta(
                    expert=e, model_id=f"offline:{e}", dim=dim, pooling="none", preprocess_hash="x"
                ),
            )
    if teacher_dim:
        cfg["datasets"][DATASET]["teachers"] = {m: f"big-{m}" for m in EXPERTS}
        cfg["experts"].update({f"big-{m}": {"type": "synthetic"} for m in EXPERTS})
        for m in EXPERTS:
            w = rng.normal(size=(2, teacher_dim))
            signal = np.stack([latent[m], latent[m] ** 2 - 1], axis=1) @ w
            emb = signal + 0.2 * rng.normal(size=(n, teacher_dim))
            status = np.where(have[m] & (rng.random(n) > 0.03), "ok", "missing")
            write_cache(
                paths.teacher(m),
                CacheRecords(ids, emb.astype(np.float32), status.tolist(),
                             [None if s == "ok" else s for s in status]),
                CacheMeta(expert=f"big-{m}", model_id=f"offline:big-{m}", dim=teacher_dim,
                          pooling="none", preprocess_hash="x"),
            )  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("results")
    cfg = make_config(root)
    write_synthetic(cfg)
    return cfg


_RUNS: dict[tuple[str, str], dict] = {}


def train(cfg: dict, method: str, tag: str = "", seeds: tuple[int, ...] = (0,)) -> dict:
    """Train once per (method, tag) in this module; returns the summary.json content."""
    key = (method, tag)
    if key not in _RUNS:
        out = dataset_paths(cfg, DATASET).run_dir("full" + tag, method)
        run_training(cfg, DATASET, method, "full", out, seeds=list(seeds), threads=1)
        _RUNS[key] = json.loads((out / "summary.json").read_text()) | {"out": str(out)}
    return _RUNS[key]


def test_data_loading_masks_and_train_only_standardisation(synth: dict) -> None:
    paths = dataset_paths(synth, DATASET)
    data = load_fusion_data(paths.manifest, cache_paths(synth, DATASET))
    assert data.delta.shape == (600, 2, 2)
    assert data.y.shape == (600, 2)
    assert [x.shape[1] for x in data.x] == [12, 20, 16, 8]
    train = data.split == "train"
    for k in range(len(data.x)):
        mi, ei = divmod(k, 2)
        ok = data.delta[:, mi, ei].numpy() > 0
        xn = data.dense(k).numpy()
        assert np.all(xn[~ok] == 0)  # unavailable rows stay zero
        rows = xn[ok & train]
        np.testing.assert_allclose(rows.mean(0), 0, atol=1e-4)  # fitted on train only
        np.testing.assert_allclose(rows.std(0), 1, atol=1e-3)
        assert abs(xn[ok & ~train].mean()) > 0  # other splits use the train statistics
    assert bool((~data.modality_mask.any(1)).any())  # some samples have nothing
    assert apply_protocol(data, "full", 3) is data


@pytest.mark.parametrize("method", ["medmix", "meanavg", "concat"])
def test_methods_beat_chance_and_write_run(synth: dict, method: str) -> None:
    summary = train(synth, method)
    assert summary["mean"]["auroc"] > 0.75, summary
    out = Path(summary["out"])
    seed_dir = out / "seed0"
    for name in (
        "predictions.parquet",
        "metrics.json",
        "history.csv",
        "model.safetensors",
        "config.json",
    ):
        assert (seed_dir / name).is_file(), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    pred = pd.read_parquet(seed_dir / "predictions.parquet")
    assert len(pred) == 600 and not pred.isna().any().any()
    assert {"sample_id", "split", "prob_y1", "prob_y2"} <= set(pred.columns)
    alpha_cols = [c for c in pred.columns if c.startswith("alpha_")]
    beta_cols = [c for c in pred.columns if c.startswith("beta_")]
    if method == "medmix":
        assert alpha_cols == ["alpha_a_a1", "alpha_a_a2", "alpha_b_b1", "alpha_b_b2"]
        assert beta_cols == ["beta_a", "beta_b"]
        beta = pred[beta_cols].to_numpy()
        assert np.all((np.abs(beta.sum(1) - 1) < 1e-5) | (beta.sum(1) == 0))
    else:
        assert not alpha_cols and not beta_cols
    hist = pd.read_csv(seed_dir / "history.csv")
    assert list(hist.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "lr",
        "task_loss",
        "kd_loss",
        "lambda_kd",
    ]
    assert hist["lr"].iloc[0] < FUSION["lr"]  # warm-up
    metrics = json.loads((seed_dir / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test"}
    assert metrics["splits"]["test"]["n"] == 150
    assert metrics["splits"]["test"]["n_no_modality"] >= 0
    assert set(metrics["thresholds"]) == {"y1", "y2"}
    assert metrics["best_epoch"] == int(hist["val_loss"].idxmin())


def test_fusion_beats_each_single_modality(synth: dict) -> None:
    fused = train(synth, "medmix")["mean"]["auroc"]
    only_a = train(synth, "medmix-only-a")
    only_b = train(synth, "medmix-only-b")
    assert fused > max(only_a["mean"]["auroc"], only_b["mean"]["auroc"]) + 0.05
    pred = pd.read_parquet(Path(only_a["out"]) / "seed0" / "predictions.parquet")
    assert [c for c in pred.columns if c.startswith(("alpha_", "beta_"))] == [
        "alpha_a_a1",
        "alpha_a_a2",
        "beta_a",
    ]


def test_same_seed_same_metrics(synth: dict) -> None:
    first = train(synth, "medmix")
    again = train(synth, "medmix", tag="-again")
    m1 = json.loads((Path(first["out"]) / "seed0" / "metrics.json").read_text())
    m2 = json.loads((Path(again["out"]) / "seed0" / "metrics.json").read_text())
    assert m1["splits"] == m2["splits"]
    assert m1["thresholds"] == m2["thresholds"]
    p1 = pd.read_parquet(Path(first["out"]) / "seed0" / "predictions.parquet")
    p2 = pd.read_parquet(Path(again["out"]) / "seed0" / "predictions.parquet")
    pd.testing.assert_frame_equal(p1, p2)


def test_saved_model_reloads_to_identical_predictions(synth: dict) -> None:
    run = Path(train(synth, "medmix")["out"]) / "seed0"
    loaded = load_model(run)
    assert loaded.spec.modalities == ["a", "b"] and loaded.spec.label_names == ["y1", "y2"]
    paths = dataset_paths(synth, DATASET)
    data = load_fusion_data(
        paths.manifest, cache_paths(synth, DATASET), standardization=loaded.standardization
    )
    pred = loaded.predict(data)
    # the restored checkpoint is the best-validation one
    metrics = json.loads((run / "metrics.json").read_text())
    val_loss = split_loss(loaded.model, data, data.split_index("val"), FusionHParams())
    assert val_loss == pytest.approx(metrics["best_val_loss"], rel=1e-5)
    saved = pd.read_parquet(run / "predictions.parquet")
    np.testing.assert_allclose(pred.probs[:, 0], saved["prob_y1"].to_numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(pred.probs[:, 1], saved["prob_y2"].to_numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        pred.alpha[:, 1, 0], saved["alpha_b_b1"].to_numpy(), rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(pred.beta[:, 0], saved["beta_a"].to_numpy(), rtol=0, atol=1e-7)


def test_evaluate_collects_long_table(synth: dict, tmp_path: Path) -> None:
    train(synth, "medmix")
    train(synth, "meanavg")
    out = tmp_path / "metrics.parquet"
    assert (
        fusion_main(
            ["evaluate", "--config", json.dumps(synth), "--dataset", DATASET, "--out", str(out)]
        )
        == 0
    )
    df = pd.read_parquet(out)
    assert list(df.columns) == [
        "dataset",
        "protocol",
        "method",
        "seed",
        "split",
        "task",
        "metric",
        "value",
    ]
    assert {"medmix", "meanavg"} <= set(df["method"])
    assert set(df["task"]) >= {"macro", "y1", "y2"}
    base = {"auroc", "auprc", "f1", "macro_f1", "accuracy", "brier", "ece"}
    ci = {f"{m}_ci_{side}" for m in base for side in ("low", "high")}
    assert base <= set(df["metric"]) <= base | ci
    label_metrics = set(df.loc[df["task"] != "macro", "metric"])
    assert {"auroc", "auprc", "f1", "accuracy", "brier", "ece"} <= label_metrics
    assert not df.loc[df["split"] == "val", "metric"].str.contains("_ci_").any()
    lo = df.query("split == 'test' and task == 'macro' and metric == 'auroc_ci_low'")["value"]
    hi = df.query("split == 'test' and task == 'macro' and metric == 'auroc_ci_high'")["value"]
    assert len(lo) and (lo.to_numpy() <= hi.to_numpy()).all()
    assert df["value"].notna().all()
    row = df.query(
        "protocol == 'full' and method == 'medmix' and split == 'test' and task == 'macro' and metric == 'auroc'"
    )
    assert len(row) == 1
    summary = json.loads(
        (dataset_paths(synth, DATASET).run_dir("full", "medmix") / "summary.json").read_text()
    )
    assert row["value"].iloc[0] == pytest.approx(summary["per_seed"]["0"]["auroc"])
    assert len(collect_metrics(dataset_paths(synth, DATASET).root / "runs", DATASET)) == len(df)


def test_cli_train_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fusion = FUSION | {"max_epochs": 2}
    cfg = make_config(tmp_path / "results", fusion)
    write_synthetic(cfg, n=120)
    out = tmp_path / "results" / DATASET / "runs" / "full" / "concat"
    out.mkdir(parents=True)  # Snakemake creates the output's folder before the job runs
    (out / "stale.txt").write_text("old")
    argv = ["train", "--config", json.dumps(cfg), "--dataset", DATASET, "--method", "concat"]
    assert fusion_main([*argv, "--protocol", "full", "--out", str(out), "--seeds", "0", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed1", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert set(summary["std"]) == {"auroc", "auprc", "f1", "macro_f1", "accuracy", "brier", "ece"}

    # A job that dies after its first seed leaves neither a finished-looking run nor temp files.
    import fusion.train as ft

    real = ft.write_seed
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "write_seed", dying)
    out2 = out.parent / "meanavg"
    with pytest.raises(KeyboardInterrupt):
        fusion_main(
            [
                "train",
                "--config",
                json.dumps(cfg),
                "--dataset",
                DATASET,
                "--method",
                "meanavg",
                "--out",
                str(out2),
            ]
            + ["--seeds", "0", "1"]
        )
    assert not out2.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_multiclass_run_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cfg = make_config(tmp_path / "results", FUSION | {"max_epochs": 3})
    cfg["datasets"][DATASET]["modalities"] = {"a": ["a1"]}
    paths = dataset_paths(cfg, DATASET)
    n = 90
    ids = [f"s{i}" for i in range(n)]
    cls = rng.integers(0, 3, size=n)
    df = pd.DataFrame(
        {
            "sample_id": ids,
            "patient_id": ids,
            "split": ["train"] * 50 + ["val"] * 20 + ["test"] * 20,
            "a": "t",
            "label_grade": cls,
        }
    )
    meta = ManifestMeta(
        DATASET,
        "multiclass",
        {"a": "text"},
        ["grade"],
        adapter="test",
        extra={"n_classes": 3, "class_names": ["g1", "g2", "g3"]},
    )
    write_manifest(df, paths.manifest, meta)
    emb = np.eye(3)[cls] @ rng.normal(size=(3, 12)) + 0.1 * rng.normal(size=(n, 12))
    write_cache(
        paths.cache("a", "a1"),
        CacheRecords(ids, emb.astype(np.float32), ["ok"] * n, [None] * n),
        CacheMeta(expert="a1", model_id="offline:a1", dim=12, pooling="none", preprocess_hash="x"),
    )
    run_training(cfg, DATASET, "medmix", "full", paths.run_dir("full", "medmix"), seeds=[0])
    seed_dir = paths.run_dir("full", "medmix") / "seed0"
    pred = pd.read_parquet(seed_dir / "predictions.parquet")
    probs = pred[["prob_grade_g1", "prob_grade_g2", "prob_grade_g3"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    metrics = json.loads((seed_dir / "metrics.json").read_text())
    assert set(metrics["splits"]["test"]["macro"]) == {
        "auroc",
        "auprc",
        "f1",
        "macro_f1",
        "accuracy",
        "brier",
        "ece",
    }
    assert torch.isfinite(torch.tensor(pred["beta_a"].to_numpy())).all()
