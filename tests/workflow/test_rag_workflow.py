"""The demo DAG schedules the RAG expert everywhere it is configured (a Snakemake dry run).

For every modality of every demo dataset in config.yaml: one ``bridge`` job and one ``rag`` job;
image, volume and slide bridges read the image expert's cache of that modality (the offline
nearest-report bridge), an external target's also the source's manifest and cache; text and
time-series bridges read the manifest only; every ``rag`` job reads its bridge, the shared
knowledge index and the projection. A dry run builds nothing (about 10 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cohorts.demo.generate import KINDS

# end-to-end Snakemake runs: the slow tier (`pytest -m "not slow"` leaves them out)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGE_KINDS = ("image", "volume", "slide")


def parse_jobs(log: str) -> list[dict]:
    """The jobs of a dry-run log: rule, input and output files, wildcards."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:\n)", log):
        head = re.match(r"rule (\w+):\n", block)
        if not head:
            continue
        job: dict = {"rule": head.group(1), "input": [], "output": [], "wildcards": {}}
        for key, value in re.findall(r"^    (input|output|wildcards): (.*)$", block, re.M):
            if key == "wildcards":
                job[key] = dict(kv.split("=", 1) for kv in value.split(", "))
            else:
                job[key] = value.split(", ")
        jobs.append(job)
    return jobs


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    results = tmp_path_factory.mktemp("ragdag") / "results"  # empty: every job is scheduled
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["MEDMIX_CONSOLE_FULL"] = "1"  # read every job's whole input listing
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--nolock",
        "--configfile",
        "config.yaml",
        "--config",
        f"results={results}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = parse_jobs(proc.stdout + proc.stderr)
    assert jobs, "no job found in the dry-run log"
    return {"results": str(results), "jobs": jobs}


def demo_modalities() -> dict[str, dict[str, str]]:
    """dataset -> {modality: kind} for every demo dataset of config.yaml (kinds from the
    generator, which decides what a demo cohort has)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    return {
        name: dict(KINDS[dcfg["demo"]["kind"]].modalities)
        for name, dcfg in cfg["datasets"].items()
        if dcfg.get("adapter") == "demo"
    }


def test_every_demo_modality_gets_a_bridge_and_a_rag_job(dry_run: dict) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    demo = demo_modalities()
    assert len(demo) >= 3
    for d, mods in demo.items():  # the config gives every modality of the cohort a RAG expert
        configured = cfg["datasets"][d]["modalities"]
        assert set(configured) == set(mods), d
        assert all("rag" in configured[m] for m in mods), d
    expected = {(d, m) for d, mods in demo.items() for m in mods}
    for rule in ("bridge", "rag"):
        got = [
            (j["wildcards"]["dataset"], j["wildcards"]["modality"])
            for j in dry_run["jobs"]
            if j["rule"] == rule
        ]
        assert sorted(got) == sorted(expected), rule  # each exactly once
    shared = [
        j["rule"] for j in dry_run["jobs"] if j["rule"] in ("knowledge_index", "rag_projection")
    ]
    assert sorted(shared) == ["knowledge_index", "rag_projection"]  # once, for all datasets


def test_bridge_inputs_follow_the_modality_kind(dry_run: dict) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    bridges = cfg["rag"]["bridges"]
    external = {e["target"]: e["source"] for e in cfg.get("external", [])}
    res = dry_run["results"]
    kinds = demo_modalities()
    seen_kinds = set()
    for job in (j for j in dry_run["jobs"] if j["rule"] == "bridge"):
        d, m = job["wildcards"]["dataset"], job["wildcards"]["modality"]
        kind = kinds[d][m]
        seen_kinds.add(kind)
        want = [f"{res}/{d}/manifest.parquet"]
        if kind in IMAGE_KINDS:
            expert = bridges[kind]["image_expert"]
            assert (
                bridges[kind]["type"] == "nearest-report"
                and expert in cfg["datasets"][d]["modalities"][m]
            )
            want.append(f"{res}/{d}/embeddings/{m}/{expert}.parquet")
            if d in external:  # the report library is the source's training split
                src = external[d]
                want += [
                    f"{res}/{src}/manifest.parquet",
                    f"{res}/{src}/embeddings/{m}/{expert}.parquet",
                ]
        assert sorted(job["input"]) == sorted(want), (d, m)
        assert job["output"] == [f"{res}/{d}/bridge/{m}.parquet"]
    assert seen_kinds == {"image", "volume", "slide", "text", "timeseries"}


def test_rag_jobs_read_their_bridge_and_the_shared_knowledge(dry_run: dict) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    res = dry_run["results"]
    kb = f"{res}/knowledge/{cfg['rag']['knowledge']['name']}"
    shared = [
        f"{kb}/index.faiss",
        f"{kb}/docs.parquet",
        f"{kb}/index.json",
        f"{kb}/projection.safetensors",
    ]
    for job in (j for j in dry_run["jobs"] if j["rule"] == "rag"):
        d, m = job["wildcards"]["dataset"], job["wildcards"]["modality"]
        assert sorted(job["input"]) == sorted([f"{res}/{d}/bridge/{m}.parquet", *shared])
        assert sorted(job["output"]) == sorted(
            [
                f"{res}/{d}/embeddings/{m}/rag.parquet",
                f"{res}/{d}/embeddings/{m}/rag.provenance.parquet",
            ]
        )
