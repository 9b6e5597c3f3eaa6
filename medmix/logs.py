"""One logging setup for every entry point (stderr, which rules redirect into their log:)."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """Log to stderr at ``level`` (default ``MEDMIX_LOG_LEVEL``, else INFO). An explicit
    ``level`` (``--quiet``) also applies when logging was configured before."""
    resolved = (level or os.environ.get("MEDMIX_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=resolved,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if level is not None:
        logging.getLogger().setLevel(resolved)
