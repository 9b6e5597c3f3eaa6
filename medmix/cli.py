"""Options every MedMIX command line shares: ``--version``, ``--quiet``, ``--no-progress``,
``--config`` / ``--dataset``; a subcommand parser (:func:`command_parser`) and its dispatch
(:func:`run_subcommand`); how a command line reports errors (:func:`run_cli`); argparse
types for counts.

* ``--version`` prints ``medmix <version>`` (and the git commit in a checkout) and exits.
* ``--no-progress`` hides progress bars only; logging is unchanged.
* ``--quiet`` lowers logging to warnings and errors and hides progress bars too. Results the
  command prints on stdout (a summary line, a listing) are still printed.

Progress bars are shown only on a terminal in any case (:mod:`medmix.progress`).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from medmix import fork_server
from medmix.errors import UserError
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


def command_parser(
    prog: str, description: str | None, *, version: bool = True
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A ``python -m`` command line with subcommands: the parser (its description, usually the
    module docstring, shown as written; ``--version`` unless ``version`` is false) and its
    subparsers, one required (``args.cmd``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if version:
        add_version_argument(parser)
    return parser, parser.add_subparsers(dest="cmd", required=True)


def add_config_options(parser: argparse.ArgumentParser, dataset: bool = True) -> None:
    """``--config`` (default ``config.yaml``) and, with ``dataset``, ``--dataset``."""
    parser.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    if dataset:
        add_dataset_option(parser)


def add_dataset_option(parser: argparse.ArgumentParser) -> None:
    """``--dataset`` (required): one of the config's datasets."""
    parser.add_argument("--dataset", required=True, help="dataset name from the config's datasets:")


def run_subcommand(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set up logging (:func:`setup_cli_logging`), run the subcommand's ``func``."""
    args = parser.parse_args(argv)
    setup_cli_logging(args)
    return args.func(args)


def show_progress(args: argparse.Namespace) -> bool:
    return not (getattr(args, "quiet", False) or getattr(args, "no_progress", False))


def setup_cli_logging(args: argparse.Namespace) -> None:
    """The pipeline's logging setup, at WARNING under ``--quiet``; library progress bars off
    unless ours are shown (:func:`medmix.progress.quiet_library_bars`)."""
    from medmix.progress import quiet_library_bars

    setup_logging("WARNING" if getattr(args, "quiet", False) else None)
    quiet_library_bars(show_progress(args))


# -- errors: one line for the user's mistakes, a traceback for bugs ---------------------------

EXIT_USER_ERROR = 2  # as argparse exits on bad usage
EXIT_BUG = 1
BUG_LINE = (
    "this is a bug in MedMIX, not a problem with your input: please report it with the "
    "traceback above and the command line"
)
# input a command line reads from a path the user named: missing, a folder, unreadable
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_MAX_SOURCE_BYTES = 16 << 20


def _is_user_error(exc: BaseException, extra: tuple[type[BaseException], ...]) -> bool:
    kinds = (UserError, yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError, *_PATH_ERRORS)
    return isinstance(exc, (*kinds, *extra)) or _unreadable_parquet(exc)


def _unreadable_parquet(exc: BaseException) -> bool:
    """pyarrow's error for an input that is not a Parquet file (truncated, another format);
    its message names the file. Matched by module and message: medmix imports no pyarrow."""
    return type(exc).__module__.startswith("pyarrow") and any(
        s in str(exc) for s in ("Could not open Parquet input source", "Parquet magic bytes")
    )


_PATH_PROBLEMS = {
    FileNotFoundError: "not found",
    IsADirectoryError: "is a folder, not a file",
    NotADirectoryError: "a part of the path is not a folder",
    PermissionError: "permission denied",
}


def one_line(message: str) -> str:
    """A message as one line: its lines joined (``; `` between entries, a space after a
    ``:`` that introduces them)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    out = lines[0] if lines else ""
    for line in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + line
    return out


def _parsed_text(exc: BaseException) -> str | bytes | None:
    """The text (bytes) a JSON or YAML parser (a decoder) failed on, when the error keeps it."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.doc
    if isinstance(exc, UnicodeDecodeError):
        return exc.object if isinstance(exc.object, bytes) else None
    mark = getattr(exc, "problem_mark", None) if isinstance(exc, yaml.YAMLError) else None
    buffer = getattr(mark, "buffer", None)
    return buffer.rstrip("\0") if isinstance(buffer, str) else None


def _source_file(exc: BaseException) -> str | None:
    """The file whose text a parser failed on, for errors raised where the caller parsed a
    file's text without naming the file (``json.loads(path.read_text())``): the path-like
    local of a frame on the traceback whose file holds exactly that text."""
    text = _parsed_text(exc)
    if not text:
        return None
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # the innermost frame first
        for value in list(frame.f_locals.values()):
            if not isinstance(value, str | Path) or len(str(value)) > 4096:
                continue
            try:
                path = Path(value)
                if not path.is_file() or path.stat().st_size > _MAX_SOURCE_BYTES:
                    continue
                raw = path.read_bytes()
            except (OSError, ValueError):
                continue
            content = raw if isinstance(text, bytes) else raw.decode("utf-8", errors="replace")
            if content == text:
                return str(value)
    return None


def user_error_message(exc: BaseException) -> str:
    """The one-line message of a user error, naming the file where the error knows it."""
    if isinstance(exc, _PATH_ERRORS) and (exc.filename is not None or exc.strerror is None):
        problem = next(v for k, v in _PATH_PROBLEMS.items() if isinstance(exc, k))
        if exc.filename is not None:  # OSError(errno, strerror, filename)
            return one_line(f"{exc.filename}: {problem}")
        if len(exc.args) == 1:  # FileNotFoundError(path) or (message): keep what it says
            text = str(exc.args[0])
            return one_line(text if ": " in text else f"{text}: {problem}")
    if isinstance(exc, json.JSONDecodeError):
        return one_line(f"{_source_file(exc) or 'input'}: not valid JSON ({exc})")
    if isinstance(exc, yaml.YAMLError):  # problem and position only: no quoted file content
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        name = str(getattr(mark, "name", "") or "")  # a file object's name; "<…string>" else
        source = name if name and not name.startswith("<") else _source_file(exc)
        return one_line(f"{source or 'input'}: not valid YAML ({where}{problem})")
    if isinstance(exc, UnicodeDecodeError):
        where = _source_file(exc) or "input"
        return one_line(f"{where}: not valid {exc.encoding} text (byte {exc.start}: {exc.reason})")
    return one_line(str(exc)) or type(exc).__name__


def run_cli(
    main: Callable[..., int | None],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command line's ``main(argv)`` the house way; returns the exit code.

    A user error (:class:`medmix.errors.UserError`, a YAML or JSON syntax error, a file that
    does not exist or cannot be read, or one of ``user_errors``) prints one line
    ``error: <message>`` on stderr and returns 2; anything else is a bug: its traceback and
    a line saying so, exit code 1. ``SystemExit`` (argparse's usage errors, exit 2) and
    ``KeyboardInterrupt`` pass through. Use it in every ``__main__``:
    ``sys.exit(run_cli(main))``; ``main`` itself still raises, for library callers and tests.

    A command-line process (``argv`` None) inside a local Snakemake run first offers itself
    to the run's fork server (:mod:`medmix.fork_server`), which runs the same command in a
    child that has the heavy imports done; the exit code is the child's.
    """
    if argv is None and (delegated := fork_server.delegate()) is not None:
        return delegated
    try:
        code = main(None if argv is None else list(argv))
    except Exception as exc:  # noqa: BLE001 - the one place that sorts errors for the user
        if _is_user_error(exc, user_errors):
            print(f"error: {user_error_message(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        traceback.print_exc()
        print(BUG_LINE, file=sys.stderr)
        return EXIT_BUG
    return int(code or 0)


# -- argparse types for numeric options ----------------------------------------------------


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what} (>= {low}), got {value}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "a non-negative integer")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (hours, fractions)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value
