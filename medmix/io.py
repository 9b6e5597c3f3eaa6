"""Atomic file writes: write to a temp file in the same folder, then rename over the target."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it onto ``path``.

    On any exception the temp file is removed and ``path`` is left untouched, so a reader
    never sees a half-written file and a killed writer leaves no file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
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
