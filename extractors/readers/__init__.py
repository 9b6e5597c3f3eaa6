"""File readers shared by the experts: images, volumes, slides and time series.

Readers turn a file into a plain array (or a small record) and raise
:class:`extractors.base.SampleError` with a short, specific reason for a bad file. Reasons name
the problem, never the file's content (they are stored in the cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from extractors.base import SampleError


def resolve_path(root: str | Path, value: str, allow_dir: bool = False) -> Path:
    """``root / value`` after checking it stays inside ``root``, exists and is a non-empty file
    (or a folder). Inside means both lexically (relative, no ``..`` escape) and after
    resolving symlinks: a link inside the dataset root that points outside it is refused."""
    if not isinstance(value, str | Path) or not str(value).strip():
        raise SampleError("empty path")
    rel = os.path.normpath(str(value))
    if os.path.isabs(str(value)) or rel == ".." or rel.startswith(".." + os.sep):
        raise SampleError("path outside the dataset root")
    path = Path(root) / str(value)
    if not is_inside(Path(root), path):
        raise SampleError("path outside the dataset root (through a symbolic link)")
    if not path.exists():
        raise SampleError("file not found")
    if path.is_dir():
        if not allow_dir:
            raise SampleError("expected a file, found a folder")
        return path
    if path.stat().st_size == 0:
        raise SampleError("empty file (0 bytes)")
    return path


def is_inside(root: Path, path: Path) -> bool:
    """``path`` (symlinks resolved, as far as it exists) is ``root`` or below it. A symlink loop
    is not an error here (``os.path.realpath`` stops at it); the read fails with its reason."""
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(path))
    return target == base or base in target.parents


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with ``.gz`` kept together with the one before (``.nii.gz``)."""
    name = path.name.lower()
    for double in (".nii.gz", ".csv.gz", ".tsv.gz"):
        if name.endswith(double):
            return double
    return path.suffix.lower()
