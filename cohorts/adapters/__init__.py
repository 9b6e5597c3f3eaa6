"""Real-cohort adapters: a dataset as its publisher distributes it -> the manifest (cohorts.manifest).

One module per source: :mod:`.openi` (IU chest X-ray, Kaggle tables or NLM XML),
:mod:`.mimic4` (MIMIC-IV + MIMIC-CXR-JPG + MIMIC-IV-Note), :mod:`.mimic3` (MIMIC-III v1.4)
and :mod:`.table` (any CSV/Parquet with a column mapping; MMIST-ccRCC uses it). Shared parts:
:mod:`.icu` and :mod:`.icu_tables` (what the two MIMIC adapters share: samples, outcomes,
settings, the tables both releases publish), :mod:`.readers` (streaming CSV readers with
clear errors), :mod:`.ehr_variables` (the 46 EHR variables and their itemids), :mod:`.ehr`
(hourly 48 h series), :mod:`.summary` (the per-adapter summary table), :mod:`.published_split`
(a published split file in place of the seeded split).

Every path the user names (a command-line option or the matching Python argument) must exist:
:func:`require_path` raises an :class:`AdapterError` naming the option and the path, and the
command line turns any :class:`AdapterError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from os import PathLike
from pathlib import Path

from medmix.cli import non_negative_int
from medmix.errors import UserError


class AdapterError(UserError, ValueError):
    """Input that an adapter cannot use; the message names the file and, where it applies, the column."""


ADAPTER_MODULES = ("openi", "mimic4", "mimic3", "table")
EXIT_INPUT_ERROR = 2  # the exit code of ``python -m cohorts <adapter>`` on an AdapterError


def require_path(
    path: str | PathLike | None, option: str, kind: str = "file", what: str = ""
) -> Path | None:
    """``path`` as a Path, or an :class:`AdapterError` naming ``option`` when it does not exist.

    ``kind`` is ``file`` or ``folder``; ``None`` (option not given) passes through. ``what``
    prefixes the message (the adapter or dataset name).
    """
    if path is None:
        return None
    p = Path(path)
    prefix = f"{what}: " if what else ""
    if not p.exists():
        raise AdapterError(f"{prefix}{option} {p}: {kind} not found")
    if kind == "folder" and not p.is_dir():
        raise AdapterError(f"{prefix}{option} {p}: not a folder")
    if kind == "file" and not p.is_file():
        raise AdapterError(f"{prefix}{option} {p}: not a file")
    return p


def cli_errors(name: str) -> Callable:
    """Decorate an adapter's CLI entry: an :class:`AdapterError` becomes one line on stderr
    (``python -m cohorts NAME: error: …``) and exit code 2, as argparse does for bad usage."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except AdapterError as exc:
                line = " ".join(str(exc).split())  # one line, whatever the message holds
                print(f"python -m cohorts {name}: error: {line}", file=sys.stderr)
                return EXIT_INPUT_ERROR

        return run

    return wrap


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register every adapter's subcommand (``openi``, ``mimic4``, ``mimic3``, ``table``)."""
    import importlib

    for name in ADAPTER_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_cli(subparsers)


def add_common_args(p: argparse.ArgumentParser, dataset: str, seed: int = 0) -> None:
    """``--out``, ``--dataset``, ``--seed``: the arguments every adapter takes."""
    p.add_argument(
        "--out", required=True, help="output folder: manifest.parquet, summary.csv, summary.md"
    )
    p.add_argument(
        "--dataset", default=dataset, help=f"dataset name in the manifest (default {dataset})"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=seed, help=f"split seed (default {seed})"
    )


def add_split_file_args(p: argparse.ArgumentParser, keyed_by: str) -> None:
    """``--split-file`` and ``--split-missing``: a published split in place of the seeded one."""
    p.add_argument(
        "--split-file",
        help="published split to use instead of the seeded one: "
        + keyed_by
        + "; it replaces the seeded split exactly (ids that match nothing are an error)",
    )
    p.add_argument(
        "--split-missing",
        choices=("drop", "error"),
        default="drop",
        help="samples absent from --split-file: drop them (counted in the summary, default) "
        "or stop with an error",
    )
