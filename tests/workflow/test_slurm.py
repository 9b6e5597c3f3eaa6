"""The cluster path against a real SLURM: a slice of the demo through profiles/slurm.

The slice (config/slurm-smoke.yaml): the manifest of one tiny demo cohort, one extractor
(report/tfidf-svd) and one training job (full/medmix, one seed). It runs twice, in two
scratch working directories: locally, and through ``snakemake --workflow-profile
profiles/slurm`` (every job via ``sbatch``), each bounded by ``timeout -s KILL``. The test
checks that every job went through SLURM (the plugin's per-job logs, plus the job records of
``scontrol``, ``sacct`` or the test cluster's jobcomp file) and that both runs produced the
same manifest, cache content and training metrics.

A sharded extraction (config/slurm-shards.yaml: the same cohort, report/tfidf-svd with
``extraction: {shards: 4}``) runs through the same profile: each of the 4 shard jobs and the
gather is its own SLURM job, and the gathered cache is byte-identical to a local unsharded
extraction's.

A further cluster test runs a one-rule workflow through the same profile whose job fails on
attempt 1: Snakemake must resubmit it and SLURM must give attempt 2 the profile's
``mem_mb: N * attempt`` (only with ``MEDMIX_SLURM=1``, about 55 s).

The cluster tests run when ``MEDMIX_SLURM=1`` is set (then a missing SLURM is a failure) or
when ``sinfo`` answers; skipped otherwise. Without SLURM, the profiles are checked statically and
through dry runs (the resources each job would ask for, GPU routing per rule and per expert
device), and .ci/run's policy (fail when root on Linux and SLURM does not start) with stubs. ``bash .ci/slurm/start.sh`` starts a single-node SLURM here.
Environment: MEDMIX_SLURM_STATE (default /tmp/medmix-slurm; its slurm.conf is used when
SLURM_CONF is unset), MEDMIX_SLURM_TIMEOUT (seconds for the SLURM run, default 600),
MEDMIX_SLURM_PARTITION / MEDMIX_SLURM_ACCOUNT (read by the profile).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from cohorts.demo import generate_cohort
from extractors.extract import extract
from extractors.registry import create_expert, register_preset

REPO = Path(__file__).resolve().parents[2]
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
    """The workflow's slice in ``workdir`` (``target`` of ``config``), started in the
    background and hard-bounded by ``timeout -s KILL``; ``finish()`` waits and returns (exit
    code, output, wall seconds)."""

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        env: dict[str, str],
        timeout: int,
        target: str = TARGET,
        config: Path = CONFIG,
    ) -> None:
        cmd = [
            "timeout", "-s", "KILL", str(timeout),
            sys.executable, "-m", "snakemake", target,
            "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir),
            *args,
            "--configfile", str(config),
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


def cancel_leftovers(
    workdir: Path, env: dict[str, str], snakefile: Path = REPO / "Snakefile", config: Path = CONFIG
) -> None:
    """After a killed run: cancel its SLURM jobs (by working directory) and unlock."""
    proc = subprocess.run(
        ["squeue", "-h", "-o", "%i %Z"], env=env, capture_output=True, text=True, timeout=15
    )
    ids = [line.split()[0] for line in proc.stdout.splitlines() if str(workdir) in line]
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=15)
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--unlock", "--snakefile", str(snakefile),
         "--directory", str(workdir), "--configfile", str(config)],
        cwd=REPO, env=env, capture_output=True, timeout=120,
    )  # fmt: skip


def readme_cluster_command() -> list[str]:
    """The README's "try it on a local SLURM" command, split into words."""
    lines = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith(f"snakemake {TARGET} ")
    ]
    assert len(lines) == 1, f"the README should show the cluster slice once: {lines}"
    return shlex.split(lines[0])


def test_readme_cluster_command_is_the_tested_one() -> None:
    """The README's command is the one the fixture runs: profile and config as tested, and
    the README installs the executor plugin through the pinned `cluster` extra."""
    words = readme_cluster_command()
    assert words[:2] == ["snakemake", TARGET]
    assert words[2:] == [
        "--workflow-profile", "profiles/slurm", "--configfile", "config/slurm-smoke.yaml"
    ]  # fmt: skip
    readme = (REPO / "README.md").read_text()
    assert 'pip install -c envs/constraints.txt -e ".[cluster]"' in readme


@pytest.fixture(scope="module")
def runs(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("slurm-slice")
    local, cluster = base / "local", base / "slurm"
    local.mkdir()
    cluster.mkdir()

    # Both at once: the SLURM run mostly waits (job start-up, status polling). The SLURM run
    # is the README's cluster command, word for word (plus the scratch directory).
    readme_args = readme_cluster_command()[1:]
    assert readme_args[0] == TARGET and readme_args[-2:] == [
        "--configfile",
        "config/slurm-smoke.yaml",
    ]
    slurm_run = Run(cluster, readme_args[1:-2], cluster_env, SLURM_TIMEOUT)
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


def _fields(line: str) -> dict[str, str]:
    """``Key=value Key2=value2`` (scontrol -o, jobcomp/filetxt) -> dict."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))


def _record(f: dict[str, str], tres_key: str, source: str) -> dict[str, str]:
    """A job record from ``key=value`` fields (scontrol / jobcomp spell the TRES key apart)."""
    mem = re.search(r"\bmem=(\w+)", f.get(tres_key, ""))
    return {
        "state": f["JobState"],
        "mem": mem.group(1) if mem else "?",
        "workdir": f.get("WorkDir", "?"),
        "source": source,
    }


def job_record(jobid: str, env: dict[str, str]) -> dict[str, str]:
    """state, mem (memory SLURM allocated, e.g. ``2000M``), workdir and source of one job, from
    scontrol (recent jobs), the test cluster's jobcomp file or sacct (accounting)."""
    proc = subprocess.run(
        ["scontrol", "-o", "show", "job", jobid],
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
    )
    f = _fields(proc.stdout)
    if "JobState" in f:
        return _record(f, "TRES", "scontrol")
    jobcomp = STATE / "jobcomp.log"
    if jobcomp.exists():
        for line in jobcomp.read_text().splitlines():
            if line.startswith(f"JobId={jobid} "):
                return _record(_fields(line), "Tres", "jobcomp")
    if shutil.which("sacct"):
        proc = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", jobid, "-o", "State,ReqMem,WorkDir"],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            state, mem, workdir = proc.stdout.splitlines()[0].split("|")[:3]
            return {"state": state.split()[0], "mem": mem, "workdir": workdir, "source": "sacct"}
    return {"state": "", "mem": "?", "workdir": "?", "source": "not found"}


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
        rec = job_record(jobid, runs["env"])
        assert rec["state"] == "COMPLETED", f"SLURM job {jobid}: {rec}"
        if rec["source"] != "not found":
            assert rec["workdir"] == str(runs["slurm"]), f"SLURM job {jobid} ran elsewhere: {rec}"


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


SHARDS_CONFIG = REPO / "config" / "slurm-shards.yaml"
SHARDED_CACHE = (
    Path("results/slurm-shards") / DATASET / "embeddings" / "report" / "tfidf-svd.parquet"
)
SHARDS = 4


def test_sharded_extraction_runs_each_shard_as_its_own_slurm_job(
    cluster_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/slurm-shards.yaml through profiles/slurm: 4 shard jobs and the gather, each its
    own SLURM job (one per part, distinct job ids, all COMPLETED in this working directory);
    the gathered cache is byte-identical to an unsharded extraction of the same manifest
    (what rule extract runs, here in-process). The manifest is generated here as rule
    demo_cohort would (one wave of SLURM polling less)."""
    cfg = yaml.safe_load(SHARDS_CONFIG.read_text())
    assert cfg["extraction"]["shards"] == SHARDS
    demo = cfg["datasets"][DATASET]["demo"]
    root = tmp_path / SHARDED_CACHE.parents[2]
    generate_cohort(demo["kind"], root, demo["n_patients"], demo["seed"], DATASET, progress=False)
    run = Run(tmp_path, ["--workflow-profile", "profiles/slurm"], cluster_env, SLURM_TIMEOUT,
              target=str(SHARDED_CACHE), config=SHARDS_CONFIG)  # fmt: skip
    rc, out, _ = run.finish()
    if rc != 0:
        cancel_leftovers(tmp_path, cluster_env, config=SHARDS_CONFIG)
        pytest.fail("sharded SLURM run: " + failure_report(tmp_path, out, rc))
    logs = slurm_logs(tmp_path)
    assert {k: len(v) for k, v in logs.items()} == {"extract_shard": SHARDS, "extract_gather": 1}, (
        logs
    )
    parts = sorted(
        p.parent.name
        for p in (tmp_path / ".snakemake" / "slurm_logs").glob("rule_extract_shard/*/*.log")
    )
    assert len(set(parts)) == SHARDS, f"one SLURM job per part: {parts}"
    ids = [i for v in logs.values() for i in v]
    assert len(set(ids)) == len(ids) == SHARDS + 1, ids
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert sorted(set(submitted)) == sorted(ids), (submitted, ids)
    for jobid in ids:
        rec = job_record(jobid, cluster_env)
        assert rec["state"] == "COMPLETED", f"SLURM job {jobid}: {rec}"
        if rec["source"] != "not found":
            assert rec["workdir"] == str(tmp_path), f"SLURM job {jobid} ran elsewhere: {rec}"
    gathered = tmp_path / SHARDED_CACHE
    for name, spec in cfg["experts"].items():
        register_preset(name, spec)
    plain = tmp_path / "unsharded.parquet"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", cluster_env["SOURCE_DATE_EPOCH"])  # as the jobs
    extract(root / "manifest.parquet", "report",
            create_expert("tfidf-svd"), plain, progress=False,
            shard_size=cfg["extraction"]["shard_size"])  # fmt: skip
    assert gathered.read_bytes() == plain.read_bytes(), "gathered cache != unsharded cache"


RETRY_RULE = "demo_cohort"  # a rule of the workflow, so the profile's own set-resources apply
RETRY_TIMEOUT = 150
# Fails on its first attempt (no marker yet), succeeds on the second; each attempt appends
# what it was given to attempts.log.
RETRY_SNAKEFILE = f"""
rule {RETRY_RULE}:
    output: "done.txt"
    shell:
        '''
        echo "job=${{{{SLURM_JOB_ID:-none}}}} mem_mb={{resources.mem_mb}} slurm_mem=${{{{SLURM_MEM_PER_NODE:-unset}}}}" >> attempts.log
        if [ ! -e failed_once ]; then touch failed_once; echo "failing on purpose" >&2; exit 1; fi
        echo ok > {{output}}
        '''
"""


def _mb(mem: str) -> int | None:
    """'4000M' / '4000Mn' / '4G' -> MB."""
    m = re.match(r"(\d+)([MG]?)", mem)
    if not m:
        return None
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


@pytest.mark.skipif(
    not REQUIRED,
    reason="submits jobs to the local SLURM: set MEDMIX_SLURM=1 (after bash .ci/slurm/start.sh)",
)
def test_failed_job_is_resubmitted_with_more_memory(
    cluster_env: dict[str, str], tmp_path: Path
) -> None:
    """The profile's retry path: `retries` plus `mem_mb: N * attempt` under set-resources. A
    job that fails on attempt 1 is resubmitted by snakemake, and SLURM allocates the second
    submission the attempt-2 memory (scontrol/jobcomp/sacct), which the job also saw."""
    prof = load_profile("slurm")
    expr = str(prof["set-resources"][RETRY_RULE]["mem_mb"])
    want = [eval(expr, {"attempt": attempt}) for attempt in (1, 2)]  # noqa: S307 - our profile
    assert prof["retries"] >= 1 and want[1] > want[0], (prof["retries"], expr)
    (tmp_path / "Snakefile").write_text(RETRY_SNAKEFILE)
    cmd = [
        "timeout", "-s", "KILL", str(RETRY_TIMEOUT),
        sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"),
        "--directory", str(tmp_path), "--workflow-profile", str(REPO / "profiles" / "slurm"),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=cluster_env, capture_output=True, text=True,
        timeout=RETRY_TIMEOUT + 30,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        cancel_leftovers(tmp_path, cluster_env, tmp_path / "Snakefile", CONFIG)
        pytest.fail("retry run: " + failure_report(tmp_path, out, proc.returncode))
    assert (tmp_path / "done.txt").read_text().strip() == "ok"
    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(ids) == 2, f"expected two submissions (attempt 1 fails), got {ids}:\n{out[-3000:]}"
    assert "Trying to restart job" in out, out[-3000:]
    seen = [
        dict(kv.split("=", 1) for kv in line.split())
        for line in (tmp_path / "attempts.log").read_text().splitlines()
    ]
    assert [a["job"] for a in seen] == ids, (seen, ids)
    assert [int(a["mem_mb"]) for a in seen] == want, seen
    for attempt, (jobid, mb, state) in enumerate(
        zip(ids, want, ("FAILED", "COMPLETED"), strict=True), 1
    ):
        rec = job_record(jobid, cluster_env)
        assert rec["state"] == state, f"attempt {attempt}, SLURM job {jobid}: {rec}"
        assert _mb(rec["mem"]) == mb, f"attempt {attempt}: SLURM allocated {rec}, want {mb} MB"
        if seen[attempt - 1]["slurm_mem"] != "unset":
            assert int(seen[attempt - 1]["slurm_mem"]) == mb, seen


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


def gpu_rules() -> set[str]:
    """Rules whose resources include a ``gpu`` request (workflow/rules/*.smk)."""
    names = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), re.M | re.S):
            resources = re.search(r"^    resources:\n((?:        .*\n)+)", m.group(2), re.M)
            if resources and re.search(r"^\s+gpu\s*=", resources.group(1), re.M):
                names.add(m.group(1))
    return names


GPU_KEYS = {"gpu", "gpu_model", "slurm_partition", "cpus_per_gpu"}


def test_gpu_rules_share_one_gpu_setting_in_both_profiles() -> None:
    """Every rule that can request a GPU gets the same GPU partition and cpus_per_gpu (one
    YAML anchor per profile, the partition from MEDMIX_SLURM_GPU_PARTITION); profiles/slurm
    leaves the gpu request to the rule (the config's device), profiles/slurm-gpu forces gpu=1
    (+ gpu_model) on all of them; nothing else differs between the two profiles except
    extract's memory and time."""
    rules = gpu_rules()
    assert {
        "extract",
        "extract_shard",
        "extract_teacher",
        "rag",
        "bridge",
        "knowledge_index",
    } <= rules, rules
    assert "extract_gather" not in rules, rules
    cpu, gpu = load_profile("slurm"), load_profile("slurm-gpu")
    assert {k: v for k, v in gpu.items() if k != "set-resources"} == {
        k: v for k, v in cpu.items() if k != "set-resources"
    }
    assert set(gpu["set-resources"]) == set(cpu["set-resources"])
    for name, prof in (("slurm", cpu), ("slurm-gpu", gpu)):
        with_gpu_keys = {r for r, res in prof["set-resources"].items() if GPU_KEYS & set(res)}
        assert with_gpu_keys == rules, (
            f"profiles/{name}: GPU settings on {sorted(with_gpu_keys)}, GPU-capable rules are {sorted(rules)}"
        )
        shared = {
            (r, k, str(v))
            for r in rules
            for k, v in prof["set-resources"][r].items()
            if k in GPU_KEYS
        }
        per_key = {k: {v for _, kk, v in shared if kk == k} for k in GPU_KEYS}
        assert all(len(v) <= 1 for v in per_key.values()), f"profiles/{name}: {per_key}"
        for r in rules:
            res = prof["set-resources"][r]
            assert "MEDMIX_SLURM_GPU_PARTITION" in str(res.get("slurm_partition")), (name, r, res)
            assert isinstance(res.get("cpus_per_gpu"), int) and res["cpus_per_gpu"] >= 1
    for r in rules:
        c, g = cpu["set-resources"][r], gpu["set-resources"][r]
        assert "gpu" not in c and "gpu_model" not in c, f"profiles/slurm forces a GPU on {r}"
        assert g["gpu"] == 1 and "MEDMIX_SLURM_GPU_MODEL" in str(g["gpu_model"]), (r, g)
        big = {"extract", "extract_shard"}  # slurm-gpu: 16 GB, 240 min (model on a GPU node)
        drop = {"gpu", "gpu_model"} | ({"mem_mb", "runtime"} if r in big else set())
        assert {k: v for k, v in g.items() if k not in drop} == {
            k: v for k, v in c.items() if k not in drop
        }, r
        assert "attempt" in str(g["mem_mb"])
    for r in set(cpu["set-resources"]) - rules:
        assert gpu["set-resources"][r] == cpu["set-resources"][r], r


# --- dry runs: what each job would ask SLURM for ----------------------------------------------


def _kv(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split(", ") if "=" in kv)


def dry_run_jobs(args: list[str], env_extra: dict[str, str]) -> list[tuple[str, dict, dict]]:
    """(rule, wildcards, resources) of every job of ``snakemake -n <args>``."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    env = {**slurm_env(), **env_extra}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        rule = re.match(r"(?:local)?rule (\w+):\n", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        if rule and res:
            jobs.append((rule.group(1), _kv(wc.group(1)) if wc else {}, _kv(res.group(1))))
    assert jobs, f"no jobs parsed from the dry run:\n{out[-3000:]}"
    return jobs


PARTITIONS = {"MEDMIX_SLURM_PARTITION": "cpuq", "MEDMIX_SLURM_GPU_PARTITION": "gpuq"}


def two_expert_dry_run(tmp_path: Path, config: Path) -> list:
    """``config`` with report/tfidf-svd plus a ``device: cuda`` MiniLM, dry-run through
    profiles/slurm: the jobs' (rule, wildcards, resources)."""
    cfg = yaml.safe_load(config.read_text())
    cfg["results"] = str(tmp_path / "results")
    cfg["datasets"][DATASET]["modalities"]["report"] = ["tfidf-svd", "minilm-cuda"]
    cfg["experts"]["minilm-cuda"] = {"type": "minilm", "device": "cuda"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    emb = tmp_path / "results" / DATASET / "embeddings" / "report"
    return dry_run_jobs(
        [
            str(emb / "tfidf-svd.parquet"), str(emb / "minilm-cuda.parquet"),
            "--directory", str(tmp_path), "--workflow-profile", str(REPO / "profiles" / "slurm"),
            "--configfile", str(tmp_path / "config.yaml"),
        ],
        PARTITIONS,
    )  # fmt: skip


def test_dry_run_gpu_follows_the_expert_device(tmp_path: Path) -> None:
    """profiles/slurm with one `device: cuda` expert and one offline expert: only the first
    extraction asks for a GPU (gpu=1 from the rule); both extractions go to the GPU-capable
    rules' partition with cpus_per_gpu; the cohort job stays on the CPU partition."""
    jobs = two_expert_dry_run(tmp_path, CONFIG)
    extract = {wc["expert"]: res for rule, wc, res in jobs if rule == "extract"}
    assert set(extract) == {"tfidf-svd", "minilm-cuda"}, jobs
    assert extract["minilm-cuda"]["gpu"] == "1", extract["minilm-cuda"]
    assert extract["tfidf-svd"]["gpu"] == "0", extract["tfidf-svd"]
    for res in extract.values():
        assert res["slurm_partition"] == "gpuq" and res["cpus_per_gpu"] == "4", res
        assert "gpu_model" not in res, res
    cohort = [res for rule, _, res in jobs if rule == "demo_cohort"]
    assert len(cohort) == 1 and cohort[0]["slurm_partition"] == "cpuq", cohort
    assert "gpu" not in cohort[0] and "cpus_per_gpu" not in cohort[0], cohort


def test_dry_run_shard_jobs_ask_what_extract_asks(tmp_path: Path) -> None:
    """config/slurm-shards.yaml (4 shards) with a second, `device: cuda` expert, through
    profiles/slurm: one extract_shard job per part and expert, each asking for a GPU exactly
    when its expert is on cuda (as rule extract would), with extract's memory and time; one
    extract_gather per cache, without a GPU, on the CPU partition; no extract job."""
    jobs = two_expert_dry_run(tmp_path, SHARDS_CONFIG)
    shards = {(wc["expert"], wc["part"]): res for rule, wc, res in jobs if rule == "extract_shard"}
    assert set(shards) == {(e, str(i)) for e in ("tfidf-svd", "minilm-cuda") for i in range(1, 5)}
    for (expert, _), res in shards.items():
        assert res["gpu"] == ("1" if expert == "minilm-cuda" else "0"), (expert, res)
        assert res["slurm_partition"] == "gpuq" and res["cpus_per_gpu"] == "4", res
        assert (res["mem_mb"], res["runtime"]) == ("4000", "120"), res
    gathers = {wc["expert"]: res for rule, wc, res in jobs if rule == "extract_gather"}
    assert set(gathers) == {"tfidf-svd", "minilm-cuda"}, jobs
    for res in gathers.values():
        assert res.get("gpu", "0") == "0" and res["slurm_partition"] == "cpuq", res
    assert "extract" not in {rule for rule, _, _ in jobs}, jobs


@pytest.mark.parametrize("profile", ["slurm", "slurm-gpu"])
def test_paper_dry_run_puts_every_gpu_job_on_the_gpu_partition(
    profile: str, tmp_path: Path
) -> None:
    """config/paper.yaml (`device: auto`/`cuda`): every job that asks for a GPU gets the GPU
    partition and cpus_per_gpu, and the jobs that do are exactly those of the GPU-capable
    rules; with profiles/slurm-gpu each of them also names the GPU model."""
    jobs = dry_run_jobs(
        ["--forceall", "--directory", str(tmp_path),
         "--workflow-profile", str(REPO / "profiles" / profile),
         "--configfile", str(REPO / "config" / "paper.yaml")],
        {**PARTITIONS, "MEDMIX_SLURM_GPU_MODEL": "a100"},
    )  # fmt: skip
    # config/paper.yaml does not shard (test_dry_run_shard_jobs_ask_what_extract_asks does)
    rules = gpu_rules() - {"extract_shard"}
    asking = {rule for rule, _, res in jobs if res.get("gpu") == "1"}
    assert asking == rules, f"rules with gpu=1 jobs: {sorted(asking)}; GPU-capable: {sorted(rules)}"
    for rule, wc, res in jobs:
        where = f"{rule} {wc}: {res}"
        if rule in rules:
            assert res["slurm_partition"] == "gpuq" and res["cpus_per_gpu"] == "4", where
            if profile == "slurm-gpu":
                assert res["gpu"] == "1" and res["gpu_model"] == "a100", where
        else:
            assert res["slurm_partition"] == "cpuq", where
            assert res.get("gpu", "0") == "0" and "cpus_per_gpu" not in res, where


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


# --- .ci/run's SLURM policy (no SLURM needed: start.sh/stop.sh, id and uname are stubbed) ------


def ci_slurm_block() -> str:
    text = (REPO / ".ci" / "run").read_text()
    start = text.index("# A real SLURM")
    end = text.index("# --- the README's test command")
    return text[start:end]


@pytest.mark.parametrize(
    ("uid", "system", "start_rc", "want_rc", "want_slurm"),
    [
        ("0", "Linux", 1, 1, None),  # CI: SLURM must come up, a failed start fails the run
        ("0", "Linux", 0, 0, "1"),  # CI: up, the cluster test is required (MEDMIX_SLURM=1)
        ("1000", "Linux", 0, 0, None),  # developer without root: not started, test skips
        ("0", "Darwin", 0, 0, None),  # not Linux: not started
    ],
)
def test_ci_run_fails_when_slurm_cannot_start_as_root_on_linux(
    tmp_path: Path, uid: str, system: str, start_rc: int, want_rc: int, want_slurm: str | None
) -> None:
    if shutil.which("timeout") is None:
        pytest.skip("no coreutils timeout")
    slurm = tmp_path / ".ci" / "slurm"
    slurm.mkdir(parents=True)
    (slurm / "start.sh").write_text(f"echo started >> {tmp_path}/calls\nexit {start_rc}\n")
    (slurm / "stop.sh").write_text(f"echo stopped >> {tmp_path}/calls\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("id", f'[ "$1" = -u ] && echo {uid}'), ("uname", f"echo {system}")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = (
        "set -euo pipefail\n" + ci_slurm_block()
        + 'echo "MEDMIX_SLURM=${MEDMIX_SLURM:-unset}"\n'
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MEDMIX_SLURM"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    calls = (tmp_path / "calls").read_text().split() if (tmp_path / "calls").exists() else []
    assert proc.returncode == want_rc, (proc.stdout, proc.stderr)
    if want_rc == 0:
        assert f"MEDMIX_SLURM={want_slurm or 'unset'}" in proc.stdout, proc.stdout
    else:
        assert "did not start" in proc.stderr, proc.stderr
    if uid == "0" and system == "Linux":
        assert calls == ["started", "stopped"], calls  # stopped by the EXIT trap either way
    else:
        assert calls == [], calls
        assert "tests/workflow/test_slurm.py will skip" in proc.stderr, proc.stderr
