"""Progress bars that appear only on a terminal.

Snakemake rules redirect a job's stderr into its log file; tqdm's carriage-return frames would
fill those logs. Every progress bar of the pipeline goes through :func:`progress`, which shows
the bar only when it is wanted (``enabled``: a CLI's ``--no-progress`` / ``--quiet`` turn it off)
and the bar's stream is a TTY. ``MEDMIX_PROGRESS=always`` (or ``1``) forces bars on (a notebook,
a terminal multiplexer that is not seen as a TTY), ``MEDMIX_PROGRESS=never`` (or ``0``) off.

Bars drawn by libraries (Hugging Face downloads, checkpoint loading) are not ours to route:
:func:`quiet_library_bars` turns them off through their environment switches when ours are off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

ENV = "MEDMIX_PROGRESS"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_enabled(enabled: bool = True, stream: TextIO | None = None) -> bool:
    """Whether a bar written to ``stream`` (default: stderr) is shown."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("0", "never", "no", "off", "false"):
        return False
    if not enabled:
        return False
    if forced in ("1", "always", "yes", "on", "true"):
        return True
    return _isatty(sys.stderr if stream is None else stream)


def progress(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`progress_enabled` (a disabled bar
    writes nothing and still iterates, and ``update``/``close`` are no-ops)."""
    enabled = enabled and not kwargs.pop("disable", False)
    show = progress_enabled(enabled, kwargs.get("file"))
    return tqdm(iterable, disable=not show, **kwargs)


def quiet_library_bars(enabled: bool = True) -> None:
    """When bars are not shown (:func:`progress_enabled`), switch off the tqdm bars of
    libraries too (``TQDM_DISABLE``, ``HF_HUB_DISABLE_PROGRESS_BARS``); values already set in
    the environment are kept."""
    if progress_enabled(enabled):
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:  # read at import: switch it off directly
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except ImportError:  # pragma: no cover - an old huggingface_hub
            pass
