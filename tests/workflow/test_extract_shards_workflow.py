"""Sharded extraction through Snakemake (local): 4 shard jobs + a gather per cache.

A tiny slice (config/slurm-shards.yaml with the texture expert on the frontal images in place
of its TF-IDF, which the unit and SLURM tests cover) runs with ``extraction.shards: 4``. The
unsharded reference cache is what rule extract writes (:func:`extractors.extract.extract`,
called here in-process to save the jobs' start-up time). In the sharded run one shard job
fails (its part's writer lock is held by the test, as by a still-running job of an earlier
run); the other jobs finish (``--keep-going``), and the rerun runs exactly that shard and the
gather. The gathered cache is byte-identical to the unsharded one, and a new
``max_failed_fraction`` reruns only the gather (the parts stay beside the cache).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extractors.cache_lock import CacheLock
from extractors.extract import extract
from extractors.registry import create_expert, register_preset
from medmix.extract_shards import part_path, part_paths

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATASET = "demo-openi"
CACHES = {"frontal": "radiomics"}
LOCKED = ("frontal", "radiomics", 2)  # the shard job that fails in the first sharded run
ENV = {"SOURCE_DATE_EPOCH": "1700000000", "HF_HUB_OFFLINE": "1"}


def _config(tmp: Path) -> Path:
    """config/slurm-shards.yaml (4 shards) with the texture expert on the frontal images."""
    cfg = yaml.safe_load((REPO / "config" / "slurm-shards.yaml").read_text())
    assert cfg["extraction"]["shards"] == 4
    cfg["results"] = str(tmp / "results")
    cfg["datasets"][DATASET]["modalities"] = {"frontal": ["radiomics"]}
    cfg["experts"] = {"radiomics": {"type": "texture-glcm-lbp"}}
    path = tmp / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _caches(config: Path) -> list[Path]:
    results = Path(yaml.safe_load(config.read_text())["results"]) / DATASET / "embeddings"
    return [results / m / f"{e}.parquet" for m, e in CACHES.items()]


def _smk(config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *map(str, _caches(config)), *args,
           "--cores", "2", "--directory", str(config.parent), "--configfile", str(config)]  # fmt: skip
    env = {**os.environ, **ENV}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _jobs(out: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job snakemake started (or planned, in a dry run)."""
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", out, re.M):
        wc = re.search(r"^    wildcards: (.*)$", m.group(2), re.M)
        pairs = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((m.group(1), pairs))
    return jobs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("shards")
    sharded = _config(tmp)
    modality, expert, part = LOCKED
    cache = _caches(sharded)[list(CACHES).index(modality)]
    locked = Path(part_path(cache, part, 4))
    locked.parent.mkdir(parents=True)
    lock = CacheLock(locked).acquire()
    try:
        first = _smk(sharded, "--keep-going")
    finally:
        lock.release()
    logs = Path(yaml.safe_load(sharded.read_text())["results"]) / "logs" / DATASET / "extract"
    failed_log = (logs / modality / f"{expert}.{part}-of-4.log").read_text()
    done = [Path(p).exists() for p in part_paths(cache, 4)]
    second = _smk(sharded)
    return {"tmp": tmp, "sharded": sharded, "first": first, "failed_log": failed_log,
            "done": done, "second": second, "plain": _unsharded(sharded, tmp / "plain")}  # fmt: skip


def _unsharded(config: Path, out: Path) -> list[Path]:
    """The cache(s) rule extract writes (the same call, in-process), from the run's manifest."""
    cfg = yaml.safe_load(config.read_text())
    manifest = Path(cfg["results"]) / DATASET / "manifest.parquet"
    for name, spec in cfg["experts"].items():
        register_preset(name, spec)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        return [
            extract(manifest, modality, create_expert(expert), out / f"{expert}.parquet",
                    shard_size=cfg["extraction"]["shard_size"], progress=False).path
            for modality, expert in CACHES.items()
        ]  # fmt: skip


def test_a_failed_shard_job_leaves_the_others_done(runs: dict) -> None:
    first = runs["first"]
    assert first.returncode != 0, "the locked shard job should have failed"
    out = first.stdout + first.stderr
    jobs = _jobs(out)
    parts = sorted(wc["part"] for rule, wc in jobs if rule == "extract_shard")
    assert parts == ["1", "2", "3", "4"], jobs  # every shard job started
    assert "extract_gather" not in {rule for rule, _ in jobs}, jobs  # waits for part 2
    assert runs["done"] == [True, False, True, True], runs["done"]
    text = runs["failed_log"]
    assert "another extraction is writing this cache" in text, text[-2000:]


def test_rerun_runs_only_the_failed_shard_and_its_gather(runs: dict) -> None:
    second = runs["second"]
    assert second.returncode == 0, second.stderr[-4000:]
    modality, expert, part = LOCKED
    ran = sorted((rule, wc.get("expert"), wc.get("part")) for rule, wc in _jobs(second.stderr))
    assert ran == [("extract_gather", expert, None), ("extract_shard", expert, str(part))], ran


def test_gathered_cache_equals_unsharded(runs: dict) -> None:
    for a, b in zip(runs["plain"], _caches(runs["sharded"]), strict=True):
        assert b.exists() and _sha(a) == _sha(b), f"{b} differs from the unsharded {a}"
        assert all(Path(p).exists() for p in part_paths(b, 4)), "the parts stay"


def test_a_new_threshold_reruns_only_the_gather_and_parts_can_go(runs: dict) -> None:
    again = _smk(runs["sharded"], "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    cfg = yaml.safe_load(runs["sharded"].read_text())
    cfg["extraction"]["max_failed_fraction"] = 0.4
    stricter = runs["tmp"] / "stricter.yaml"  # same results folder
    stricter.write_text(yaml.safe_dump(cfg))
    dry = _smk(stricter, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    rules = sorted(rule for rule, _ in _jobs(dry.stdout + dry.stderr))
    assert rules == ["extract_gather"], dry.stdout[-3000:]
    # the parts are only needed to gather again: without them nothing reruns
    shutil.rmtree(Path(part_paths(_caches(runs["sharded"])[0], 4)[0]).parent)
    again = _smk(runs["sharded"], "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
