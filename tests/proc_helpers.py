"""Run a CLI entry point in a child process and SIGKILL it at a chosen moment.

``fork_main`` forks the test process (everything is already imported, so a child starts in
milliseconds where ``python -m ...`` pays seconds of imports) and runs ``fn`` there as a fresh
command-line process would: stdout and stderr go to ``log`` at the fd level, the root logger
has no handlers (so ``setup_logging`` installs its own, as in a real run), ``env`` is set.
The child never returns into pytest: it leaves through ``os._exit``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path


def fork_main(fn: Callable[[], int | None], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``fn`` in a forked child; returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        os.environ.update(env or {})
        rc = fn()
        code = int(rc or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report and exit non-zero, never return to pytest
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def wait_child(pid: int, timeout: float = 120.0) -> int:
    """Exit status like ``subprocess``: the code, or ``-signal`` when killed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} still running after {timeout}s")
        time.sleep(0.002)


def run_killed(
    fn: Callable[[], int | None], delay: float, log: Path, env: dict[str, str] | None = None
) -> int:
    """Run ``fn`` in a child and SIGKILL it after ``delay`` seconds unless it ended before.

    Returns the exit status (``-9`` when the kill landed)."""
    pid = fork_main(fn, log, env)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    return wait_child(pid)


def timed_run(
    fn: Callable[[], int | None], log: Path, env: dict[str, str] | None = None
) -> tuple[int, float]:
    """Run ``fn`` to the end in a child; (exit status, seconds)."""
    t0 = time.monotonic()
    rc = wait_child(fork_main(fn, log, env))
    return rc, time.monotonic() - t0
