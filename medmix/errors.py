"""The one base of every error caused by what the user gave (a config, a file, an option).

:class:`UserError` is a mixin: each project error keeps its builtin base too
(``class ConfigError(UserError, ValueError)``), so ``except ValueError`` still catches it. The
command lines (:func:`medmix.cli.run_cli`) print a user error as one line ``error: <message>``
and exit with code 2; any other exception is a bug and keeps its traceback (exit code 1).
The message must name the file, sample or option and what is wrong.

Torch- and pandas-free: every layer imports it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, not a bug; the message names what and where."""


class InputError(UserError, ValueError):
    """A bad command-line option or input file that no stage-specific error class covers."""
