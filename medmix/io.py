"""Atomic file writes: write to a temp file in the same folder, then rename over the target."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux:
    ``/proc/self/status``); elsewhere set and restored at once."""
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii") as fh,
    ):
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def creation_mode(directory: bool = False) -> int:
    """The mode a plain ``open()`` (or ``mkdir``) gives a new file (folder): 0o666 (0o777) less
    the umask. ``tempfile.mkstemp`` / ``mkdtemp`` create 0o600 / 0o700 instead, which other
    users of a shared results folder cannot read; writers that use them chmod to this."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it onto ``path``.

    On any exception the temp file is removed and ``path`` is left untouched, so a reader
    never sees a half-written file and a killed writer leaves no file that looks finished.
    The file gets the mode a plain ``open()`` would give it (:func:`creation_mode`), not
    ``mkstemp``'s owner-only 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, creation_mode())
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def fresh_tmp_dir(out: str | os.PathLike) -> Path:
    """An empty hidden temp folder beside the folder ``out``, to be moved onto it with
    :func:`replace_dir` when complete. Leftovers of an earlier writer of ``out`` that was killed
    (SIGKILL runs no cleanup) are removed first; being hidden, they are never read as results."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = glob.escape(out.name)
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for stale in out.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    return tmp


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` onto ``out`` (an older ``out`` is moved aside, then
    removed), so ``out`` is always either the old complete folder or the new one."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
