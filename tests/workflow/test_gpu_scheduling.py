"""On one machine the local profile (profiles/default) runs one GPU job at a time.

Every job that runs a model on the GPU asks for the resource gpu=1, and a resource that
``--resources`` does not bound is unlimited to Snakemake's scheduler: without a cap,
``snakemake --cores all --configfile config/paper.yaml`` would load several foundation models
onto one GPU together. The profile bounds ``gpu`` (1; MEDMIX_GPU_JOBS or ``--resources gpu=N``
raise it). The runs here are real local runs of the paper configuration's extraction jobs with a
stand-in ``python`` (tests/workflow_stub.py): the scheduler's decisions are real, the jobs only
sleep. The SLURM profiles replace the local one and keep no such cap.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests.workflow_stub import REPO, snakemake, stub_calls, stub_env

PAPER = REPO / "config" / "paper.yaml"
PROFILE = REPO / "profiles" / "default" / "config.yaml"
# Four GPU jobs (paper.yaml: device auto) after one CPU job (the cohort adapter).
GPU_TARGETS = [
    f"results-paper/openi/embeddings/{modality}/{expert}.parquet"
    for modality in ("frontal", "lateral")
    for expert in ("biomedclip", "dinov2-b")
]


def profile_resources(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    """The ``resources`` of profiles/default as Snakemake reads them under ``env``."""
    from snakemake.profiles import ProfileConfigFileParser

    monkeypatch.delenv("MEDMIX_GPU_JOBS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with PROFILE.open() as fh:
        return ProfileConfigFileParser().parse(fh)["resources"]


@pytest.mark.parametrize(
    ("env", "want"),
    [({}, 1), ({"MEDMIX_GPU_JOBS": "3"}, 3), ({"MEDMIX_GPU_JOBS": ""}, 1),
     ({"MEDMIX_GPU_JOBS": "0"}, 1)],
)  # fmt: skip
def test_profile_caps_gpu_jobs(monkeypatch: pytest.MonkeyPatch, env: dict, want: int) -> None:
    assert profile_resources(monkeypatch, **env) == [f"gpu={want}"]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, step in events:  # an end sorts before a start at the same instant
        cur += step
        best = max(best, cur)
    return best


def run_gpu_jobs(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """Run GPU_TARGETS with 4 cores; (most GPU jobs at once, console output)."""
    bin_dir = tmp_path / "bin"
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = snakemake(
        workdir, *GPU_TARGETS, "--cores", "4", "--configfile", str(PAPER), *args,
        env=stub_env(bin_dir, sleep=0.8, **env),
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    calls = stub_calls(bin_dir)
    gpu = [(c["start"], c["end"]) for c in calls if c["argv"][1:3] == ["extractors", "extract"]]
    assert len(gpu) == len(GPU_TARGETS), calls
    return max_overlap(gpu), out


def test_local_run_runs_one_gpu_job_at_a_time(tmp_path: Path) -> None:
    most, out = run_gpu_jobs(tmp_path)
    assert "Using workflow specific profile" in out and "profiles/default" in out, out[:2000]
    assert re.search(r"Provided resources: .*gpu\W+1\b", out), out[:3000]
    assert most == 1, f"{most} GPU jobs ran at once"


@pytest.mark.parametrize("how", ["env", "cli"])
def test_gpu_cap_can_be_raised(tmp_path: Path, how: str) -> None:
    if how == "env":
        most, _ = run_gpu_jobs(tmp_path, MEDMIX_GPU_JOBS="2")
    else:
        most, _ = run_gpu_jobs(tmp_path, "--resources", "gpu=2")
    assert most == 2, f"{most} GPU jobs ran at once"


def test_paper_dry_run_asks_one_gpu_per_gpu_job(tmp_path: Path) -> None:
    """config/paper.yaml's whole DAG under the local profile: the jobs of the GPU-capable rules
    ask for gpu=1 (so each counts against the cap), every other job for gpu=0."""
    from tests.workflow.test_slurm import gpu_rules

    proc = snakemake(tmp_path, "-n", "--configfile", str(PAPER))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.M)
    assert jobs, out[-3000:]
    asking = {rule for rule, res in jobs if re.search(r"\bgpu=1\b", res)}
    present = {rule for rule, _ in jobs}
    assert asking == gpu_rules() & present, sorted(asking)
    # the paper config does not shard its extractions, so no extract_shard job is planned
    assert gpu_rules() - present == {"extract_shard"}, sorted(gpu_rules() - present)
    for rule, res in jobs:
        assert re.search(r"\bgpu=[01]\b", res), (rule, res)


def test_slurm_profiles_keep_no_local_gpu_cap(tmp_path: Path) -> None:
    """`--workflow-profile profiles/slurm[-gpu]` replaces profiles/default: no `resources:`
    cap, so SLURM may run every GPU job at once (each on its own GPU). Run locally here
    (`--executor local`), the four GPU jobs overlap."""
    for name in ("slurm", "slurm-gpu"):
        prof = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        assert "resources" not in prof, name
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (its profile options)")
    most, out = run_gpu_jobs(
        tmp_path, "--workflow-profile", str(REPO / "profiles" / "slurm"), "--executor", "local"
    )
    assert "Provided resources" not in out, out[:3000]
    assert most > 1, f"{most} GPU jobs ran at once"
