"""The cluster path against a real SLURM: a slice of the demo through profiles/slurm.

The slice (config/slurm-smoke.yaml): the manifest of one tiny demo cohort, one extractor
(report/tfidf-svd) and one training job (full/medmix, one seed). It runs twice, in two
scratch working directories: locally, and through ``snakemake --workflow-profile
profiles/slurm`` (every job via ``sbatch``), each bounded by ``timeout -s KILL``. The test
checks that every job went through SLURM (the plugin's per-job logs, plus the job records of
``scontrol``, ``sacct`` or the test cluster's jobcomp file) and that both runs produced the
same manifest, cache content and training metrics.

Runs when ``MEDMIX_SLURM=1`` is set (then a missing SLURM is a failure) or when ``sinfo``
answers; skipped otherwise. ``bash .ci/slurm/start.sh`` starts a single-node SLURM here.
Environment: MEDMIX_SLURM_STATE (default /tmp/medmix-slurm; its slurm.conf is used when
SLURM_CONF is unset), MEDMIX_SLURM_TIMEOUT (seconds for the SLURM run, default 600),
MEDMIX_SLURM_PARTITION / MEDMIX_SLURM_ACCOUNT (read by the profile).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "slurm-smoke.yaml"
DATASET = "demo-openi"
RESULTS = Path("results/slurm-smoke") / DATASET
CACHE = RESULTS / "embeddings" / "report" / "tfidf-svd.parquet"
RUN = RESULTS / "runs" / "full" / "medmix"
TARGET = str(RUN / "summary.json")
RULES = {"demo_cohort", "extract", "train"}
STATE = Path(os.environ.get("MEDMIX_SLURM_STATE", "/tmp/medmix-slurm"))
REQUIRED = os.environ.get("MEDMIX_SLURM") == "1"
LOCAL_TIMEOUT = 600
SLURM_TIMEOUT = int(os.environ.get("MEDMIX_SLURM_TIMEOUT", "600"))

pytestmark = pytest.mark.slow


def slurm_env() -> dict[str, str]:
    env = dict(os.environ)
    ours = STATE / "slurm.conf"
    if "SLURM_CONF" not in env and ours.exists():
        env["SLURM_CONF"] = str(ours)
    if env.get("SLURM_CONF") == str(ours):
        # The test cluster has no accounting: name an account so the plugin does not guess.
        env.setdefault("MEDMIX_SLURM_ACCOUNT", "medmix-ci")
    # Byte-stable cache metadata (created_at) in both runs.
    env.setdefault("SOURCE_DATE_EPOCH", "1700000000")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def sinfo_answer(env: dict[str, str]) -> str | None:
    """Why SLURM is not usable here, or None when a node answers."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "no sinfo/sbatch on PATH"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[:300]}"
    states = {s.strip("*~#") for s in proc.stdout.split()}
    if not states & {"idle", "mix", "alloc"}:
        return f"no usable node (states: {sorted(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    env = slurm_env()
    why = sinfo_answer(env)
    if why is None and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        why = "snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm)"
    if why is not None:
        msg = f"SLURM cluster test: {why}. Start one with `bash .ci/slurm/start.sh`."
        if REQUIRED:
            pytest.fail(f"MEDMIX_SLURM=1 but {msg}")
        pytest.skip(f"{msg} (set MEDMIX_SLURM=1 to make this a failure)")
    return env


class Run:
    """The workflow's slice in ``workdir``, started in the background and hard-bounded by
    ``timeout -s KILL``; ``finish()`` waits and returns (exit code, output, wall seconds)."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str], timeout: int) -> None:
        cmd = [
            "timeout", "-s", "KILL", str(timeout),
            sys.executable, "-m", "snakemake", TARGET,
            "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir),
            *args,
            "--configfile", str(CONFIG),
        ]  # fmt: skip
        self.timeout = timeout
        self.log = workdir / "snakemake.out"
        self._fh = self.log.open("w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._fh, stderr=subprocess.STDOUT
        )

    def finish(self) -> tuple[int, str, float]:
        try:
            rc = self.proc.wait(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:  # `timeout` itself hung: should not happen
            self.proc.kill()
            rc = self.proc.wait()
        wall = time.monotonic() - self.t0
        self._fh.close()
        return rc, self.log.read_text(errors="replace"), wall


def failure_report(workdir: Path, out: str, rc: int) -> str:
    logs = []
    for pattern in ("results/**/logs/**/*.log", ".snakemake/slurm_logs/**/*.log"):
        for p in sorted(workdir.glob(pattern)):
            logs.append(f"--- {p.relative_to(workdir)}\n{p.read_text(errors='replace')[-1500:]}")
    killed = " (killed by timeout -s KILL)" if rc in (124, 137, -9) else ""
    return f"snakemake exited {rc}{killed}:\n{out[-5000:]}\n" + "\n".join(logs)[-8000:]


def cancel_leftovers(workdir: Path, env: dict[str, str]) -> None:
    """After a killed run: cancel its SLURM jobs (by working directory) and unlock."""
    proc = subprocess.run(
        ["squeue", "-h", "-o", "%i %Z"], env=env, capture_output=True, text=True, timeout=15
    )
    ids = [line.split()[0] for line in proc.stdout.splitlines() if str(workdir) in line]
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=15)
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--unlock", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--configfile", str(CONFIG)],
        cwd=REPO, env=env, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("slurm-slice")
    local, cluster = base / "local", base / "slurm"
    local.mkdir()
    cluster.mkdir()

    # Both at once: the SLURM run mostly waits (job start-up, status polling).
    slurm_run = Run(cluster, ["--workflow-profile", "profiles/slurm"], cluster_env, SLURM_TIMEOUT)
    local_run = Run(local, ["--cores", "1"], cluster_env, LOCAL_TIMEOUT)
    rc_local, out_local, local_wall = local_run.finish()
    rc, out, slurm_wall = slurm_run.finish()
    if rc != 0:
        cancel_leftovers(cluster, cluster_env)
        pytest.fail("SLURM run: " + failure_report(cluster, out, rc))
    if rc_local != 0:
        pytest.fail("local run: " + failure_report(local, out_local, rc_local))

    timings = {"local_s": round(local_wall, 1), "slurm_s": round(slurm_wall, 1)}
    (base / "timings.json").write_text(json.dumps(timings))
    print(
        f"\nslice wall time (run side by side): local {timings['local_s']} s,"
        f" SLURM {timings['slurm_s']} s ({base})"
    )
    return {"local": local, "slurm": cluster, "out": out, "env": cluster_env, "timings": timings}


# ---------------------------------------------------------------------------------------------


def slurm_logs(workdir: Path) -> dict[str, list[str]]:
    """rule (or group) -> SLURM job ids, from the plugin's log files."""
    found: dict[str, list[str]] = {}
    for log in sorted((workdir / ".snakemake" / "slurm_logs").glob("**/*.log")):
        top = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0]
        kind = re.sub(r"^(rule|group)_", "", top)
        found.setdefault(kind, []).append(log.stem)
    return found


def job_state(jobid: str, env: dict[str, str]) -> tuple[str | None, str]:
    """(state, source) from scontrol (recent jobs), sacct (accounting) or jobcomp (test cluster)."""
    proc = subprocess.run(
        ["scontrol", "-o", "show", "job", jobid],
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
    )
    m = re.search(r"\bJobState=(\S+)", proc.stdout)
    if m:
        workdir = re.search(r"\bWorkDir=(\S+)", proc.stdout)
        return m.group(1), f"scontrol (WorkDir={workdir.group(1) if workdir else '?'})"
    jobcomp = STATE / "jobcomp.log"
    if jobcomp.exists():
        for line in jobcomp.read_text().splitlines():
            if line.startswith(f"JobId={jobid} "):
                return re.search(r"\bJobState=(\S+)", line).group(1), "jobcomp"
    if shutil.which("sacct"):
        proc = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", jobid, "-o", "State"],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()[0], "sacct"
    return None, "not found"


def test_every_job_went_through_sbatch(runs: dict) -> None:
    out = runs["out"]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    logs = slurm_logs(runs["slurm"])
    # one SLURM job per rule; train is submitted as the profile's group `train_jobs`
    kinds = {"train" if k.startswith("train_jobs") else k for k in logs}
    assert kinds == RULES, (
        f"SLURM logs per rule/group: {logs}; snakemake said submitted: {submitted}"
    )
    ids = sorted({i for v in logs.values() for i in v})
    assert sorted(set(submitted)) == ids, f"submitted {submitted}, logs for {ids}"
    for jobid in ids:
        state, source = job_state(jobid, runs["env"])
        assert state == "COMPLETED", f"SLURM job {jobid}: state {state} ({source})"
        if source.startswith("scontrol"):
            assert str(runs["slurm"]) in source, f"SLURM job {jobid} ran elsewhere: {source}"


def test_slurm_job_ran_the_rule_inside_slurm(runs: dict) -> None:
    """The per-job log shows the jobstep executor ran the rule under a SLURM allocation."""
    logs = sorted((runs["slurm"] / ".snakemake" / "slurm_logs").glob("rule_extract/**/*.log"))
    assert logs, "no SLURM log for extract"
    text = logs[0].read_text(errors="replace")
    assert "extract" in text and "python -m extractors extract" in text, text[-2000:]


def test_manifest_equals_local(runs: dict) -> None:
    a = pd.read_parquet(runs["local"] / RESULTS / "manifest.parquet")
    b = pd.read_parquet(runs["slurm"] / RESULTS / "manifest.parquet")
    pd.testing.assert_frame_equal(a, b)


def _cache(path: Path) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"medmix.cache"])
    meta.pop("created_at", None)
    return table.to_pandas(), meta


def test_cache_content_equals_local(runs: dict) -> None:
    a, meta_a = _cache(runs["local"] / CACHE)
    b, meta_b = _cache(runs["slurm"] / CACHE)
    assert meta_a == meta_b
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for col in a.columns:
        if col == "embedding":
            for x, y in zip(a[col], b[col], strict=True):
                assert (x is None and y is None) or (x == y).all()
        else:
            pd.testing.assert_series_equal(a[col], b[col])
    assert (a["status"] == "ok").sum() > 0


def _drop_timing(obj):
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if k not in ("seconds", "created_at")}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def test_training_metrics_equal_local(runs: dict) -> None:
    for rel in ("summary.json", "seed0/metrics.json"):
        a = _drop_timing(json.loads((runs["local"] / RUN / rel).read_text()))
        b = _drop_timing(json.loads((runs["slurm"] / RUN / rel).read_text()))
        assert a == b, f"{rel} differs between the local and the SLURM run"
    ha = pd.read_csv(runs["local"] / RUN / "seed0" / "history.csv")
    hb = pd.read_csv(runs["slurm"] / RUN / "seed0" / "history.csv")
    pd.testing.assert_frame_equal(ha, hb)


def test_gpu_profile_reruns_one_extractor_on_a_gpu(runs: dict) -> None:
    """docs/cluster.md's single-extractor rerun, through profiles/slurm-gpu: the job asks
    SLURM for one GPU and cpus_per_gpu CPUs (the test cluster has one pretend GPU), and the
    rebuilt cache equals the local one (the expert still runs on CPU: device is cpu)."""
    env = runs["env"]
    gres = subprocess.run(
        ["sinfo", "-h", "-o", "%G"], env=env, capture_output=True, text=True, timeout=15
    )
    if "gpu" not in gres.stdout:
        pytest.skip(f"the cluster advertises no GPU gres ({gres.stdout.strip() or 'none'})")
    cluster = runs["slurm"]
    before = {i for v in slurm_logs(cluster).values() for i in v}
    cmd = [
        "timeout", "-s", "KILL", str(SLURM_TIMEOUT),
        sys.executable, "-m", "snakemake", str(CACHE), "--force",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(cluster),
        "--workflow-profile", "profiles/slurm-gpu", "--configfile", str(CONFIG),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=SLURM_TIMEOUT + 30
    )
    if proc.returncode != 0:
        cancel_leftovers(cluster, env)
        pytest.fail(
            "GPU-profile rerun: "
            + failure_report(cluster, proc.stdout + proc.stderr, proc.returncode)
        )
    new = {k: [i for i in v if i not in before] for k, v in slurm_logs(cluster).items()}
    new = {k: v for k, v in new.items() if v}
    assert list(new) == ["extract"] and len(new["extract"]) == 1, f"new SLURM jobs: {new}"
    show = subprocess.run(
        ["scontrol", "-o", "show", "job", new["extract"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
    ).stdout
    if not show:
        pytest.skip("scontrol no longer knows the job (MinJobAge passed)")
    assert "TresPerJob=gres:gpu:1" in show, show
    assert "CpusPerTres=gres:gpu:4" in show, show
    assert "JobState=COMPLETED" in show, show
    test_cache_content_equals_local(runs)


# --- the profiles themselves (no SLURM needed) -------------------------------------------------


def load_profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def workflow_rules() -> set[str]:
    names = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        names |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    return names


def test_slurm_profile_settings() -> None:
    prof = load_profile("slurm")
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue", (
        "sacct hangs without accounting (see the profile)"
    )
    assert prof["retries"] >= 1 and prof["jobs"] >= 1 and prof["latency-wait"] >= 5
    assert {"mem_mb", "runtime", "slurm_partition", "slurm_account"} <= set(
        prof["default-resources"]
    )
    assert "attempt" in str(prof["default-resources"]["mem_mb"])
    # every rule that runs jobs gets attempt-scaled memory (rule resources beat default-resources)
    rules = workflow_rules() - {"all"}
    missing = sorted(
        r for r in rules if "attempt" not in str(prof["set-resources"].get(r, {}).get("mem_mb", ""))
    )
    assert not missing, (
        f"rules without attempt-scaled mem_mb in profiles/slurm set-resources: {missing}"
    )
    assert prof["groups"]["train"] in prof["group-components"]


def test_gpu_profile_is_the_slurm_profile_plus_gpu_extraction() -> None:
    cpu, gpu = load_profile("slurm"), load_profile("slurm-gpu")
    assert {k: v for k, v in gpu.items() if k != "set-resources"} == {
        k: v for k, v in cpu.items() if k != "set-resources"
    }
    assert {k: v for k, v in gpu["set-resources"].items() if k != "extract"} == {
        k: v for k, v in cpu["set-resources"].items() if k != "extract"
    }
    extract = gpu["set-resources"]["extract"]
    assert extract["gpu"] == 1 and extract["cpus_per_gpu"] >= 1
    assert {"gpu_model", "slurm_partition"} <= set(extract) and "attempt" in str(extract["mem_mb"])


@pytest.mark.parametrize("profile", ["slurm", "slurm-gpu"])
def test_profile_dry_run_groups_training(profile: str) -> None:
    """The full demo DAG through the profile: resources evaluate, train jobs are grouped."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--workflow-profile", f"profiles/{profile}"],
        cwd=REPO, env=slurm_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    groups = re.findall(r"Group job train_jobs", out)
    m = re.search(r"^train\s+(\d+)$", out, re.M)
    n_train = int(m.group(1))
    size = load_profile(profile)["group-components"]["train_jobs"]
    assert len(groups) == -(-n_train // size), f"{n_train} train jobs in {len(groups)} groups"
