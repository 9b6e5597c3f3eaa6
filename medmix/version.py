"""The pipeline's version and, when run from a git checkout, its commit.

Every CLI's ``--version`` prints :func:`version_string`; the embedding caches record
:func:`medmix_version` and :func:`git_commit` in their metadata.
"""

from __future__ import annotations

import functools
import re
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

DIST = "medmix"
# The folder holding the ``medmix`` package: the repository root in a checkout (editable
# install or PYTHONPATH), ``site-packages`` (or a ``--target`` folder) in a regular install.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _pyproject_version(root: Path = SOURCE_ROOT) -> str | None:
    """``[project] version`` of the source tree's pyproject.toml, if it is MedMIX's."""
    path = root / "pyproject.toml"
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        name = re.search(r'(?m)^name\s*=\s*"([^"]+)"', text)
        ver = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
        if name and ver and name.group(1) == DIST:
            return ver.group(1)
        return None
    try:
        project = tomllib.loads(text).get("project", {})
    except ValueError:
        return None
    if project.get("name") != DIST or not project.get("version"):
        return None
    return str(project["version"])


@functools.lru_cache(maxsize=1)
def medmix_version() -> str:
    """The installed distribution's version, else the source tree's pyproject version."""
    try:
        return importlib_metadata.version(DIST)
    except importlib_metadata.PackageNotFoundError:
        return _pyproject_version() or "unknown"


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit (40 hex digits, ``-dirty`` appended when tracked files are
    modified), or None when the code does not run from a git checkout of MedMIX (a regular
    install lives in site-packages: an enclosing repository there is not ours)."""
    root = SOURCE_ROOT if root is None else Path(root)
    if not (root / ".git").exists() or _pyproject_version(root) is None:
        return None
    sha = _git(root, "rev-parse", "--verify", "HEAD")
    if not sha or not re.fullmatch(r"[0-9a-f]{40,64}", sha):
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"{sha}-dirty" if status else sha


def version_string() -> str:
    """``medmix <version>``, plus ``(git <commit>)`` in a git checkout."""
    commit = git_commit()
    return f"{DIST} {medmix_version()}" + (f" (git {commit})" if commit else "")
