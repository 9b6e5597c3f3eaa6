"""Options every MedMIX command line shares: ``--version``, ``--quiet``, ``--no-progress``.

* ``--version`` prints ``medmix <version>`` (and the git commit in a checkout) and exits.
* ``--no-progress`` hides progress bars only; logging is unchanged.
* ``--quiet`` lowers logging to warnings and errors and hides progress bars too. Results the
  command prints on stdout (a summary line, a listing) are still printed.

Progress bars are shown only on a terminal in any case (:mod:`medmix.progress`).
"""

from __future__ import annotations

import argparse
from typing import Any

from medmix.logs import setup_logging

VERSION_HELP = "print the MedMIX version (and git commit, in a checkout) and exit"


class _VersionAction(argparse.Action):
    """``--version``; the version (a ``git`` call) is looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any):
        kw.setdefault("help", VERSION_HELP)
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from medmix.version import version_string

        print(version_string())
        parser.exit()


def add_version_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action=_VersionAction, help=VERSION_HELP)
    return parser


def add_output_options(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """``--quiet`` (and, for commands that draw progress bars, ``--no-progress``)."""
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="log warnings and errors only (not progress messages); also hides progress bars",
    )
    if progress:
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="hide progress bars (logging unchanged); bars are only ever drawn on a terminal",
        )


def show_progress(args: argparse.Namespace) -> bool:
    return not (getattr(args, "quiet", False) or getattr(args, "no_progress", False))


def setup_cli_logging(args: argparse.Namespace) -> None:
    """The pipeline's logging setup, at WARNING under ``--quiet``; library progress bars off
    unless ours are shown (:func:`medmix.progress.quiet_library_bars`)."""
    from medmix.progress import quiet_library_bars

    setup_logging("WARNING" if getattr(args, "quiet", False) else None)
    quiet_library_bars(show_progress(args))
