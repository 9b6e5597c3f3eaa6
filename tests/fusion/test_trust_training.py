"""A run never reports a model that did not train as a normal run (fusion.train_checks).

Each test writes a small synthetic cohort (two modalities, labels ``y1`` and ``y2``; 72 train,
18 val and 30 test rows) to ``tmp_path``, breaks its labels the way a real cohort can be
broken (read_manifest / write_manifest) and trains it through ``run_training`` or the
``python -m fusion`` command line. What is checked: the exact error (type, one line naming the
dataset, method, seed, epoch or labels) with nothing left at the run folder, or the documented
fallback with the warning recorded in ``summary.json`` and the seeds' ``metrics.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.manifest import ManifestMeta, read_manifest, write_manifest
from extractors.cache import CacheMeta, CacheRecords, write_cache
from fusion.__main__ import main as fusion_main
from fusion.evaluate import collect_metrics
from fusion.probe import run_probe
from fusion.train import run_training
from fusion.train_checks import TrainingError
from medmix.cli import run_cli
from medmix.config import dataset_paths
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic

N = 120  # 72 train, 18 val, 30 test rows
FAST = FUSION | {"max_epochs": 3, "patience": 2}
UNSEEN = "early stopping on the training loss, decision thresholds 0.5"


def cohort(tmp_path: Path, edit: Callable[[pd.DataFrame], None] | None = None, **fusion) -> dict:
    """The synthetic cohort with its manifest edited by ``edit`` (labels, splits)."""
    cfg = make_config(tmp_path / "results", FAST | fusion)
    write_synthetic(cfg, n=N)
    if edit is not None:
        path = dataset_paths(cfg, DATASET).manifest
        df, meta = read_manifest(path)
        for c in ("label_y1", "label_y2"):
            df[c] = df[c].astype("float64")
        edit(df)
        write_manifest(df, path, meta)
    return cfg


def train(cfg: dict, method: str = "medmix", seeds: tuple[int, ...] = (0, 1)) -> dict:
    out = dataset_paths(cfg, DATASET).run_dir("full", method)
    run_training(cfg, DATASET, method, "full", out, seeds=list(seeds), threads=1)
    return json.loads((out / "summary.json").read_text()) | {"out": out}


def seed_json(summary: dict, seed: int) -> dict:
    return json.loads((summary["out"] / f"seed{seed}" / "metrics.json").read_text())


def assert_trained(summary: dict) -> None:
    """Every seed kept a state it reached by training (never the initial weights)."""
    assert summary["status"] == "ok"
    for seed in summary["seeds"]:
        m = seed_json(summary, seed)
        assert m["best_epoch"] >= 0 and m["best_val_loss"] is not None
        hist = pd.read_csv(summary["out"] / f"seed{seed}" / "history.csv")
        assert np.isfinite(hist["val_loss"]).all() and len(hist) == m["epochs_run"]


def assert_nothing_left(cfg: dict, method: str = "medmix") -> None:
    out = dataset_paths(cfg, DATASET).run_dir("full", method)
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


def rows(df: pd.DataFrame, split: str) -> pd.Series:
    return df["split"] == split


# -- the validation split ---------------------------------------------------------------------


def test_all_unknown_val_labels_fall_back_to_the_training_loss_with_a_recorded_warning(
    tmp_path: Path,
) -> None:
    """The reported case: every val label null. It trained (best epoch >= 0, val_loss = the
    training loss in history.csv), the warning is in summary.json and every metrics.json."""

    def unknown_val(df: pd.DataFrame) -> None:
        df.loc[rows(df, "val"), ["label_y1", "label_y2"]] = np.nan

    cfg = cohort(tmp_path, unknown_val)
    out = dataset_paths(cfg, DATASET).run_dir("full", "medmix")
    argv = ["train", "--config", json.dumps(cfg), "--dataset", DATASET, "--method", "medmix",
            "--protocol", "full", "--out", str(out), "--seeds", "0", "1"]  # fmt: skip
    assert fusion_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text()) | {"out": out}
    warning = f"synth medmix: the val split has 18 rows but no known label (y1, y2): {UNSEEN}"
    assert summary["warnings"] == [warning]
    assert_trained(summary)
    for seed in (0, 1):
        m = seed_json(summary, seed)
        assert m["warnings"] == [warning]
        assert m["thresholds"] == {"y1": 0.5, "y2": 0.5}
        hist = pd.read_csv(out / f"seed{seed}" / "history.csv")
        np.testing.assert_allclose(hist["val_loss"], hist["train_loss"], rtol=1e-6)


def test_the_probe_says_it_cannot_choose_c_without_val_labels(tmp_path: Path) -> None:
    """The linear probe has no early stopping: with every val label unknown its warning says
    that C and the class weight are the grid's first values, and the run records it."""

    def unknown_val(df: pd.DataFrame) -> None:
        df.loc[rows(df, "val"), ["label_y1", "label_y2"]] = np.nan

    cfg = cohort(tmp_path, unknown_val)
    out = dataset_paths(cfg, DATASET).run_dir("full", "linear-probe")
    run_probe(cfg, DATASET, "linear-probe", "full", out, seeds=[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [
        "synth linear-probe: no known label in the val split, so C and the class weight cannot "
        "be chosen on val: the first values of the grid are used (see probe.selection, "
        "criterion 'none')"
    ]
    chosen = summary["probe"]["selection"]["0"]
    assert {v["criterion"] for v in chosen.values()} == {"none"}


def test_no_val_split_records_its_fallback(tmp_path: Path) -> None:
    def no_val(df: pd.DataFrame) -> None:
        df.loc[rows(df, "val"), "split"] = "train"

    summary = train(cohort(tmp_path, no_val))
    assert summary["warnings"] == [f"synth medmix: no validation split: {UNSEEN}"]
    assert_trained(summary)


def test_all_unknown_val_labels_with_auroc_early_stopping(tmp_path: Path) -> None:
    def unknown_val(df: pd.DataFrame) -> None:
        df.loc[rows(df, "val"), ["label_y1", "label_y2"]] = np.nan

    summary = train(cohort(tmp_path, unknown_val, early_stopping="auroc"), seeds=(0,))
    assert summary["warnings"] == [
        f"synth medmix: the val split has 18 rows but no known label (y1, y2): {UNSEEN}"
    ]
    assert_trained(summary)


def test_a_label_unknown_in_val_is_named(tmp_path: Path) -> None:
    def y2_unknown_in_val(df: pd.DataFrame) -> None:
        df.loc[rows(df, "val"), "label_y2"] = np.nan

    summary = train(cohort(tmp_path, y2_unknown_in_val))
    assert summary["warnings"] == [
        "synth medmix: label(s) y2 have no known value in the val split: left out of early "
        "stopping, decision threshold 0.5"
    ]
    assert_trained(summary)
    assert seed_json(summary, 0)["thresholds"]["y2"] == 0.5


def test_a_label_with_one_class_in_val_is_named(tmp_path: Path) -> None:
    def y1_positive_in_val(df: pd.DataFrame) -> None:
        df.loc[rows(df, "val"), "label_y1"] = 1.0

    summary = train(cohort(tmp_path, y1_positive_in_val), method="concat", seeds=(0,))
    assert summary["warnings"] == [
        "synth concat: label(s) y1 have a single class in the val split: decision threshold 0.5"
    ]
    assert seed_json(summary, 0)["thresholds"]["y1"] == 0.5


# -- the train split --------------------------------------------------------------------------


def test_a_single_class_training_label_is_warned_and_recorded(tmp_path: Path) -> None:
    """y2 only negative in train: the model can only learn a constant for it (test AUROC of a
    constant); said in the log, summary.json and metrics.json, not left to a bare 0.500."""

    def y2_negative_in_train(df: pd.DataFrame) -> None:
        df.loc[rows(df, "train"), "label_y2"] = 0.0

    summary = train(cohort(tmp_path, y2_negative_in_train))
    warning = (
        "synth medmix: label y2 has only negatives among the 72 known labels of the train "
        "split: the model can only learn a constant for it (test AUROC of a constant, 0.5)"
    )
    assert summary["warnings"] == [warning]
    assert seed_json(summary, 1)["warnings"] == [warning]
    assert_trained(summary)


def test_a_training_label_without_any_known_value_is_warned(tmp_path: Path) -> None:
    def y1_unknown_in_train(df: pd.DataFrame) -> None:
        df.loc[rows(df, "train"), "label_y1"] = np.nan

    summary = train(cohort(tmp_path, y1_unknown_in_train), method="concat", seeds=(0,))
    assert summary["warnings"] == [
        "synth concat: label y1 has no known value in the train split: the model cannot learn it"
    ]


def test_multiclass_class_absent_from_train_is_warned(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cfg = make_config(tmp_path / "results", FAST)
    cfg["datasets"][DATASET]["modalities"] = {"a": ["a1"]}
    paths = dataset_paths(cfg, DATASET)
    n = 90
    ids = [f"s{i}" for i in range(n)]
    cls = rng.integers(0, 3, size=n)
    cls[:50] = np.where(cls[:50] == 2, 0, cls[:50])  # class g3 never in the train rows
    df = pd.DataFrame({"sample_id": ids, "patient_id": ids,
                       "split": ["train"] * 50 + ["val"] * 20 + ["test"] * 20, "a": "t",
                       "label_grade": cls})  # fmt: skip
    meta = ManifestMeta(DATASET, "multiclass", {"a": "text"}, ["grade"], adapter="test",
                        extra={"n_classes": 3, "class_names": ["g1", "g2", "g3"]})  # fmt: skip
    write_manifest(df, paths.manifest, meta)
    emb = np.eye(3)[cls] @ rng.normal(size=(3, 12)) + 0.1 * rng.normal(size=(n, 12))
    write_cache(paths.cache("a", "a1"), CacheRecords(ids, emb.astype(np.float32), ["ok"] * n,
                [None] * n), CacheMeta(expert="a1", model_id="offline:a1", dim=12,
                pooling="none", preprocess_hash="x"))  # fmt: skip
    summary = train(cfg, seeds=(0,))
    assert summary["warnings"] == [
        "synth medmix: label grade_g3 never occurs among the 50 known labels of the train "
        "split: the model can only learn a constant for it (test AUROC of a constant, 0.5)"
    ]


def test_a_train_split_without_any_known_label_is_refused(tmp_path: Path) -> None:
    def unknown_train(df: pd.DataFrame) -> None:
        df.loc[rows(df, "train"), ["label_y1", "label_y2"]] = np.nan

    cfg = cohort(tmp_path, unknown_train)
    message = (
        "synth medmix: the train split has 72 rows but no known label (y1, y2): there is "
        "nothing to train on"
    )
    with pytest.raises(TrainingError) as err:
        train(cfg)
    assert str(err.value) == message
    assert_nothing_left(cfg)


def test_the_command_line_prints_a_refusal_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def unknown_train(df: pd.DataFrame) -> None:
        df.loc[rows(df, "train"), ["label_y1", "label_y2"]] = np.nan

    cfg = cohort(tmp_path, unknown_train)
    argv = ["train", "--config", json.dumps(cfg), "--dataset", DATASET, "--method", "concat",
            "--protocol", "full", "--seeds", "0", "--quiet"]  # fmt: skip
    assert run_cli(fusion_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: synth concat: the train split has 72 rows but no known label (y1, y2): there "
        "is nothing to train on"
    )
    assert_nothing_left(cfg, "concat")


# -- a loss that becomes NaN / inf ------------------------------------------------------------


@pytest.mark.parametrize("method", ["medmix", "concat"])
def test_a_diverging_loss_stops_the_run_naming_seed_and_epoch(tmp_path: Path, method) -> None:
    """A learning rate of 1e30 overflows the weights in the first epoch: the run stops with
    the seeds and the epoch instead of keeping the initial weights as the best state."""
    cfg = cohort(tmp_path, lr=1e30, router_lr=1e30)
    with pytest.raises(TrainingError) as err:
        train(cfg, method=method)
    assert str(err.value) == (
        f"synth {method}: the training loss of seeds 0, 1 became nan at epoch 0: training "
        "diverged (look for extreme embedding values, or lower fusion.lr)"
    )
    assert_nothing_left(cfg, method)


def test_a_diverging_lone_seed_is_named(tmp_path: Path) -> None:
    cfg = cohort(tmp_path, lr=1e30, router_lr=1e30, vectorize_seeds=False)
    with pytest.raises(TrainingError, match=r"^synth concat: the training loss of seed 3 became "
                       r"nan at epoch 0: training diverged"):  # fmt: skip
        train(cfg, method="concat", seeds=(3, 4))
    assert_nothing_left(cfg, "concat")


# -- labels undefined in the test split -------------------------------------------------------


def test_a_single_class_test_label_is_nan_with_a_note(tmp_path: Path) -> None:
    """y2 only negative in test: no AUROC number for it anywhere, a note in metrics.json and
    summary.json, and a NaN row in the metrics table; the macro is over y1."""

    def y2_negative_in_test(df: pd.DataFrame) -> None:
        df.loc[rows(df, "test"), "label_y2"] = 0.0

    cfg = cohort(tmp_path, y2_negative_in_test)
    summary = train(cfg)
    note = (
        "only negatives among 30 known labels: AUROC undefined (NaN), left out of the macro average"
    )
    assert summary["warnings"] == [f"synth medmix: test split: label y2: {note}"]
    for seed in (0, 1):
        test = seed_json(summary, seed)["splits"]["test"]
        assert test["skipped_labels"] == ["y2"] and test["notes"] == {"y2": note}
        assert "auroc" not in test["per_label"]["y2"]
        assert test["macro"]["auroc"] == test["per_label"]["y1"]["auroc"]
    df = collect_metrics(dataset_paths(cfg, DATASET).root / "runs", DATASET)
    sel = df[(df["split"] == "test") & (df["task"] == "y2") & (df["metric"] == "auroc")]
    assert sel["seed"].tolist() == [0, 1] and sel["value"].isna().all()


def test_no_defined_test_label_gives_a_nan_macro_auroc(tmp_path: Path) -> None:
    def one_class_test(df: pd.DataFrame) -> None:
        df.loc[rows(df, "test"), "label_y1"] = 1.0
        df.loc[rows(df, "test"), "label_y2"] = 0.0

    cfg = cohort(tmp_path, one_class_test)
    summary = train(cfg, method="concat")
    assert summary["mean"]["auroc"] is None and summary["std"]["auroc"] is None
    assert all(summary["per_seed"][s]["auroc"] is None for s in ("0", "1"))
    assert [w.split(": ")[2] for w in summary["warnings"]] == ["label y1", "label y2"]
    df = collect_metrics(dataset_paths(cfg, DATASET).root / "runs", DATASET)
    macro = df[(df["split"] == "test") & (df["task"] == "macro") & (df["metric"] == "auroc")]
    assert macro["seed"].tolist() == [0, 1] and macro["value"].isna().all()
    assert not any(math.isclose(v, 0.5) for v in macro["value"].dropna())
