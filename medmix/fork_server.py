"""A fork server for the workflow's local Python jobs: import once, fork per job.

Every Python job of the workflow is a fresh ``python -m ...`` process, and one that trains a
fusion model spends about 3 s of CPU importing torch, pandas and the project before ~5 s of
work; the demo runs ~150 such jobs on two cores. When Snakemake runs the jobs on this machine,
the Snakefile starts one server for the run (``onstart``; :func:`start_for_workflow`) that
imports those modules once and listens on a Unix socket named by ``$MEDMIX_FORK_SERVER``. A
job's :func:`medmix.cli.run_cli` offers its command line to the server (:func:`delegate`); the
server forks a child that runs the same module with the job's arguments, working directory,
environment and stdin/stdout/stderr (the file descriptors themselves are passed), and the job
exits with the child's exit code. The job's process stays alive meanwhile; if it is killed,
the server kills the child.

Nothing else changes: the same code and arguments, one fresh child process per job, the same
log files. A job runs itself, as without a server, whenever the server cannot stand in for a
fresh interpreter exactly: no server (cluster jobs, runs outside Snakemake, the first seconds
of a run while the server is importing), another Python executable or ``sys.path`` (a
``--use-conda`` job), a different environment, an entry module that already imported torch,
or ``MEDMIX_FORK_SERVER=off``.

One difference is visible: Snakemake's ``benchmark:`` files measure the job's process tree,
which no longer contains the child, so for jobs run by the server their wall time is right but
their memory and CPU columns describe the waiting launcher. The child's own CPU time and peak
memory are appended to the job's log (``fork server: ...`` line). Set
``MEDMIX_FORK_SERVER=off`` for per-job memory figures in the benchmark files.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import logging
import os
import resource
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_VAR = "MEDMIX_FORK_SERVER"
OFF = "off"
# What the server imports before it serves (missing optional ones are skipped).
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "torch",
    "sklearn.linear_model",
    "fusion.train",
    "fusion.select",
    "fusion.evaluate",
    "fusion.ablations",
    "fusion.external.cli",
    "extractors.extract",
    "sentence_transformers",
)
# Variables a shell or Snakemake sets per process; they do not change what a job computes.
VOLATILE_ENV = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
_CHILD = False  # set in a forked child: it never delegates again

log = logging.getLogger("medmix.fork_server")


@dataclass(frozen=True)
class Request:
    """One job's command line and the process state a fresh interpreter would have."""

    module: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    executable: str
    path: list[str]

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Request:
        return cls(**json.loads(data))


def _stable_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in VOLATILE_ENV}


def socket_path() -> str:
    """This run's socket (one Snakemake process, one server): short, as Unix socket paths are
    limited to ~100 bytes."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"medmix-fs-{os.getpid()}.sock")


# -- the client side: a job offering its command line ---------------------------------------


def delegate() -> int | None:
    """Run this process's command line in the fork server; its exit code, or None when the
    job should run itself (no usable server, see the module docstring)."""
    path = os.environ.get(ENV_VAR, "")
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if _CHILD or not path or path == OFF or spec is None or "torch" in sys.modules:
        return None
    request = Request(
        module=spec.name,
        argv=list(sys.argv[1:]),
        cwd=os.getcwd(),
        env=dict(os.environ),
        executable=_interpreter(),
        path=list(sys.path),
    )
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(2.0)
        conn.connect(path)
    except OSError:
        return None
    with conn:
        try:
            conn.settimeout(None)
            body = request.to_bytes()
            socket.send_fds(conn, [_HEADER.pack(len(body))], [0, 1, 2])
            conn.sendall(body)
            answer = _recv_exact(conn, 1)
            if answer != b"A":  # refused: the server says why in its own log
                return None
            return _STATUS.unpack(_recv_exact(conn, _STATUS.size))[0]
        except (OSError, ConnectionError, struct.error):
            return None


def _interpreter() -> str:
    """The interpreter and its environment (``python`` and ``python3`` of one venv agree)."""
    return f"{os.path.realpath(sys.executable)} in {sys.prefix}"


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("fork server closed the connection")
        data += chunk
    return data


# -- the server side ------------------------------------------------------------------------


# Native threads that survive a fork safely: jemalloc (pyarrow's allocator) takes its locks
# around fork() and restarts its background thread in the child.
FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})


def unsafe_threads() -> list[str]:
    """Names of this process's threads other than the main one and :data:`FORK_SAFE_THREADS`."""
    try:
        tasks = sorted(os.listdir("/proc/self/task"), key=int)
    except OSError:  # no /proc (macOS): Python's own threads only
        return [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    names = []
    for tid in tasks:
        if int(tid) == os.getpid():  # the main thread
            continue
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        if name not in FORK_SAFE_THREADS:
            names.append(name)
    return names


class Server:
    """Accepts jobs on ``path``, forks one child per job, reports its exit status."""

    def __init__(self, path: str, parent: int | None, env: dict[str, str]) -> None:
        self.path = path
        self.parent = parent
        self.env = _stable_env(env)  # as started, before the imports
        # what the imports added (torch sets a few variables): a fresh job would have them too
        self.import_env = {k: v for k, v in os.environ.items() if k not in env}
        self.children: dict[int, tuple[socket.socket, float, Request]] = {}
        self.kill_at: dict[int, float] = {}
        self.stop = False

    def compatible(self, req: Request) -> str | None:
        """Why ``req`` cannot run here exactly as a fresh interpreter would, or None."""
        if req.executable != _interpreter():
            return f"another Python ({req.executable})"
        if req.path != sys.path:
            return "another sys.path"
        if _stable_env(req.env) != self.env:
            diff = sorted(set(_stable_env(req.env).items()) ^ set(self.env.items()))
            return f"another environment ({', '.join(sorted({k for k, _ in diff}))[:200]})"
        return None

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        listener.bind(tmp)
        os.replace(tmp, self.path)  # clients see the socket only once it listens
        listener.listen(64)
        log.info("serving on %s", self.path)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            while not self.stop and self._parent_alive():
                conns = [c for c, _, _ in self.children.values()]
                ready, _, _ = select.select([listener, *conns], [], [], 0.2)
                for r in ready:
                    if r is listener:
                        self._accept(listener)
                    else:  # a waiting job's connection closed: its job was killed
                        self._kill_child_of(r)
                self._reap()
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            for pid in list(self.children):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            self._reap(block=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop = True

    def _parent_alive(self) -> bool:
        if self.parent is None:
            return True
        try:
            os.kill(self.parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        try:
            conn.settimeout(5.0)
            head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
            if len(head) != _HEADER.size or len(fds) != 3:
                raise ConnectionError("malformed request")
            req = Request.from_bytes(_recv_exact(conn, _HEADER.unpack(head)[0]))
        except (OSError, ValueError, ConnectionError) as exc:
            log.warning("dropped a request: %s", exc)
            conn.close()
            return
        why = self.compatible(req)
        if why is not None:
            log.info("refused %s %s: %s", req.module, " ".join(req.argv)[:200], why)
            _close_all(fds)
            with contextlib.suppress(OSError):
                conn.sendall(b"R")
            conn.close()
            return
        conn.settimeout(None)
        conn.sendall(b"A")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns; it keeps no socket of the server's
            for sock in (conn, listener, *(c for c, _, _ in self.children.values())):
                sock.close()
            _run_child(req, fds, self.import_env)
        _close_all(fds)
        self.children[pid] = (conn, time.monotonic(), req)
        log.info("job %d: %s %s", pid, req.module, " ".join(req.argv)[:300])

    def _kill_child_of(self, conn: socket.socket) -> None:
        for pid, (c, _, _) in self.children.items():
            if c is conn and pid not in self.kill_at:
                log.info("job %d: its launcher went away; stopping it", pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                self.kill_at[pid] = time.monotonic() + 5.0
        for pid, deadline in self.kill_at.items():
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            self.kill_at.pop(pid, None)
            if entry is None:
                continue
            conn, started, req = entry
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code  # killed by signal n: 128 + n, as a shell
            log.info(
                "job %d: exit %d after %.1f s (cpu %.1f s, peak RSS %.0f MB)",
                pid,
                code,
                time.monotonic() - started,
                usage.ru_utime + usage.ru_stime,
                usage.ru_maxrss / 1024,
            )
            with contextlib.suppress(OSError):
                conn.sendall(_STATUS.pack(code))
            conn.close()


def _run_child(req: Request, fds: list[int], import_env: dict[str, str]) -> None:
    """In the forked child: become the job (fds, cwd, env, argv), run its module, exit."""
    global _CHILD
    _CHILD = True
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        _close_all(fds)
        os.chdir(req.cwd)
        os.environ.clear()
        os.environ.update({**import_env, **req.env})
        logging.getLogger().handlers.clear()
        atexit._clear()
        sys.argv = [req.module, *req.argv]
        try:
            runpy.run_module(req.module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
        finally:
            atexit._run_exitfuncs()
            logging.shutdown()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(
                f"fork server: ran in a child of the workflow's fork server (cpu "
                f"{usage.ru_utime + usage.ru_stime:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB)",
                file=sys.stderr,
            )
    except BaseException:  # noqa: BLE001 - a child must always exit, never return to the loop
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):
                stream.flush()
        os._exit(code)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules`` (those that are not installed are skipped); the ones imported."""
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.info("not preloaded: %s (%s)", name, exc)
            continue
        done.append(name)
    return done


# -- started and stopped by the Snakefile ---------------------------------------------------

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
TMP_VARS = ("TMPDIR", "TMP", "TEMPDIR", "TEMP")


def start_for_workflow(local: bool, log_path: str | os.PathLike) -> subprocess.Popen | None:
    """Start the server for a Snakemake run (``onstart``); None when jobs run elsewhere
    (a cluster executor) or ``MEDMIX_FORK_SERVER=off``.

    The server gets the environment a one-thread local job gets from Snakemake (the thread
    variables at 1, the temporary directory), so those jobs match it; jobs with more threads
    differ and run themselves. ``$MEDMIX_FORK_SERVER`` is set in this process, so every job
    Snakemake starts from now on inherits it.
    """
    if not local or os.environ.get(ENV_VAR) == OFF:
        return None
    path = socket_path()
    os.environ[ENV_VAR] = path
    env = dict(os.environ)
    env.update({k: "1" for k in THREAD_VARS})
    tmp = os.environ.get("TMPDIR") or tempfile.gettempdir()
    env.update({k: tmp for k in TMP_VARS})
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "medmix.fork_server", "--socket", path, "--parent",
             str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


def stop(server: subprocess.Popen | None) -> None:
    """Stop a server :func:`start_for_workflow` started (``onsuccess`` / ``onerror``)."""
    if server is None:
        return
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
    os.environ.pop(ENV_VAR, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    ap.add_argument("--parent", type=int, help="exit when this process is gone")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.monotonic()
    env = dict(os.environ)
    loaded = preload()
    unsafe = unsafe_threads()
    if unsafe:  # forking a process with running threads (e.g. an OpenMP pool) is unsafe
        log.warning("not serving: threads %s run after the imports (forking needs none)", unsafe)
        return 0
    log.info("preloaded %s in %.1f s", ", ".join(loaded), time.monotonic() - t0)
    Server(args.socket, args.parent, env).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
