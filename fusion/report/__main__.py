"""``python -m fusion.report``: the same command line as ``python -m fusion.render``."""

import sys

from fusion.report.cli import main
from medmix.cli import run_cli

sys.exit(run_cli(main))
