"""Run the real workflow (Snakefile, workflow profile, local scheduler) with a stand-in ``python``.

Every rule's command is ``python -m <entry point> ... > {log} 2>&1``. ``stub_env`` returns an
environment whose PATH starts with a ``python`` that does no work: it creates the files its
command line names as outputs, sleeps ``sleep`` seconds and appends one JSON line
``{"argv", "start", "end"}`` per call to ``calls.jsonl``. The DAG then runs for real in seconds:
the scheduler and its resources, the params and Snakemake's metadata behave as in a real run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STUB = r"""#!{python}
import json, sys, time
from pathlib import Path

start = time.time()
argv = sys.argv[1:]
module = argv[1] if argv[:1] == ["-m"] else ""


def values(flag):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


for out in values("--out"):
    out = Path(out)
    if out.suffix:  # a file
        touch(out)
    elif module == "cohorts":  # the cohort folder
        for name in ("manifest.parquet", "summary.md", "summary.csv"):
            touch(out / name)
    else:  # a run folder
        touch(out / "summary.json")
for out in values("--out-dir"):
    if module == "extractors.rag":  # the knowledge index
        for name in ("index.faiss", "docs.parquet", "index.json"):
            touch(Path(out) / name)
for flag in ("--provenance", "--done", "--md", "--csv", "--html"):
    for out in values(flag):
        touch(Path(out))
time.sleep({sleep})
line = json.dumps({{"argv": argv, "start": start, "end": time.time()}}) + "\n"
with open({log!r}, "a") as fh:
    fh.write(line)
"""


def stub_env(bin_dir: Path, sleep: float = 0.0, **extra: str) -> dict[str, str]:
    """The environment of a stubbed run: the stand-in ``python`` first on PATH (in ``bin_dir``,
    logging to ``bin_dir/calls.jsonl``), ``extra`` set, MEDMIX_GPU_JOBS (read by the local
    profile) removed unless given."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "python"
    stub.write_text(
        STUB.format(python=sys.executable, sleep=sleep, log=str(bin_dir / "calls.jsonl"))
    )
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MEDMIX_GPU_JOBS"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def stub_calls(bin_dir: Path) -> list[dict]:
    """The stand-in's calls, in the order they ended."""
    log = bin_dir / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``snakemake`` on the repository's Snakefile in ``workdir`` (its own .snakemake/ and
    results); the workflow profile profiles/default applies unless ``args`` name another."""
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
