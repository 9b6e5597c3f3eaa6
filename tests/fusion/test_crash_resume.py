"""Crashes and resume: SIGKILL at random points, then rerun.

Extraction: ``python -m extractors extract`` (the real CLI once as a subprocess, then its
``main`` in forked children so that each kill costs milliseconds, not an interpreter start) is
killed at random moments of a run over a small demo cohort, again and again; after every kill
the shards on disk are whole and correct, and the final rerun gives a cache byte-identical to
an uninterrupted run, with no temp files left and every sample exactly once. Kills at chosen
points (inside the final file's write, inside the shard folder's removal) and a manifest edited
between crash and rerun check the corners random kills rarely hit.

Training: ``python -m fusion train`` killed at random moments leaves either nothing at the run
folder or a complete run (never a partial one that ``evaluate`` would read), and a later run
cleans the killed jobs' temp folders.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cohorts.demo import generate_cohort
from cohorts.manifest import read_manifest, write_manifest
from extractors.__main__ import main as extractors_main
from extractors.cache import read_cache, read_meta
from extractors.extract import extract
from fusion.__main__ import main as fusion_main
from fusion.evaluate import collect_metrics
from fusion.run_status import unavailable_runs
from tests.fusion.test_fusion_train import FUSION, make_config, write_synthetic
from tests.helpers import CharCountExpert, tiny_text_manifest
from tests.proc_helpers import run_killed, timed_run

REPO = Path(__file__).resolve().parents[2]
EPOCH = "1700000000"
CHILD_ENV = {
    "SOURCE_DATE_EPOCH": EPOCH,
    "MEDMIX_EXTRACT_WORKERS": "0",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}
SHARD = 2
EXPERTS = {"ehr": "ts-stats", "note": "tfidf-svd"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small MIMIC-like demo cohort (notes + EHR series) and a config for the CLI."""
    results = tmp_path_factory.mktemp("results")
    generate_cohort("mimic", results / "dm", 24, 12, "dm", progress=False)
    cfg = {
        "results": str(results),
        "datasets": {
            "dm": {
                "adapter": "demo",
                "demo": {"kind": "mimic", "n_patients": 24, "seed": 12},
                "modalities": {m: [e] for m, e in EXPERTS.items()},
            }
        },
        "experts": {
            "ts-stats": {"type": "ts-stats"},
            "tfidf-svd": {"type": "tfidf-svd", "n_components": 8},
        },
        "extraction": {"shard_size": SHARD, "max_failed_fraction": 0.5},
    }
    logs = tmp_path_factory.mktemp("logs")
    # Import everything the runs need once here, so that forked children start at once.
    from extractors.registry import create_expert

    for modality, name in EXPERTS.items():
        spec = dict(cfg["experts"][name])
        expert = create_expert(spec.pop("type"), **spec)
        extract(results / "dm" / "manifest.parquet", modality, expert, logs / f"warm-{name}.parquet",
                shard_size=64, progress=False)  # fmt: skip
    return {
        "cfg": cfg,
        "json": json.dumps(cfg),
        "manifest": results / "dm" / "manifest.parquet",
        "logs": logs,
    }


def _argv(cohort: dict, modality: str, out: Path) -> list[str]:
    return ["extract", "--config", cohort["json"], "--dataset", "dm", "--modality", modality,
            "--expert", EXPERTS[modality], "--out", str(out), "--no-progress"]  # fmt: skip


def _extract_fn(cohort: dict, modality: str, out: Path):
    argv = _argv(cohort, modality, out)
    return lambda: extractors_main(argv)


def _shard_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.shards"


def _check_shards(out: Path, clean: Path) -> int:
    """Every shard on disk is whole and holds exactly its samples' rows of the clean cache."""
    ref = pq.read_table(clean)
    shards = sorted(_shard_dir(out).glob("shard-*.parquet"))
    for path in shards:
        i = int(path.stem.split("-")[1])
        got = pq.read_table(path)  # raises on a half-written file
        want = ref.slice(i * SHARD, SHARD)
        assert got.column_names == want.column_names
        for col in got.column_names:
            assert got.column(col).to_pylist() == want.column(col).to_pylist(), (path.name, col)
    return len(shards)


def _assert_clean_finish(out: Path, clean: Path, manifest: Path) -> None:
    assert out.read_bytes() == clean.read_bytes()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    ids = read_cache(out).sample_ids.tolist()
    assert ids == read_manifest(manifest)[0]["sample_id"].tolist()  # every sample exactly once
    assert len(set(ids)) == len(ids)


@pytest.fixture(scope="module")
def clean(cohort: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Uninterrupted runs, twice each (same config and seed: byte-identical caches)."""
    out = {}
    for modality in EXPERTS:
        folder = tmp_path_factory.mktemp(f"clean-{modality}")
        rc, seconds = timed_run(
            _extract_fn(cohort, modality, folder / "a.parquet"),
            cohort["logs"] / "clean.log",
            CHILD_ENV,
        )
        assert rc == 0
        rc, _ = timed_run(
            _extract_fn(cohort, modality, folder / "b.parquet"),
            cohort["logs"] / "clean.log",
            CHILD_ENV,
        )
        assert rc == 0
        out[modality] = {
            "path": folder / "a.parquet",
            "again": folder / "b.parquet",
            "seconds": seconds,
        }
    return out


def test_same_config_and_seed_give_byte_identical_caches(cohort: dict, clean: dict) -> None:
    for modality, c in clean.items():
        assert c["path"].read_bytes() == c["again"].read_bytes(), modality
        data = read_cache(c["path"])
        assert data.ok.sum() > 10 and np.isfinite(data.embeddings).all()
    # without SOURCE_DATE_EPOCH only the creation time differs: same table, same metadata
    folder = clean["note"]["path"].parent
    rc, _ = timed_run(
        _extract_fn(cohort, "note", folder / "c.parquet"),
        cohort["logs"] / "clean.log",
        CHILD_ENV | {"SOURCE_DATE_EPOCH": ""},  # unset: the creation time is now
    )
    assert rc == 0
    a, c = pq.read_table(clean["note"]["path"]), pq.read_table(folder / "c.parquet")
    assert a.equals(c)  # values, nulls and order
    ma, mc = read_meta(clean["note"]["path"]), read_meta(folder / "c.parquet")
    assert ma.created_at == "2023-11-14T22:13:20Z" and mc.created_at != ma.created_at
    ma.created_at = mc.created_at = ""
    assert ma == mc


def test_real_cli_killed_mid_extraction_then_resumed(
    cohort: dict, clean: dict, tmp_path: Path
) -> None:
    """``python -m extractors extract`` as its own process, SIGKILLed once its shards appear."""
    out = tmp_path / "cache" / "ts.parquet"
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "extractors", *_argv(cohort, "ehr", out)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(_shard_dir(out).glob("shard-*.parquet")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.002)
        time.sleep(random.Random(1).uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
    finally:
        rc = proc.wait(timeout=60)
    assert rc == -signal.SIGKILL, "the run ended before the kill: make the cohort larger"
    assert not out.exists()
    written = _check_shards(out, clean["ehr"]["path"])
    assert written >= 1
    log = tmp_path / "resume.log"
    rc, _ = timed_run(_extract_fn(cohort, "ehr", out), log, CHILD_ENV)
    assert rc == 0
    resumed = re.search(r"\((\d+)/(\d+) shards resumed\)", log.read_text())
    assert resumed and int(resumed.group(1)) == written
    _assert_clean_finish(out, clean["ehr"]["path"], cohort["manifest"])


@pytest.mark.parametrize(("modality", "min_kills"), [("ehr", 10), ("note", 4)])
def test_random_sigkills_then_resume_equal_uninterrupted(
    cohort: dict, clean: dict, tmp_path: Path, modality: str, min_kills: int
) -> None:
    out = tmp_path / "cache" / f"{EXPERTS[modality]}.parquet"
    ref = clean[modality]["path"]
    span = clean[modality]["seconds"]
    rng = random.Random(f"kill-{modality}")
    fn = _extract_fn(cohort, modality, out)
    log = tmp_path / "kills.log"
    kills = kills_after_shards = finished = 0
    for _attempt in range(80):
        had = _check_shards(out, ref)
        rc = run_killed(fn, rng.uniform(0.0, span), log, CHILD_ENV)
        if rc == -signal.SIGKILL:
            kills += 1
            kills_after_shards += had > 0
        else:
            assert rc == 0, log.read_text()[-3000:]
            finished += 1
        # after every kill: nothing half-written under a final name
        if out.exists():
            assert out.read_bytes() == ref.read_bytes()
        _check_shards(out, ref)
        if kills >= min_kills and kills_after_shards >= 3:
            break
    assert kills >= min_kills and kills_after_shards >= 3, (kills, kills_after_shards, finished)
    rc, _ = timed_run(fn, log, CHILD_ENV)
    assert rc == 0
    _assert_clean_finish(out, ref, cohort["manifest"])


# -- kills at chosen points -------------------------------------------------------------------


class Scaled(CharCountExpert):
    """CharCountExpert with a parameter that changes its output (and its preprocessing hash)."""

    def __init__(self, scale: float = 1.0, **kw):
        super().__init__(**kw)
        self.params["scale"] = float(scale)

    def embed(self, batch):
        return super().embed(batch) * self.params["scale"]


def _extract_tiny(manifest: Path, out: Path, scale: float = 1.0) -> None:
    extract(manifest, "note", Scaled(scale=scale, batch_size=4), out, shard_size=8, progress=False)


def test_kill_while_writing_the_final_file_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    out, ref = tmp_path / "c" / "out.parquet", tmp_path / "ref" / "ref.parquet"
    _extract_tiny(manifest, ref)

    def dying_final_write():
        import extractors.cache as cache

        real = cache.pq.write_table

        def write(table, where, **kw):
            real(table, where, **kw)
            if Path(where).name.startswith(f".{out.name}."):  # the final file's temp
                Path(where).write_bytes(Path(where).read_bytes()[:100])  # half written
                os.kill(os.getpid(), signal.SIGKILL)

        cache.pq.write_table = write
        _extract_tiny(manifest, out)

    rc, _ = timed_run(dying_final_write, tmp_path / "log", CHILD_ENV)
    assert rc == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in out.parent.glob(f".{out.name}.*.tmp")]  # the kill left its temp
    _extract_tiny(manifest, out)
    assert out.read_bytes() == ref.read_bytes()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_kill_while_removing_shards_never_resumes_foreign_shards(
    tmp_path: Path, monkeypatch
) -> None:
    """Killed after the final file, mid-way through removing the shard folder (plan.json gone,
    some shards left); the rerun under another expert config must not reuse those shards."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    out, ref = tmp_path / "c" / "out.parquet", tmp_path / "ref" / "ref.parquet"

    def dying_cleanup():
        import extractors.cache as cache

        def rmtree(path, ignore_errors=False):
            path = Path(path)
            (path / "plan.json").unlink()
            for shard in sorted(path.glob("shard-*.parquet"))[::2]:
                shard.unlink()
            os.kill(os.getpid(), signal.SIGKILL)

        cache.shutil.rmtree = rmtree
        _extract_tiny(manifest, out, scale=1.0)

    rc, _ = timed_run(dying_cleanup, tmp_path / "log", CHILD_ENV)
    assert rc == -signal.SIGKILL
    assert out.exists() and list(_shard_dir(out).glob("shard-*.parquet"))
    assert not (_shard_dir(out) / "plan.json").exists()
    _extract_tiny(manifest, out, scale=3.0)
    _extract_tiny(manifest, ref, scale=3.0)
    assert out.read_bytes() == ref.read_bytes()
    assert not _shard_dir(out).exists()


def test_manifest_edited_between_crash_and_rerun(tmp_path: Path, monkeypatch) -> None:
    """Same sample ids, same present/missing pattern, other note text: the shards of the
    killed run describe other inputs and must not be resumed."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    out, ref = tmp_path / "c" / "out.parquet", tmp_path / "ref" / "ref.parquet"

    def killed_after_some_shards():
        extract(manifest, "note", CharCountExpert(batch_size=4, kill_after_batches=5), out,
                shard_size=8, progress=False)  # fmt: skip

    rc, _ = timed_run(killed_after_some_shards, tmp_path / "log", CHILD_ENV)
    assert rc == -signal.SIGKILL and list(_shard_dir(out).glob("shard-*.parquet"))
    df, meta = read_manifest(manifest)
    df["note"] = [
        v.replace("patient", "zebra quartz") if isinstance(v, str) else v for v in df["note"]
    ]
    write_manifest(df, manifest, meta)
    resumed = extract(
        manifest, "note", CharCountExpert(batch_size=4), out, shard_size=8, progress=False
    )
    extract(manifest, "note", CharCountExpert(batch_size=4), ref, shard_size=8, progress=False)
    assert resumed.shards_resumed == 0
    assert out.read_bytes() == ref.read_bytes()


# -- training ---------------------------------------------------------------------------------

# Six epochs keep a run short (each kill costs up to one run), so that ten kills stay cheap.
TRAIN_FUSION = FUSION | {"max_epochs": 6, "patience": 6, "d": 16, "adapter_bottleneck": 8}
RUN_FILES = {
    "config.json",
    "history.csv",
    "metrics.json",
    "model.safetensors",
    "predictions.parquet",
}


def _strip_seconds(obj):
    if isinstance(obj, dict):
        return {k: _strip_seconds(v) for k, v in obj.items() if k != "seconds"}
    return obj


def _run_contents(run: Path) -> dict[str, object]:
    out = {}
    for path in sorted(run.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(run))
            out[rel] = (
                _strip_seconds(json.loads(path.read_text()))
                if path.suffix == ".json"
                else path.read_bytes()
            )
    return out


def test_killed_training_never_leaves_a_run_that_looks_done(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "results", TRAIN_FUSION)
    cfg["seeds"] = [0, 1]
    write_synthetic(cfg, n=240)
    runs = tmp_path / "results" / "synth" / "runs"
    out = runs / "full" / "medmix"
    argv = ["train", "--config", json.dumps(cfg), "--dataset", "synth", "--method", "medmix",
            "--protocol", "full", "--out", str(out), "--threads", "1"]  # fmt: skip

    # the reference: an uninterrupted run in a fresh interpreter with another hash seed
    ref = tmp_path / "ref" / "medmix"
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "7"}
    argv_ref = [a if a != str(out) else str(ref) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "fusion", *argv_ref], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = _run_contents(ref)
    assert {Path(k).name for k in want} == RUN_FILES | {"summary.json"}

    log = tmp_path / "train.log"
    rc, span = timed_run(lambda: fusion_main(argv), log, CHILD_ENV)
    assert rc == 0
    # same config and seed, another process and hash seed: identical metrics, weights, predictions
    assert _run_contents(out) == want
    shutil.rmtree(out)

    rng = random.Random("train-kills")
    kills = 0
    for _attempt in range(40):
        rc = run_killed(lambda: fusion_main(argv), rng.uniform(0.0, span), log, CHILD_ENV)
        if rc == -signal.SIGKILL:
            kills += 1
        else:
            assert rc == 0, log.read_text()[-3000:]
        visible = [p for p in out.parent.iterdir() if not p.name.startswith(".")]
        if out.exists():  # only ever a complete run
            assert _run_contents(out) == want
        else:
            assert visible == []
            assert collect_metrics(runs, "synth").empty and unavailable_runs(runs) == []
        done = [p for p in runs.glob("*/*/summary.json") if not p.parent.name.startswith(".")]
        assert done == ([out / "summary.json"] if out.exists() else [])
        if kills >= 10:
            break
    assert kills >= 10
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(".")]
    rc, _ = timed_run(lambda: fusion_main(argv), log, CHILD_ENV)
    assert rc == 0
    assert _run_contents(out) == want
    assert [p.name for p in out.parent.iterdir()] == ["medmix"], leftovers  # temp folders cleaned
    metrics = collect_metrics(runs, "synth")
    assert set(metrics["seed"]) == {0, 1}
    assert pd.Series(metrics["method"]).eq("medmix").all()
