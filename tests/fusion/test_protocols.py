"""Missing-modality protocols: names, seeded masks, rates, scopes, all-dropped samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusion.data import load_fusion_data
from fusion.evaluate import run_test_protocols
from fusion.protocols import (
    apply_masks,
    apply_protocol,
    label_score,
    protocol_masks,
    read_masks,
    write_masks,
)
from fusion.registry import ModelSpec, build_model
from fusion.train import run_training
from medmix.config import cache_paths, dataset_paths
from medmix.protocol_names import (
    ProtocolError,
    expand_settings,
    format_protocol,
    is_test_only,
    parse_protocol,
)
from tests.paper_helpers import make_config, write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"))
    write_cohort(cfg, n=1200)
    return cfg


def load(cfg: dict, modalities: list[str] | None = None):
    caches = cache_paths(cfg, "syn")
    mods = modalities or list(caches)
    return load_fusion_data(dataset_paths(cfg, "syn").manifest, {m: caches[m] for m in mods})


@pytest.fixture(scope="module")
def data(cohort: dict):
    return load(cohort)


def test_names_round_trip_and_reject_non_canonical() -> None:
    for name in ["full", "train_drop_one-note-0.3", "test_drop_one-a-0.5", "train_random-0.7",
                 "test_random-0.1", "mnar-label-0.5", "test_mnar-severity-0.3", "replay-1.0",
                 "train_replay-0.5", "random-0.05"]:  # fmt: skip
        assert parse_protocol(name).name == name
    spec = parse_protocol("test_drop_one-note-0.5")
    assert (spec.kind, spec.scope, spec.modality, spec.rate) == ("drop_one", "test", "note", 0.5)
    assert spec.family == "test_drop_one" and spec.splits == ("test", "external")
    assert parse_protocol("train_random-0.3").splits == ("train", "val")
    assert format_protocol("random", "train", 0.30) == "train_random-0.3"
    assert format_protocol("replay", "all", 1) == "replay-1.0"
    for bad in ["random-0.30", "train_random-1.5", "drop_one-0.3", "mnar-foo-0.5", "nope"]:
        with pytest.raises(ProtocolError):
            parse_protocol(bad)
    assert is_test_only("test_random-0.5") and not is_test_only("train_random-0.5")
    assert not is_test_only("mnar-label-0.5") and not is_test_only("full")
    section = {"train_drop_one": [0.3, 0.5], "test_random": [0.1], "extra": ["mnar-label-0.5",
               "test_drop_one-zzz-0.5"]}  # fmt: skip
    got = expand_settings(section, ["a", "b"])
    assert got == ["train_drop_one-a-0.3", "train_drop_one-b-0.3", "train_drop_one-a-0.5",
                   "train_drop_one-b-0.5", "test_random-0.1", "mnar-label-0.5"]  # fmt: skip


PROTOCOLS = ["test_drop_one-a-0.5", "train_drop_one-b-0.3", "test_random-0.5", "train_random-0.7",
             "mnar-label-0.5", "test_mnar-severity-0.5", "test_replay-1.0", "replay-0.5"]  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_masks_identical_across_reruns_methods_and_row_order(cohort: dict, data, protocol: str):
    m1 = protocol_masks(data, protocol, seed=3)
    m2 = protocol_masks(load(cohort), protocol, seed=3)
    np.testing.assert_array_equal(m1.drop, m2.drop)
    assert m1.drop.any()
    # another row order of the same samples: the same sample loses the same modalities
    perm = np.random.default_rng(0).permutation(data.n)
    shuffled = data.take(torch.from_numpy(perm))
    m3 = protocol_masks(shuffled, protocol, seed=3)
    np.testing.assert_array_equal(m3.drop, m1.drop[perm])
    # a method that sees only some modalities gets the same masks on them
    if parse_protocol(protocol).kind != "replay":  # replay depends on the observed patterns
        sub = protocol_masks(load(cohort, ["a", "c"]), protocol, seed=3)
        np.testing.assert_array_equal(sub.drop, m1.drop[:, [0, 2]])
    # another seed gives other masks
    assert not np.array_equal(protocol_masks(data, protocol, seed=4).drop, m1.drop)


def test_drop_rates_exact_nested_and_scoped(data) -> None:
    split = data.split
    for scope, touched in (("train", ("train", "val")), ("test", ("test",))):
        prev = None
        for r in (0.3, 0.5, 0.7):
            m = protocol_masks(data, format_protocol("drop_one", scope, r, modality="b"), 0)
            for s in ("train", "val", "test"):
                rows = split == s
                want = round(r * rows.sum()) if s in touched else 0
                assert m.drop[rows, 1].sum() == want
            assert not m.drop[:, [0, 2]].any()
            if prev is not None:  # common random numbers: r=0.3 ⊂ r=0.5 ⊂ r=0.7
                assert (m.drop >= prev).all()
            prev = m.drop
        m = protocol_masks(data, f"{scope}_random-0.5", 0)
        for s in ("train", "val", "test"):
            rows = split == s
            for mi in range(3):
                want = round(0.5 * rows.sum()) if s in touched else 0
                assert m.drop[rows, mi].sum() == want
        # independent modalities: about p^M of the samples lose all three
        t = np.isin(split, touched)
        both = m.drop[t].all(axis=1).mean()
        assert abs(both - 0.125) < 0.05


def test_mnar_rate_and_label_dependence(data) -> None:
    m = protocol_masks(data, "mnar-label-0.5", 0)
    for s in ("train", "val", "test"):
        rows = data.split == s
        assert abs(m.drop[rows].mean() - 0.5) < 0.08
    score = label_score(data)
    sick, healthy = score > 0.5, score == 0
    assert m.drop[sick].mean() > m.drop[healthy].mean() + 0.3
    sev = protocol_masks(data, "test_mnar-severity-0.3", 0)
    test = data.split == "test"
    assert not sev.drop[~test].any()
    assert abs(sev.drop[test].mean() - 0.3) < 0.08


def test_replay_puts_observed_patterns_on_complete_samples(data) -> None:
    m = protocol_masks(data, "test_replay-0.5", 1)
    before = m.before
    complete = before.all(axis=1)
    test = data.split == "test"
    targets = m.drop.any(axis=1)
    assert not targets[~test].any()
    assert not targets[~complete].any()  # only complete samples receive a pattern
    assert targets.sum() == round(0.5 * (test & complete).sum())
    observed = {tuple(p) for p in before[~complete & before.any(axis=1)]}
    assert {tuple(p) for p in m.after[targets]} <= observed
    assert m.report()["replay"]["targets"] == targets.sum()


def test_all_dropped_samples_are_counted_and_get_the_prior(data, tmp_path: Path) -> None:
    m = protocol_masks(data, "test_random-0.7", 0)
    report = m.report()["splits"]["test"]
    n_all = int(m.all_dropped.sum())
    assert n_all > 0 and report["n_all_dropped"] == n_all
    assert report["n_no_modality"] >= n_all  # plus the samples that had nothing anyway
    masked = apply_masks(data, m)
    assert not masked.modality_mask[torch.from_numpy(m.all_dropped)].any()
    assert torch.equal(masked.delta[~torch.from_numpy(m.drop).any(1)],
                       data.delta[~torch.from_numpy(m.drop).any(1)])  # fmt: skip
    for k, (mod, _) in enumerate(data.flat_experts):  # features of dropped modalities zeroed
        mi = data.modalities.index(mod)
        assert masked.dense(k)[torch.from_numpy(m.drop[:, mi])].abs().sum() == 0
    spec = ModelSpec("medmix", data.modalities, data.experts, data.dims, "binary",
                     data.label_names, 3, d=8, adapter_bottleneck=4)  # fmt: skip
    model = build_model(spec).eval()
    model.set_prior(torch.tensor([0.3, -1.0, 2.0]))
    idx = torch.from_numpy(np.flatnonzero(m.all_dropped))
    xs, delta = masked.batch(idx)
    with torch.no_grad():
        out = model(xs, delta)
    assert torch.isfinite(out.logits).all()
    assert torch.allclose(out.logits, model.prior.expand_as(out.logits))
    path = write_masks(data, "test_random-0.7", 0, tmp_path)
    frame, meta = read_masks(path)
    assert int(frame["all_dropped"].sum()) == n_all
    assert meta["splits"]["test"]["n_all_dropped"] == n_all
    assert {"sample_id", "split", "drop_a", "avail_a", "all_dropped"} <= set(frame.columns)


def test_train_and_test_protocols_end_to_end(cohort: dict) -> None:
    """A train-time run and test-time evaluations of the full runs: masks saved with the run,
    identical across methods; test-time masks never touch the training splits."""
    runs = dataset_paths(cohort, "syn").root / "runs"
    for method in ("medmix", "meanavg"):
        run_training(cohort, "syn", method, "full", runs / "full" / method, threads=1)
    settings = ["test_random-0.5", "test_drop_one-a-0.7"]
    for method in ("medmix", "meanavg"):
        run_test_protocols(cohort, "syn", method, settings)
    for s in settings:
        a, _ = read_masks(runs / s / "medmix" / "seed0" / "masks.parquet")
        b, _ = read_masks(runs / s / "meanavg" / "seed0" / "masks.parquet")
        pd.testing.assert_frame_equal(a, b)
        dropped = a.filter(like="drop_").any(axis=1)
        assert not dropped[a["split"].isin(["train", "val"])].any()
        summary = json.loads((runs / s / "medmix" / "summary.json").read_text())
        assert summary["split"] == "test" and summary["seeds"] == [0, 1]
        metrics = json.loads((runs / s / "medmix" / "seed1" / "metrics.json").read_text())
        full = json.loads((runs / "full" / "medmix" / "seed1" / "metrics.json").read_text())
        assert metrics["thresholds"] == pytest.approx(full["thresholds"])  # val untouched
        assert metrics["splits"]["val"]["macro"] == pytest.approx(full["splits"]["val"]["macro"])
    # the random test masks leave samples with nothing; metrics count them
    a, meta = read_masks(runs / "test_random-0.5" / "medmix" / "seed0" / "masks.parquet")
    metrics = json.loads(
        (runs / "test_random-0.5" / "medmix" / "seed0" / "metrics.json").read_text()
    )
    assert metrics["splits"]["test"]["n_no_modality"] == meta["splits"]["test"]["n_no_modality"]
    with pytest.raises(ProtocolError):
        run_test_protocols(cohort, "syn", "medmix", ["train_random-0.5"])
    # a train-time protocol through the trainer: only train/val samples are corrupted
    data = load(cohort)
    masked = apply_protocol(data, "train_random-0.5", 0)
    test = torch.from_numpy(data.split == "test")
    assert torch.equal(masked.delta[test], data.delta[test])
    assert not torch.equal(masked.delta[~test], data.delta[~test])


def _trainer_saves_masks() -> bool:
    import inspect

    import fusion.train

    return "write_masks" in inspect.getsource(fusion.train)


@pytest.mark.skipif(not _trainer_saves_masks(), reason="trainer hook write_masks not wired yet")
def test_train_time_run_saves_its_masks(cohort: dict) -> None:
    runs = dataset_paths(cohort, "syn").root / "runs"
    for method in ("medmix", "meanavg"):
        run_training(cohort, "syn", method, "train_random-0.5", runs / "train_random-0.5" / method,
                     seeds=[1], threads=1)  # fmt: skip
    a, meta = read_masks(runs / "train_random-0.5" / "medmix" / "seed1" / "masks.parquet")
    b, _ = read_masks(runs / "train_random-0.5" / "meanavg" / "seed1" / "masks.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert not a.filter(like="drop_")[a["split"] == "test"].any().any()
    assert meta["splits"]["train"]["modalities"]["a"]["rate"] == pytest.approx(0.5, abs=0.01)


def _add_manifest_column(cfg: dict, name: str, values: dict[str, object]) -> None:
    """Add a column to the written manifest, keeping its metadata (adapters may carry extra
    per-sample columns such as an acuity score)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = dataset_paths(cfg, "syn").manifest
    table = pq.read_table(path)
    col = [values[s] for s in table.column("sample_id").to_pylist()]
    table = table.append_column(name, pa.array(col)).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def acuity_cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = make_config(tmp_path_factory.mktemp("results"), seeds=[0])
    cfg["fusion"]["max_epochs"] = 2
    write_cohort(cfg, n=600)
    ids = [f"p{i:04d}" for i in range(600)]
    rng = np.random.default_rng(7)  # independent of the labels: only the column can explain
    _add_manifest_column(
        cfg, "acuity", {s: float(v) for s, v in zip(ids, rng.random(600), strict=True)}
    )
    cfg["datasets"]["syn"]["severity_column"] = "acuity"
    return cfg


def _acuity(cfg: dict, ids) -> np.ndarray:
    from cohorts.manifest import read_manifest

    df, _ = read_manifest(dataset_paths(cfg, "syn").manifest)
    return df.set_index("sample_id").loc[list(ids), "acuity"].to_numpy()


def test_mnar_severity_follows_the_configured_manifest_column(acuity_cohort: dict) -> None:
    from fusion.protocols import manifest_severity, protocol_severity
    from medmix.config import validate_config

    cfg = acuity_cohort
    schema_ok = json.loads(json.dumps(cfg))
    schema_ok["datasets"]["syn"]["demo"] = {"kind": "openi"}  # the helper's cohort is no demo
    assert validate_config(schema_ok)["datasets"]["syn"]["severity_column"] == "acuity"
    runs = dataset_paths(cfg, "syn").root / "runs"
    # train-time: the trainer reads the column and saves the masks it used
    run_training(cfg, "syn", "medmix", "train_mnar-severity-0.5",
                 runs / "train_mnar-severity-0.5" / "medmix", threads=1)  # fmt: skip
    masks, meta = read_masks(
        runs / "train_mnar-severity-0.5" / "medmix" / "seed0" / "masks.parquet"
    )
    assert meta["severity_source"] == "given"
    acuity = _acuity(cfg, masks["sample_id"])
    dropped = masks.filter(like="drop_").to_numpy().mean(axis=1)
    train = masks["split"].isin(["train", "val"]).to_numpy()
    hi, lo = train & (acuity > 0.75), train & (acuity < 0.25)
    assert dropped[hi].mean() > dropped[lo].mean() + 0.4  # drops rise with the acuity
    assert np.corrcoef(acuity[train], dropped[train])[0, 1] > 0.4
    assert abs(dropped[train].mean() - 0.5) < 0.08 and not dropped[~train].any()
    # test-time: the full run's checkpoints under the same column
    run_training(cfg, "syn", "medmix", "full", runs / "full" / "medmix", threads=1)
    run_test_protocols(cfg, "syn", "medmix", ["test_mnar-severity-0.7"])
    masks, meta = read_masks(runs / "test_mnar-severity-0.7" / "medmix" / "seed0" / "masks.parquet")
    test = (masks["split"] == "test").to_numpy()
    acuity = _acuity(cfg, masks["sample_id"])
    dropped = masks.filter(like="drop_").to_numpy().mean(axis=1)
    assert np.corrcoef(acuity[test], dropped[test])[0, 1] > 0.3
    # without the key the label-derived score is used: unrelated to the acuity
    data = load(cfg)
    plain = {**cfg, "datasets": {"syn": {k: v for k, v in cfg["datasets"]["syn"].items()
                                         if k != "severity_column"}}}  # fmt: skip
    assert protocol_severity(plain, "syn", data, "mnar-severity-0.5") is None
    assert protocol_severity(cfg, "syn", data, "mnar-label-0.5") is None
    m = protocol_masks(data, "mnar-severity-0.5", 0)
    assert m.stats["severity_source"] == "label burden"
    a = _acuity(cfg, data.sample_ids)
    assert abs(np.corrcoef(a, m.drop.mean(axis=1))[0, 1]) < 0.15
    np.testing.assert_allclose(manifest_severity(cfg, "syn", data.sample_ids), a)


def test_severity_column_errors_name_the_file_column_and_sample(acuity_cohort: dict) -> None:
    from fusion.protocols import manifest_severity

    cfg = json.loads(json.dumps(acuity_cohort))
    ids = [f"p{i:04d}" for i in range(600)]
    cfg["datasets"]["syn"]["severity_column"] = "triage"
    with pytest.raises(
        ProtocolError, match=r"manifest\.parquet: no column 'triage' .*severity_column"
    ):
        manifest_severity(cfg, "syn", ids)
    cfg["datasets"]["syn"]["severity_column"] = "acuity"
    with pytest.raises(ProtocolError, match=r"samples \['ghost'\] have no row"):
        manifest_severity(cfg, "syn", ["p0001", "ghost"])
    _add_manifest_column(cfg, "esi", {s: ("high" if s == "p0003" else "2") for s in ids})
    cfg["datasets"]["syn"]["severity_column"] = "esi"
    with pytest.raises(
        ProtocolError, match=r"'esi' is not numeric for samples \[\"p0003='high'\"\]"
    ):
        manifest_severity(cfg, "syn", ids)
