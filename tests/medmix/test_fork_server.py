"""The workflow's fork server runs a job exactly as a fresh interpreter would, or not at all.

A real server (``python -m medmix.fork_server``) is started on a socket, and a probe command
line (tests/medmix/fork_probe.py, through ``medmix.cli.run_cli``) is run against it: its
output, exit codes and user errors must be those of a plain run; a job whose environment
differs from the server's runs itself; a killed job takes its child with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medmix import fork_server

REPO = Path(__file__).resolve().parents[2]
PROBE = [sys.executable, "-m", "tests.medmix.fork_probe"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets and fork")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("fs")
    sock = str(base / "s.sock")
    env = dict(os.environ)
    env.update({k: "1" for k in fork_server.THREAD_VARS})
    env[fork_server.ENV_VAR] = sock
    log = base / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medmix.fork_server", "--socket", sock,
             "--parent", str(os.getpid())],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while not os.path.exists(sock):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the fork server did not start: " + log.read_text()
        time.sleep(0.2)
    yield {"env": env, "log": log, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)
    assert not os.path.exists(sock), "the server removes its socket when it stops"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        PROBE + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_job_runs_in_a_child_of_the_server_with_its_own_arguments(server) -> None:
    served = run([], server["env"])
    plain = run([], {**server["env"], fork_server.ENV_VAR: fork_server.OFF})
    assert served.returncode == plain.returncode == 0, served.stderr
    a, b = json.loads(served.stdout), json.loads(plain.stdout)
    assert a["argv"] == b["argv"] == [] and a["cwd"] == b["cwd"] == str(REPO)
    # the served job ran in a forked child that had torch imported already
    assert a["torch_loaded"] and not b["torch_loaded"]
    assert "fork server: ran in a child" in served.stderr
    assert f"job {a['pid']}: tests.medmix.fork_probe" in server["log"].read_text()


def test_exit_codes_and_user_errors_are_the_plain_runs(server) -> None:
    for args, code in ((["--code", "3"], 3), (["--user-error"], 2), (["--bogus"], 2)):
        served = run(args, server["env"])
        plain = run(args, {**server["env"], fork_server.ENV_VAR: fork_server.OFF})
        assert served.returncode == plain.returncode == code, (args, served.stderr)
        first = [ln for ln in served.stderr.splitlines() if not ln.startswith("fork server:")]
        assert first == plain.stderr.splitlines(), args
    assert "error: probe: a user error" in run(["--user-error"], server["env"]).stderr


def test_a_job_with_another_environment_runs_itself(server) -> None:
    served = run([], {**server["env"], "PROBE_VAR": "mine"})
    out = json.loads(served.stdout)
    assert served.returncode == 0 and out["probe_var"] == "mine"
    assert not out["torch_loaded"] and "fork server:" not in served.stderr
    assert "another environment (PROBE_VAR)" in server["log"].read_text()


def test_no_server_means_a_plain_run(tmp_path: Path, server) -> None:
    env = {**server["env"], fork_server.ENV_VAR: str(tmp_path / "absent.sock")}
    out = run([], env)
    assert out.returncode == 0 and not json.loads(out.stdout)["torch_loaded"]


def test_a_killed_job_takes_its_child_with_it(tmp_path: Path, server) -> None:
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen(
        PROBE + ["--sleep", "60", "--pid-file", str(pid_file)], cwd=REPO, env=server["env"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert child != proc.pid  # the work runs in the server's child, not in the launcher
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() if Path("/proc").exists() else _alive(child):
        assert time.monotonic() < deadline, "the child outlived its killed launcher"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_for_workflow_is_local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fork_server.ENV_VAR, raising=False)
    assert fork_server.start_for_workflow(False, "unused.log") is None
    monkeypatch.setenv(fork_server.ENV_VAR, fork_server.OFF)
    assert fork_server.start_for_workflow(True, "unused.log") is None
