"""Model selection of the fusion hyper-parameters on the validation split (fusion.select).

On the small synthetic cohort of tests/fusion/test_fusion_train.py: the grid is validated, the point
with the best val metric wins, the test split cannot change the choice, a train run uses the
chosen values, selection off changes nothing, and the workflow has the select job only when on.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cohorts.manifest import read_manifest, write_manifest
from fusion.__main__ import main as fusion_main
from fusion.select import (
    GRID_FIELDS,
    SelectionError,
    SelectSpec,
    choose,
    default_selection_path,
    parse_grid,
    run_selection,
    select_hparams,
    selectable,
)
from fusion.train import run_training
from medmix.config import (
    SCHEMA_PATH,
    ConfigError,
    dataset_paths,
    dataset_slice,
    select_methods,
    validate_config,
    with_select,
)
from medmix.hparams import FusionHParams
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic

REPO = Path(__file__).resolve().parents[2]
GRID = {"dropout": [0.0, 0.6], "weight_decay": [1.0e-2]}


def with_selection(cfg: dict, **select) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["fusion"]["select"] = {"enabled": True, "grid": GRID, "seeds": 1, **select}
    return cfg


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"))
    cfg["seeds"] = [0, 1]
    write_synthetic(cfg)
    return with_selection(cfg)


@pytest.fixture(scope="module")
def record(synth: dict) -> dict:
    return run_selection(synth, DATASET, "medmix")


# -- the grid and the section --------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "pattern"),
    [
        ({"dropuot": [0.1]}, r"fusion\.select\.grid: unknown key 'dropuot'"),
        ({"betas": [0.9]}, r"unknown key 'betas'"),  # not a number
        ({"pos_weight": ["balanced"]}, r"grid\.pos_weight: 'balanced' is not null, auto or a"),
        ({"pos_weight": [0.0]}, r"fusion\.select\.grid\.pos_weight: 0\.0 is not null, auto"),
        ({"pos_weight": [[1.0, 2.0]]}, r"fusion\.select\.grid\.pos_weight: \[1\.0, 2\.0\]"),
        ({"pos_weight": [None, None]}, r"fusion\.select\.grid\.pos_weight: repeated values"),
        ({"dropout": 0.2}, r"fusion\.select\.grid\.dropout: a non-empty list"),
        ({"dropout": []}, r"fusion\.select\.grid\.dropout: a non-empty list"),
        ({"dropout": [0.2, "x"]}, r"fusion\.select\.grid\.dropout: 'x' is not a number"),
        ({"d": [32, 16.5]}, r"fusion\.select\.grid\.d: 16\.5 is not an integer"),
        ({"patience": [True]}, r"fusion\.select\.grid\.patience: True is not an integer"),
        ({"dropout": [1.5]}, r"fusion\.select\.grid\.dropout: 1\.5 is greater than the maximum"),
        ({"lr": [0.0]}, r"fusion\.select\.grid\.lr: 0\.0 is less than or equal to the minimum"),
        ({"dropout": [0.2, 0.2]}, r"fusion\.select\.grid\.dropout: repeated values"),
        ({"projection": ["paper", "lin"]}, r"fusion\.select\.grid\.projection: \['lin'\] not in"),
        ({"early_stopping": [1]}, r"fusion\.select\.grid\.early_stopping: \[1\] not in"),
    ],
)
def test_bad_grid_is_one_line_naming_the_key(grid: dict, pattern: str) -> None:
    with pytest.raises(SelectionError, match=pattern) as err:
        parse_grid(grid)
    assert "\n" not in str(err.value)


def test_section_checks_and_points() -> None:
    with pytest.raises(SelectionError, match=r"fusion\.select: unknown key\(s\) \['seed'\]"):
        SelectSpec.from_config({"seed": 2})
    with pytest.raises(SelectionError, match=r"fusion\.select\.metric: 'f1'"):
        SelectSpec.from_config({"metric": "f1"})
    with pytest.raises(SelectionError, match=r"fusion\.select\.seeds"):
        SelectSpec.from_config({"seeds": 0})
    choice = SelectSpec.from_config({"grid": {"projection": ["paper", "linear"], "d": [16]}})
    assert choice.points() == [{"projection": "paper", "d": 16}, {"projection": "linear", "d": 16}]
    spec = SelectSpec.from_config({"grid": {"weight_decay": [0.01, 0.1], "d": [16, 32.0]}})
    assert spec == SelectSpec(False, {"weight_decay": [0.01, 0.1], "d": [16, 32]}, 1, "auroc")
    assert spec.points() == [
        {"weight_decay": 0.01, "d": 16},
        {"weight_decay": 0.01, "d": 32},
        {"weight_decay": 0.1, "d": 16},
        {"weight_decay": 0.1, "d": 32},
    ]
    assert isinstance(spec.points()[1]["d"], int)


def test_pos_weight_grid_points() -> None:
    spec = SelectSpec.from_config({"grid": {"pos_weight": [None, "auto", 3]}})
    assert spec.points() == [{"pos_weight": None}, {"pos_weight": "auto"}, {"pos_weight": 3.0}]


def test_pos_weight_is_selected_on_train_and_val_only(synth: dict, tmp_path: Path) -> None:
    """``auto`` is the train split's n_neg / n_pos: scrambling the test labels changes nothing,
    and the chosen weight reaches the run."""
    cfg = with_selection(synth, grid={"pos_weight": [None, "auto"]})
    path = tmp_path / "selection.json"
    rec = run_selection(cfg, DATASET, "medmix", out=path)
    losses = [p["val"]["loss"] for p in rec["points"]]
    assert losses[0] != pytest.approx(losses[1])  # the weight acts on the (val) loss
    scrambled = _scramble_test_labels(cfg, tmp_path / "results")
    again = run_selection(scrambled, DATASET, "medmix", out=tmp_path / "again.json")
    assert _strip_seconds(again) == _strip_seconds(rec)
    run_training(cfg, DATASET, "medmix", "full", tmp_path / "run", seeds=[0], selection=path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hparams"]["pos_weight"] == rec["chosen"]["pos_weight"]


def test_schema_grid_keys_match_the_numeric_hparams() -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    grid = schema["properties"]["fusion"]["properties"]["select"]["properties"]["grid"]
    assert tuple(grid["propertyNames"]["enum"]) == GRID_FIELDS
    assert "bootstrap" not in GRID_FIELDS and {"dropout", "weight_decay", "d"} <= set(GRID_FIELDS)


def test_config_validation_of_select(synth: dict) -> None:
    good = validate_config(copy.deepcopy(synth))
    assert good["fusion"]["select"]["metric"] == "auroc"  # defaults filled
    bad = copy.deepcopy(synth)
    bad["fusion"]["select"]["grid"] = {"dropuot": [0.1]}
    with pytest.raises(ConfigError, match=r"fusion\.select\.grid: 'dropuot' is not one of"):
        validate_config(bad)
    bad = copy.deepcopy(synth)
    bad["fusion"]["select"]["methods"] = ["medmix", "linear-probe"]
    with pytest.raises(ConfigError, match=r"fusion\.select\.methods: 'linear-probe'"):
        validate_config(bad)
    # the hyper-parameters of one run ignore the section
    assert FusionHParams.from_config(synth["fusion"]).dropout == FUSION.get("dropout")


def test_which_methods_are_selected(synth: dict) -> None:
    cfg = copy.deepcopy(synth)
    cfg["methods"] = ["medmix", "concat", "linear-probe", "large", "onellm"]
    cfg["datasets"][DATASET]["teachers"] = {"a": "a1"}
    assert select_methods(cfg, DATASET) == ["medmix", "concat", "onellm", "medmix-only-a",
                                             "medmix-only-b"]  # fmt: skip
    assert selectable(cfg, DATASET, "onellm")  # no weights: cannot run, not selected
    assert "linear probe" in selectable(cfg, DATASET, "linear-probe")
    assert "teacher reference" in selectable(cfg, DATASET, "a-large")
    assert selectable(cfg, DATASET, "medmix-only-a") is None
    cfg["fusion"]["select"]["methods"] = ["medmix"]
    assert select_methods(cfg, DATASET) == ["medmix"]
    cfg["fusion"]["select"]["enabled"] = False
    assert select_methods(cfg, DATASET) == []
    with pytest.raises(SelectionError, match="not selected"):
        select_hparams(cfg, DATASET, "linear-probe")


def test_slices_keep_the_grid_out_of_the_runs(synth: dict) -> None:
    """A run reads the selection file, not the grid: editing the grid does not touch the
    train slice (the selection job's slice has it, and its new file reruns the trains)."""
    sliced = dataset_slice(synth, DATASET)
    assert "select" not in sliced["fusion"]
    assert with_select(sliced, synth)["fusion"]["select"] == synth["fusion"]["select"]
    assert "select" in synth["fusion"]  # the config itself is not modified


# -- choosing ------------------------------------------------------------------------------


def _point(auroc: float | None, loss: float | None) -> dict:
    return {"val": {"auroc": auroc, "loss": loss}}


def test_choose_best_metric_then_tie_break() -> None:
    points = [_point(0.70, 0.40), _point(0.80, 0.50), _point(0.80, 0.45), _point(None, 0.1)]
    assert choose(points, "auroc") == 2  # best AUROC, the tie broken by the lower loss
    assert choose(points, "loss") == 3
    assert choose([_point(0.8, 0.4), _point(0.8, 0.4)], "auroc") == 0  # grid order
    assert choose([_point(None, None), _point(0.5, None)], "auroc") == 1
    with pytest.raises(SelectionError):
        choose([], "auroc")


def test_selection_picks_the_best_val_point(record: dict, synth: dict) -> None:
    assert record["dataset"] == DATASET and record["method"] == "medmix"
    assert record["seeds"] == [0] and record["protocol"] == "full"  # the first select.seeds
    assert record["splits"] == ["train", "val"]
    assert record["grid"] == GRID and record["metric"] == "auroc"
    assert [p["values"] for p in record["points"]] == [
        {"dropout": 0.0, "weight_decay": 0.01},
        {"dropout": 0.6, "weight_decay": 0.01},
    ]
    aurocs = [p["val"]["auroc"] for p in record["points"]]
    assert all(0.5 < a <= 1 for a in aurocs), aurocs
    assert len(set(aurocs)) == 2  # the grid matters here
    best = int(np.argmax(aurocs))
    assert record["chosen_index"] == best
    assert record["chosen"] == record["points"][best]["values"]
    assert record["base"] == {"dropout": FUSION["dropout"], "weight_decay": FUSION["weight_decay"]}
    assert record["seconds"] > 0 and all(p["seconds"] > 0 for p in record["points"])
    assert all(set(p["per_seed"]) == {"0"} for p in record["points"])
    path = default_selection_path(synth, DATASET, "medmix")
    assert path == Path(synth["results"]) / DATASET / "selection" / "medmix.json"
    assert json.loads(path.read_text()) == record
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_loss_metric(synth: dict, record: dict, tmp_path: Path) -> None:
    rec = run_selection(with_selection(synth, metric="loss"), DATASET, "medmix", tmp_path / "s")
    losses = [p["val"]["loss"] for p in rec["points"]]
    assert rec["chosen_index"] == int(np.argmin(losses))
    assert losses == [p["val"]["loss"] for p in record["points"]]  # same training


def _scramble_test_labels(src: dict, root: Path) -> dict:
    """A copy of the cohort whose test labels are flipped, and NaN for a third of them."""
    shutil.copytree(Path(src["results"]), root, ignore=shutil.ignore_patterns("runs", "selection"))
    cfg = copy.deepcopy(src)
    cfg["results"] = str(root)
    path = dataset_paths(cfg, DATASET).manifest
    df, meta = read_manifest(path)
    test = (df["split"] == "test").to_numpy()
    for col in ("label_y1", "label_y2"):
        y = np.array(pd.to_numeric(df[col]), dtype=float)
        y[test] = 1.0 - y[test]
        y[np.flatnonzero(test)[::3]] = np.nan
        df[col] = y
    write_manifest(df, path, meta)
    return cfg


def test_test_labels_cannot_change_the_selection(synth: dict, record: dict, tmp_path: Path) -> None:
    cfg = _scramble_test_labels(synth, tmp_path / "results")
    again = run_selection(cfg, DATASET, "medmix")

    def strip(rec: dict) -> dict:
        out = {k: v for k, v in rec.items() if k != "seconds"}
        out["points"] = [{k: v for k, v in p.items() if k != "seconds"} for p in rec["points"]]
        return out

    assert strip(again) == strip(record)  # same choice, the very same val numbers


def test_train_run_uses_the_chosen_values(synth: dict, record: dict, tmp_path: Path) -> None:
    path = default_selection_path(synth, DATASET, "medmix")
    chosen = record["chosen"]
    out = tmp_path / "run"
    run_training(synth, DATASET, "medmix", "full", out, seeds=[0], selection=path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"] == {"chosen": chosen, "path": str(path)}
    assert summary["hparams"]["dropout"] == chosen["dropout"]
    metrics = json.loads((out / "seed0" / "metrics.json").read_text())
    assert metrics["selection"] == summary["selection"]
    for key, value in chosen.items():
        assert metrics["hparams"][key] == value
    assert metrics["hparams"]["lr"] == FUSION["lr"]  # the rest: the config's
    spec = json.loads((out / "seed0" / "config.json").read_text())["spec"]
    assert spec["dropout"] == chosen["dropout"]
    # the selection's seed 0 trained exactly as this run's seed 0 (same code, same rows)
    best = record["points"][record["chosen_index"]]["per_seed"]["0"]
    assert metrics["best_epoch"] == best["best_epoch"]
    assert metrics["best_val_loss"] == pytest.approx(best["loss"], rel=1e-6)
    assert metrics["splits"]["val"]["macro"]["auroc"] == pytest.approx(best["auroc"], abs=1e-6)
    # a selection made for another method is refused
    with pytest.raises(ValueError, match="a selection for synth medmix, not synth concat"):
        run_training(synth, DATASET, "concat", "full", tmp_path / "c", seeds=[0], selection=path)


def _strip_seconds(obj):
    if isinstance(obj, dict):
        return {k: _strip_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_strip_seconds(v) for v in obj]
    return obj


def test_selection_off_leaves_the_run_unchanged(synth: dict, tmp_path: Path) -> None:
    plain = copy.deepcopy(synth)
    del plain["fusion"]["select"]
    off = with_selection(plain, enabled=False)
    outs = {}
    for name, cfg in (("plain", plain), ("off", off), ("on-not-passed", synth)):
        outs[name] = tmp_path / name
        run_training(cfg, DATASET, "concat", "full", outs[name], seeds=[0])
    ref = outs["plain"]
    summary = json.loads((ref / "summary.json").read_text())
    assert "selection" not in summary and "hparams" not in summary
    for name, out in outs.items():
        for rel in ("summary.json", "seed0/metrics.json", "seed0/config.json"):
            a = json.loads((ref / rel).read_text())
            b = json.loads((out / rel).read_text())
            assert _strip_seconds(a) == _strip_seconds(b), (name, rel)
        for rel in ("seed0/model.safetensors", "seed0/history.csv"):
            assert (ref / rel).read_bytes() == (out / rel).read_bytes(), (name, rel)
        pd.testing.assert_frame_equal(
            pd.read_parquet(ref / "seed0/predictions.parquet"),
            pd.read_parquet(out / "seed0/predictions.parquet"),
        )


def test_cli_select_and_train(synth: dict, record: dict, tmp_path: Path) -> None:
    out = tmp_path / "sel.json"
    argv = ["--config", json.dumps(synth), "--dataset", DATASET, "--method", "medmix"]
    assert fusion_main(["select", *argv, "--out", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())
    assert got["chosen"] == record["chosen"]
    run = tmp_path / "run"
    assert fusion_main(["train", *argv, "--out", str(run), "--seeds", "0",
                        "--selection", str(out), "--quiet"]) == 0  # fmt: skip
    assert json.loads((run / "summary.json").read_text())["selection"]["path"] == str(out)
    with pytest.raises(SystemExit) as exc:
        fusion_main(["select", "--help"])
    assert exc.value.code == 0


# -- the workflow --------------------------------------------------------------------------


def _dry_run(tmp_path: Path, select: dict) -> str:
    """``snakemake -n -p`` of three demo-mimic runs of the smoke config with ``select``."""
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    cfg["fusion"]["select"] = select
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "results" / "demo-mimic" / "runs" / "full"
    targets = [str(runs / m / "summary.json") for m in ("medmix", "linear-probe", "ehr-large")]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--configfile", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MEDMIX_CONSOLE_FULL": "1"},  # whole command lines
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _commands(log: str, entry: str) -> dict[str, str]:
    """method -> the dry run's ``python -m fusion {entry}`` command."""
    prefix = f"Shell command: python -m fusion {entry} "
    lines = [x.removeprefix("Shell command: ") for x in log.splitlines() if x.startswith(prefix)]
    return {c.split("--method ")[1].split()[0]: c for c in lines}


def test_select_job_only_when_enabled(tmp_path: Path) -> None:
    grid = {"dropout": [0.1, 0.3]}
    off = _dry_run(tmp_path / "off", {"enabled": False, "grid": grid})
    assert "select_fusion" not in off
    trains = _commands(off, "train")
    assert set(trains) == {"medmix", "linear-probe", "ehr-large"}, off[-3000:]
    assert not any("--selection" in c for c in trains.values())
    on = _dry_run(tmp_path / "on", {"enabled": True, "grid": grid})
    assert list(_commands(on, "select")) == ["medmix"]  # not the probe, not the -large row
    trains = _commands(on, "train")
    path = tmp_path / "on" / "results" / "demo-mimic" / "selection" / "medmix.json"
    assert f" --selection {path} > " in trains["medmix"], trains["medmix"]
    assert "--selection" not in trains["linear-probe"] + trains["ehr-large"]


def test_a_diverging_grid_point_is_recorded_and_never_chosen(synth: dict, tmp_path: Path) -> None:
    """lr 1e30 diverges (a TrainingError): that point is recorded as failed, the other wins;
    when every point diverges the selection is a one-line SelectionError."""
    cfg = with_selection(synth, grid={"lr": [1.0e-3, 1.0e30]})
    rec = run_selection(cfg, DATASET, "medmix", out=tmp_path / "sel.json")
    bad = rec["points"][1]
    assert "diverged" in bad["failed"] and bad["val"] == {"auroc": None, "loss": None}
    assert rec["chosen"] == {"lr": 1.0e-3} and "failed" not in rec["points"][0]
    cfg = with_selection(synth, grid={"lr": [1.0e30]})
    with pytest.raises(SelectionError, match="every grid point failed to train") as err:
        run_selection(cfg, DATASET, "medmix", out=tmp_path / "none.json")
    assert "\n" not in str(err.value) and not (tmp_path / "none.json").exists()
