"""Short console lines for the workflow: Snakemake's job listings, not the full file lists.

Snakemake prints, for every job, its ``input:``, ``output:`` and ``reason:`` as one line each,
listing every file. A Table 1 job reads dozens of caches, so these lines run to thousands of
characters and bury the progress. The Snakefile wraps the formatter of Snakemake's console
handler (only the console: the run's full log under ``.snakemake/log/`` keeps every file) so
that a listing longer than :data:`LIMIT` keeps its first items and says how many it left out.
Shell commands are never shortened (they are for copying): a long one is broken before an
option into lines joined by `` \\`` continuations, so it still pastes into a shell whole.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

LIMIT = 300
_LISTING = re.compile(r"^(\s*[A-Za-z][\w ]*: )(.*)$")
_SHELLCMD = "shellcmd"  # snakemake_interface_logger_plugins.common.LogEvent.SHELLCMD's value
_SHELL_LINE = re.compile(r"^Shell command: .*$")  # a dry run's job listing shows the command


def shorten(line: str, limit: int = LIMIT) -> str:
    """``line`` if it fits; a comma-separated listing cut to its first items with a count of
    the rest; any other long line cut at ``limit`` characters."""
    if len(line) <= limit:
        return line
    m = _LISTING.match(line)
    items = m.group(2).split(", ") if m else []
    if len(items) > 1:
        head = m.group(1)
        for keep in range(len(items) - 1, 0, -1):
            text = f"{head}{', '.join(items[:keep])}, ... (+{len(items) - keep} more in .snakemake/log/)"
            if len(text) <= limit:
                return text
    return line[: limit - 3] + "..."


def _breaks(cmd: str) -> list[int]:
    """Indices of the spaces before an option (`` --x``) or a redirection (`` > ``) that lie
    outside quotes and ``$(...)``: where a command may be continued on the next line."""
    out, quote, depth = [], "", 0
    for i, ch in enumerate(cmd):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif cmd.startswith("$(", i):
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == " " and not depth and (cmd.startswith(" --", i) or cmd.startswith(" > ", i)):
            out.append(i)
    return out


def wrap_command(cmd: str, limit: int = LIMIT, indent: str = "    ") -> str:
    """``cmd`` on lines of at most ``limit`` characters, broken before options with shell
    continuations (`` \\``); the same command for a shell. A line stays longer only where
    one option's value alone is longer."""
    if len(cmd) <= limit or "\n" in cmd:
        return cmd
    lines, start, prefix = [], 0, ""
    breaks = _breaks(cmd) + [len(cmd)]
    while len(prefix) + len(cmd) - start > limit:
        fits = [b for b in breaks if b > start and len(prefix) + b - start + 2 <= limit]
        if not fits:
            break
        lines.append(prefix + cmd[start : fits[-1]] + " \\")
        start, prefix = fits[-1] + 1, indent
    lines.append(prefix + cmd[start:])
    return "\n".join(lines)


class ShortLines(logging.Formatter):
    """Wraps a formatter: a shell command is :func:`wrap_command`-ed, any other long line
    :func:`shorten`-ed."""

    def __init__(self, inner: logging.Formatter, limit: int = LIMIT) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        if str(getattr(getattr(record, "event", None), "value", "")) == _SHELLCMD:
            return wrap_command(text, self.limit)
        return "\n".join(
            _SHELL_LINE.sub(lambda m: wrap_command(m.group(0), self.limit), line)
            if _SHELL_LINE.match(line)
            else shorten(line, self.limit)
            for line in text.split("\n")
        )

    def __getattr__(self, name: str) -> Any:  # the inner formatter's own state and settings
        return getattr(self.inner, name)


FULL_ENV = "MEDMIX_CONSOLE_FULL"  # set to 1: Snakemake's own, full-length console lines


def install(logger: logging.Logger, limit: int = LIMIT) -> int:
    """Wrap the formatter of every console (non-file) handler of ``logger``; returns how many
    (0 when ``MEDMIX_CONSOLE_FULL=1`` asks for the full lines). Idempotent: a handler already
    wrapped is left alone."""
    if os.environ.get(FULL_ENV, "") not in ("", "0"):
        return 0
    n = 0
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) or handler.formatter is None:
            continue
        if not isinstance(handler.formatter, ShortLines):
            handler.setFormatter(ShortLines(handler.formatter, limit))
        n += 1
    return n
