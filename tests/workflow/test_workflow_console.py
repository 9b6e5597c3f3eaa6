"""The console shows short commands, and a changed config slice still reruns its jobs.

A rule's config slice reaches its command as a file, ``--config results/.medmix/config/<hash>
.yaml`` (workflow/rules/common.smk: ``slice_file``), no longer as inline JSON: the demo's
printed commands were up to 5,223 characters. Snakemake still reruns a job when its slice
changes, because the slice itself stays a recorded param (``config_slice``). The runs here are
real local runs of the demo DAG with a stand-in ``python`` (tests/workflow_stub.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from medmix.config import load_config_arg
from tests.workflow_stub import REPO, snakemake, stub_calls, stub_env

# No console line is longer (the workflow's console formatter, medmix.console): long file
# listings are cut on screen, long commands continued on the next line with " \\".
MAX_LINE = 300
SLICE = re.compile(r"--config (\S+)")
SLICE_FILE = re.compile(r"results/\.medmix/config/[0-9a-f]{16}\.yaml")


def shell_commands(log: str) -> list[str]:
    """The dry run's commands, their continuation lines joined back."""
    joined = log.replace(" \\\n    ", " ")
    return re.findall(r"^Shell command: (.*)$", joined, re.M)


def long_lines(log: str) -> list[tuple[int, str]]:
    return sorted((len(x), x[:200]) for x in log.splitlines() if len(x) > MAX_LINE)


def test_dry_run_prints_short_commands(tmp_path: Path) -> None:
    """The whole demo DAG (`snakemake -n -p`): no console line over 300 characters; every
    command passes its config as a slice file and holds no JSON; a dry run writes no slice
    file."""
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config.yaml"))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    commands = shell_commands(log)
    assert len(commands) > 100, log[-3000:]
    assert not long_lines(log), long_lines(log)
    assert max(map(len, commands)) > MAX_LINE  # so the wrapping was exercised
    for command in commands:
        assert '{"' not in command and "'{" not in command, command  # no inline JSON
        for arg in SLICE.findall(command):
            assert SLICE_FILE.fullmatch(arg), command
    assert sum("--config " in c for c in commands) > 100
    assert not (tmp_path / "results" / ".medmix").exists()


TARGETS = [
    "results/demo-openi/runs/full/medmix/summary.json",
    "results/demo-openi/runs/full/meanavg/summary.json",
    "results/demo-openi/test_time/medmix.json",  # test-time protocols: --settings from a file
    "results/tables/sample_status.md",  # every cache of the demo: --caches from a file
]


@pytest.fixture
def demo_run(tmp_path: Path) -> dict:
    """Two Table 1 runs of demo-openi, their test-time protocols and the sample status table
    of the demo config, run with the stand-in (with all they need: cohorts, caches, teachers,
    the RAG chain)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = workdir / "config.yaml"
    shutil.copy(REPO / "config.yaml", config)
    bin_dir = tmp_path / "bin"
    env = stub_env(bin_dir)
    proc = snakemake(workdir, *TARGETS, "--cores", "2", "--configfile", str(config), env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # a real (stand-in) run prints its commands too: still no line over the limit
    assert not long_lines(proc.stdout + proc.stderr), long_lines(proc.stdout + proc.stderr)
    return {"workdir": workdir, "config": config, "env": env, "calls": stub_calls(bin_dir)}


def dry_run(run: dict) -> str:
    proc = snakemake(
        run["workdir"], *TARGETS, "-n", "-p", "--configfile", str(run["config"]), env=run["env"]
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def jobs_and_reasons(log: str) -> dict[str, list[str]]:
    """rule -> the reasons of its jobs in a dry-run log."""
    out: dict[str, list[str]] = {}
    for rule, reason in re.findall(
        r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    reason: (.*)$", log, re.M
    ):
        out.setdefault(rule, []).append(reason)
    return out


def test_commands_read_their_slice_from_a_file(demo_run: dict) -> None:
    """Each command got a slice file that exists and loads as the config the entry points
    validate (floats stay floats through YAML), with the job's dataset only."""
    workdir = demo_run["workdir"]
    cfg = yaml.safe_load(demo_run["config"].read_text())
    train = [c["argv"] for c in demo_run["calls"] if c["argv"][1:3] == ["fusion", "train"]]
    assert len(train) == 2, demo_run["calls"]
    slices = {SLICE.search(" ".join(argv)).group(1) for argv in train}
    assert len(slices) == 1, slices  # one dataset, one slice, one file
    got = load_config_arg(str(workdir / slices.pop()))
    assert list(got["datasets"]) == ["demo-openi"]
    assert got["fusion"]["lr"] == cfg["fusion"]["lr"] and isinstance(got["fusion"]["lr"], float)
    assert got["fusion"]["weight_decay"] == cfg["fusion"]["weight_decay"]
    for call in demo_run["calls"]:
        for arg in SLICE.findall(" ".join(call["argv"])):
            assert SLICE_FILE.fullmatch(arg) and (workdir / arg).is_file(), call


def test_argument_files_reach_the_commands(demo_run: dict) -> None:
    """The lists the commands read with `$(cat FILE)` arrive whole: every cache of the sample
    status table, every test-time setting."""
    from medmix.config import validate_config
    from medmix.plan import run_caches
    from medmix.protocol_names import expand_settings, is_test_only

    cfg = validate_config(yaml.safe_load(demo_run["config"].read_text()))
    argv = {c["argv"][1]: c["argv"] for c in demo_run["calls"]}

    def values(args: list[str], flag: str) -> list[str]:
        rest = args[args.index(flag) + 1 :]
        return rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]

    status = argv["extractors.status"]
    assert values(status, "--caches") == run_caches(cfg, "expert")
    assert values(status, "--teachers") == run_caches(cfg, "teacher")
    modalities = list(cfg["datasets"]["demo-openi"]["modalities"])
    settings = expand_settings(cfg["protocols"], modalities)
    assert values(argv["fusion.protocols"], "--settings") == [
        s for s in settings if is_test_only(s)
    ]


def test_changed_fusion_setting_reruns_the_train_jobs(demo_run: dict) -> None:
    """Nothing to do after the run; then a changed fusion hyper-parameter reruns the two train
    jobs (params changed, a new slice file), the test-time protocols after them and nothing
    else."""
    assert "Nothing to be done" in dry_run(demo_run)
    cfg = yaml.safe_load(demo_run["config"].read_text())
    cfg["fusion"]["lr"] = 2 * cfg["fusion"]["lr"]
    demo_run["config"].write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = dry_run(demo_run)
    jobs = jobs_and_reasons(log)
    # the val-split model selection (fusion.select) reads the same settings: it reruns too
    assert set(jobs) == {"select_fusion", "train", "test_protocols"}, jobs
    assert len(jobs["train"]) == 2 and len(jobs["test_protocols"]) == 1
    assert len(jobs["select_fusion"]) == 2
    for reason in jobs["train"]:
        assert "Params have changed since last execution" in reason or "/selection/" in reason
    for reason in jobs["select_fusion"]:
        assert "Params have changed since last execution" in reason, reason
    before = {SLICE.search(" ".join(c["argv"])).group(1) for c in demo_run["calls"]
              if c["argv"][1:3] == ["fusion", "train"]}  # fmt: skip
    after = {SLICE.search(c).group(1) for c in shell_commands(log) if "fusion train" in c}
    assert len(after) == 1 and after != before, (before, after)
