"""The registries of the report: one builder per table, registered with its stem and caption,
and one drawing function per figure stem pattern.

A table is one function returning a :class:`~fusion.report.table_model.Table`::

    @register_table("ablation", caption="Table E7 — structural ablations",
                    inputs=("cfg", "cells", "results"))
    def build_ablation_table(cfg, cells, results) -> Table: ...

``inputs`` names what the function takes, in order, from what a command has at hand
(:data:`INPUTS`: what ``paper``, or ``tables`` / ``figures``, gives) plus
``stem`` (the table's own stem, for one builder registered under several stems with
:func:`register_tables`). The caption becomes the table's title, also when the builder is
called directly.

A figure is one function writing its files and returning their paths::

    @register_figure("drop_one_{dataset}", inputs=("cfg", "cells", "dataset", "out_dir"))
    def plot_drop_one(cfg, cells, dataset, out_dir) -> list[Path]: ...

the pattern's fields (``{dataset}``) read back from the stem and passed as inputs. Which stems
a config asks for is :func:`medmix.plan.paper_outputs`; the registry says how each is drawn.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fusion.report.table_model import Table
from medmix.outputs import MAIN, PAPER

# MAIN: the commands ``tables`` / ``figures`` (Table 1 and its figures); PAPER: ``paper``
# what each command has at hand for a builder (every builder may also take its ``stem``)
INPUTS = {
    MAIN: ("metrics_paths", "metrics", "prediction_files", "header", "out_dir"),
    PAPER: ("cfg", "cells", "results", "costs", "out_dir"),
}


def _check_inputs(
    what: str, inputs: Sequence[str], command: str, fields: Sequence[str] = ()
) -> None:
    known = {*INPUTS[command], "stem", *fields}
    unknown = [name for name in inputs if name not in known]
    if unknown:
        raise ValueError(f"{what}: {command} gives no {unknown} (it gives {sorted(known)})")


def _take(inputs: Sequence[str], available: Mapping[str, Any], what: str) -> list[Any]:
    missing = [name for name in inputs if name not in available]
    if missing:
        raise KeyError(f"{what} needs {missing}, not given")
    return [available[name] for name in inputs]


@dataclass(frozen=True)
class TableSpec:
    stem: str
    caption: str
    build: Callable[..., Table]
    inputs: tuple[str, ...]
    command: str

    def __call__(self, available: Mapping[str, Any]) -> Table:
        return self.build(*_take(self.inputs, {"stem": self.stem, **available}, self.stem))


@dataclass(frozen=True)
class FigureSpec:
    pattern: str
    draw: Callable[..., list[Path]]
    inputs: tuple[str, ...]
    command: str
    regex: re.Pattern[str]

    def fields(self, stem: str) -> dict[str, str] | None:
        """The pattern's fields read from ``stem``, or None when it does not match."""
        got = self.regex.fullmatch(stem)
        return None if got is None else got.groupdict()

    def __call__(self, stem: str, available: Mapping[str, Any]) -> list[Path]:
        fields = self.fields(stem)
        if fields is None:
            raise ValueError(f"figure {stem!r} does not match {self.pattern!r}")
        return self.draw(*_take(self.inputs, {"stem": stem, **available, **fields}, stem))


TABLES: dict[str, TableSpec] = {}
FIGURES: dict[str, FigureSpec] = {}


def register_tables(
    captions: Mapping[str, str], inputs: Sequence[str], command: str = PAPER
) -> Callable[[Callable[..., Table]], Callable[..., Table]]:
    """Register one builder for several tables (``captions``: stem -> caption, the table's
    title); the builder tells them apart by the stem it is given and sets on its table."""
    captions = dict(captions)

    def deco(fn: Callable[..., Table]) -> Callable[..., Table]:
        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any) -> Table:
            table = fn(*args, **kwargs)
            caption = captions.get(table.stem)
            return table if caption is None else replace(table, title=caption)

        for stem, caption in captions.items():
            if stem in TABLES:
                raise ValueError(f"table {stem!r} is registered twice")
            _check_inputs(f"table {stem!r}", inputs, command)
            TABLES[stem] = TableSpec(stem, caption, build, tuple(inputs), command)
        return build

    return deco


def register_table(
    stem: str, caption: str, inputs: Sequence[str], command: str = PAPER
) -> Callable[[Callable[..., Table]], Callable[..., Table]]:
    """Register a table builder under ``stem`` with its ``caption`` (the table's title)."""
    return register_tables({stem: caption}, inputs, command)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for literal, name, _, _ in string.Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P<{name}>.+)")
    return re.compile("".join(parts))


def register_figure(
    pattern: str, inputs: Sequence[str], command: str = PAPER
) -> Callable[[Callable[..., list[Path]]], Callable[..., list[Path]]]:
    """Register a figure drawn for every stem matching ``pattern`` (``{field}`` parts)."""

    def deco(fn: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
        if pattern in FIGURES:
            raise ValueError(f"figure {pattern!r} is registered twice")
        regex = _pattern_regex(pattern)
        _check_inputs(f"figure {pattern!r}", inputs, command, list(regex.groupindex))
        FIGURES[pattern] = FigureSpec(pattern, fn, tuple(inputs), command, regex)
        return fn

    return deco


def table_spec(stem: str) -> TableSpec:
    if stem not in TABLES:
        raise ValueError(f"no renderer for table {stem!r}")
    return TABLES[stem]


def figure_spec(stem: str) -> FigureSpec:
    """The figure drawing ``stem``: an exact pattern first, else the first that matches."""
    if stem in FIGURES:
        return FIGURES[stem]
    for spec in FIGURES.values():
        if spec.fields(stem) is not None:
            return spec
    raise ValueError(f"no renderer for figure {stem!r}")


def table_stems(command: str) -> list[str]:
    """The tables a command writes, in registration order."""
    return [s.stem for s in TABLES.values() if s.command == command]


def figure_patterns(command: str) -> list[str]:
    """The figure stem patterns a command draws, in registration order."""
    return [s.pattern for s in FIGURES.values() if s.command == command]
