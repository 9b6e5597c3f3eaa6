"""Leakage guards: the test split never reaches fitting, training, early stopping,
thresholds or normalisation statistics.

Each test perturbs only the test split — its labels, its features (embeddings, teacher
embeddings, note text, EHR files) — reruns, and checks that everything fitted is unchanged:
the experts' fitted state and the non-test embeddings; the trained weights, the train-split
standardisation, the training history, the chosen epoch, the val thresholds and val metrics.
The test metrics themselves must change (the perturbation did reach the data).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.manifest import ManifestMeta, read_manifest, write_manifest
from extractors.cache import CacheRecords, read_cache, read_meta, write_cache
from extractors.extract import extract
from extractors.registry import create_expert
from fusion.train import run_training
from medmix.config import dataset_paths
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic
from tests.helpers import tiny_text_manifest


def _compare_non_test(a: Path, b: Path, split: np.ndarray) -> None:
    ca, cb = read_cache(a), read_cache(b)
    test = split == "test"
    assert read_meta(a).preprocess_hash == read_meta(b).preprocess_hash  # same fitted state
    assert ca.meta.dim == cb.meta.dim
    np.testing.assert_array_equal(ca.embeddings[~test], cb.embeddings[~test])
    np.testing.assert_array_equal(ca.status[~test], cb.status[~test])
    assert (ca.ok & test).any()
    assert not np.array_equal(ca.embeddings[test], cb.embeddings[test])  # the change arrived


def test_tfidf_svd_fits_on_the_training_notes_only(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "a.parquet", n=60)
    df, meta = read_manifest(manifest)
    out_a = tmp_path / "a_cache.parquet"
    extract(manifest, "note", create_expert("tfidf-svd", n_components=6, min_df=1), out_a,
            progress=False)  # fmt: skip
    test = df["split"] == "test"
    words = "zebra quartz vortex lumen secretword " * 5
    df.loc[test, "note"] = [words + str(i) if isinstance(v, str) and v.strip() else v
                            for i, v in enumerate(df.loc[test, "note"])]  # fmt: skip
    perturbed = write_manifest(df, tmp_path / "b.parquet", meta)
    out_b = tmp_path / "b_cache.parquet"
    extract(perturbed, "note", create_expert("tfidf-svd", n_components=6, min_df=1), out_b,
            progress=False)  # fmt: skip
    _compare_non_test(out_a, out_b, df["split"].to_numpy())


def _ehr_manifest(tmp_path: Path, name: str, perturb_test: bool) -> Path:
    root = tmp_path / f"data-{name}"
    root.mkdir()
    rows = []
    for i in range(30):
        rng = np.random.default_rng(i)
        split = ("train", "val", "test")[i % 3]
        t = np.arange(12, dtype=float)
        frame = {
            "hour": t,
            "hr": 80 + 5 * rng.normal(size=12),
            "sbp": 120 + 9 * rng.normal(size=12),
        }
        if perturb_test and split == "test":
            frame["hr"] = 900 + 50 * np.random.default_rng(1000 + i).normal(size=12)  # other values
            frame["secret_lab"] = rng.normal(size=12)  # a variable only test files have
        pd.DataFrame(frame).to_parquet(root / f"s{i}.parquet", index=False)
        rows.append({"sample_id": f"s{i:02d}", "patient_id": f"p{i:02d}", "split": split,
                     "ehr": f"s{i}.parquet", "label_y": i % 2})  # fmt: skip
    meta = ManifestMeta(
        "ehr", "binary", {"ehr": "timeseries"}, ["y"], adapter="test", root=str(root)
    )
    return write_manifest(pd.DataFrame(rows), tmp_path / f"{name}.parquet", meta)


@pytest.mark.parametrize("expert", ["ts-stats", "catch22"])
def test_timeseries_variables_learned_on_training_files_only(tmp_path: Path, expert: str) -> None:
    if expert == "catch22":
        pytest.importorskip("pycatch22")
    a, b = _ehr_manifest(tmp_path, "a", False), _ehr_manifest(tmp_path, "b", True)
    ea, eb = create_expert(expert), create_expert(expert)
    extract(a, "ehr", ea, tmp_path / "a_cache.parquet", progress=False)
    extract(b, "ehr", eb, tmp_path / "b_cache.parquet", progress=False)
    assert ea.variables == eb.variables == ["hr", "sbp"]  # never the test-only variable
    split = read_manifest(a)[0]["split"].to_numpy()
    _compare_non_test(tmp_path / "a_cache.parquet", tmp_path / "b_cache.parquet", split)


# -- training -------------------------------------------------------------------------------

# lambda_kd > 0: MedMIX distils from the teacher caches, so their (perturbed) test rows would
# reach training if the distillation loss ever read the test split.
LEAK_FUSION = FUSION | {"max_epochs": 10, "patience": 3, "d": 16, "adapter_bottleneck": 8,
                        "pos_weight": "auto", "lambda_kd": 0.5}  # fmt: skip


def _scramble_rows(caches: list[Path], rows: np.ndarray, rng: np.random.Generator) -> None:
    """Overwrite the ok embeddings of ``rows`` in every cache with large random vectors."""
    for path in caches:
        data = read_cache(path)
        emb = data.embeddings.copy()
        hit = rows & data.ok
        emb[hit] = rng.normal(size=(hit.sum(), emb.shape[1])) * 50
        rec = CacheRecords(list(data.sample_ids), emb, list(data.status), list(data.reason))
        write_cache(path, rec, data.meta)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The synthetic cohort (two modalities, teachers for distillation) and a copy whose test
    split has flipped labels and replaced features (student and teacher embeddings)."""
    base = tmp_path_factory.mktemp("leak")
    cfg_a = make_config(base / "a", LEAK_FUSION)
    write_synthetic(cfg_a, n=320, teacher_dim=6)
    cfg_b = json.loads(json.dumps(cfg_a))
    cfg_b["results"] = str(base / "b")
    pa_, pb = dataset_paths(cfg_a, DATASET), dataset_paths(cfg_b, DATASET)
    shutil.copytree(pa_.root, pb.root)
    df, meta = read_manifest(pb.manifest)
    test = (df["split"] == "test").to_numpy()
    for col in meta.label_columns():
        df.loc[test, col] = 1 - df.loc[test, col]
    write_manifest(df, pb.manifest, meta)
    caches = sorted(pb.root.glob("embeddings/*/*.parquet")) + sorted(
        pb.root.glob("teachers/*.parquet")
    )
    assert len(caches) == 6
    _scramble_rows(caches, test, np.random.default_rng(123))
    return {"a": cfg_a, "b": cfg_b}


def _artefacts(run: Path) -> dict:
    out = {}
    for seed_dir in sorted(run.glob("seed*")):
        m = json.loads((seed_dir / "metrics.json").read_text())
        cfg = json.loads((seed_dir / "config.json").read_text())
        out[seed_dir.name] = {
            "weights": (seed_dir / "model.safetensors").read_bytes(),
            "standardization": cfg["standardization"],
            "history": (seed_dir / "history.csv").read_text(),
            "thresholds": m["thresholds"],
            "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"],
            "best_val_loss": m["best_val_loss"],
            "val": m["splits"]["val"],
            "test": m["splits"]["test"]["macro"],
        }
    return out


_TRAINED: dict[tuple[str, str, str], dict] = {}


def _train(cfg: dict, method: str, protocol: str) -> dict:
    """The artefacts of one run (trained once per results folder, method and protocol)."""
    key = (cfg["results"], method, protocol)
    if key not in _TRAINED:
        out = dataset_paths(cfg, DATASET).run_dir(protocol, method)
        run_training(cfg, DATASET, method, protocol, out, seeds=[0, 1], threads=1)
        _TRAINED[key] = _artefacts(out)
    return _TRAINED[key]


def _kd_losses(history: str) -> list[float]:
    rows = list(csv.DictReader(io.StringIO(history)))
    return [float(r["kd_loss"]) for r in rows if r["kd_loss"] not in ("", "nan")]


# MedMIX over every protocol family that changes the training data; the baselines on the full
# protocol: concat (a plain baseline) and AdaCoMed, which reads the teacher caches as inputs.
@pytest.mark.parametrize(
    ("method", "protocol"),
    [
        ("medmix", "full"),
        ("medmix", "train_random-0.5"),
        ("medmix", "mnar-label-0.5"),
        ("medmix", "train_replay-1.0"),
        ("concat", "full"),
        ("adacomed", "full"),
    ],
)
def test_training_artefacts_ignore_the_test_split(
    cohorts: dict, method: str, protocol: str
) -> None:
    runs = {key: _train(cfg, method, protocol) for key, cfg in cohorts.items()}
    assert list(runs["a"]) == ["seed0", "seed1"]
    for seed in runs["a"]:
        a, b = runs["a"][seed], runs["b"][seed]
        assert a["test"] != b["test"]  # the test split did change
        for key in ("standardization", "history", "thresholds", "best_epoch", "epochs_run",
                    "best_val_loss", "val"):  # fmt: skip
            assert a[key] == b[key], (method, seed, key)
        assert a["weights"] == b["weights"], (method, seed)
        if method == "medmix":  # distillation was on: the teacher caches were read
            assert any(x > 0 for x in _kd_losses(a["history"])), seed


@pytest.mark.parametrize("method", ["medmix", "adacomed"])
def test_teacher_perturbation_of_training_rows_does_change_training(
    cohorts: dict, method: str, tmp_path: Path
) -> None:
    """Control for the test above: the same perturbation applied to the TRAINING rows of the
    teacher caches only does change the trained weights, so the teachers are really read."""
    cfg = json.loads(json.dumps(cohorts["a"]))
    cfg["results"] = str(tmp_path / "c")
    src, dst = dataset_paths(cohorts["a"], DATASET), dataset_paths(cfg, DATASET)
    shutil.copytree(src.root, dst.root, ignore=shutil.ignore_patterns("runs"))
    train = (read_manifest(dst.manifest)[0]["split"] == "train").to_numpy()
    _scramble_rows(sorted(dst.root.glob("teachers/*.parquet")), train, np.random.default_rng(7))
    base, changed = _train(cohorts["a"], method, "full"), _train(cfg, method, "full")
    assert base["seed0"]["weights"] != changed["seed0"]["weights"]
