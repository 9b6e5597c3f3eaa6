"""One writer per cache: an exclusive lock on ``.{name}.lock`` beside the cache.

A second extraction into the same cache (two shells, a rerun while a cluster job still runs)
would otherwise interleave shards, delete the other's temp files and die with a misleading
error. The second writer does not wait: it stops at once with :class:`CacheLockedError`, a
one-line message naming the cache, the lock file and the holder (pid and host). Waiting
would hide the mistake and could block a scheduler's slot for hours.

The lock is a POSIX record lock (``fcntl.lockf``), not ``flock``: a record lock belongs to
the process, so DataLoader workers forked during extraction do not share it, and the kernel
drops it the moment the holder dies. A lock file left behind by a killed run therefore never
blocks a rerun; the next holder takes it over and removes it when done. Because a process
owns its record locks, a second acquisition inside the same process is refused explicitly
(``_HELD``) rather than silently succeeding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from extractors.cache_checks import CacheError

_HELD: dict[str, int] = {}  # lock path -> pid of the holder in this process


class CacheLockedError(CacheError):
    """Another writer holds the cache's lock."""


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


class CacheLock:
    """Exclusive, non-blocking writer lock of one cache (see the module docstring)."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self._fd: int | None = None
        self._pid = 0  # the process that holds it (a forked child never releases it)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, holder: str) -> CacheLockedError:
        return CacheLockedError(
            f"{self.target}: another extraction is writing this cache (lock {self.path} held"
            f"{' by ' + holder if holder else ''}); wait for it to finish or stop it, then rerun"
        )

    def acquire(self) -> CacheLock:
        if self._fd is not None:
            return self
        key = str(self.path.resolve())
        if _HELD.get(key) == os.getpid():
            raise self._refuse(f"this process (pid {os.getpid()})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._refuse(holder) from None
            # The holder we waited on may have removed the file between our open and lock:
            # then we hold a lock on a file nobody else will see; start again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd, self._pid = fd, os.getpid()
        _HELD[key] = self._pid
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it) and drop the lock."""
        fd, self._fd = self._fd, None
        if fd is None or self._pid != os.getpid():
            return
        _HELD.pop(str(self.path.resolve()), None)
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self.path.unlink()
        finally:
            os.close(fd)

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a writer dropped after an error must not keep the lock
        with contextlib.suppress(Exception):
            self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
