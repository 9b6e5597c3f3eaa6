"""``python -m fusion.render tables|figures|paper|outputs``: the paper's tables and figures
(the workflow's entry point; the code is the :mod:`fusion.report` package)."""

import sys

from fusion.report.cli import main
from medmix.cli import run_cli

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_cli(main))
