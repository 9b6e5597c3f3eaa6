"""``python -m fusion.report``: the same command line as ``python -m fusion.render``."""

import sys

from fusion.report.cli import main

sys.exit(main())
