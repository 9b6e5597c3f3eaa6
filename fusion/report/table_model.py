"""The one table model of the report: what a table holds, whatever file it is written to.

A :class:`Table` is a grid of id columns (text, a repeated value blanked on display) and value
columns (cells, one :class:`ValueColumn` each), rows as dicts, the groups within which the
best value of a column is bold (:meth:`Table.best`), the blocks its rows fall into
(:meth:`Table.blocks`), and the notes under it. :mod:`fusion.report.table_render` writes it
as Markdown, LaTeX, CSV and HTML; a builder (:mod:`fusion.report.tables`) fills it.

A row holds, under each id key, its display string; under each value key one cell:

- ``(mean, std)``: printed ``mean ± std`` (CSV: ``<key>_mean``, ``<key>_std``);
- a number, or None (printed ``n/a``);
- :class:`Interval`: a difference with its confidence interval;
- :class:`Text`: a fixed text (``—``, ``n/a (no predictions)``).

Keys starting with ``_`` go to the CSV only (``_protocol`` -> column ``protocol``). A row with
``_reference`` true (a teacher reference) is never bold and is drawn in a block of its own.

An *incomplete* cell (:class:`SeedMean` or :class:`FlaggedNumber` with a ``flag``: a mean over
fewer seeds than the run was configured with, or with a NaN seed value) is printed with
:data:`INCOMPLETE_MARK` in every format; its row is never bold, a note under the table names
the row and says why (:meth:`Table.incomplete_notes`), and the CSV gains an ``incomplete``
column (only then: a table without such a cell is written as before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DECIMALS = 3  # mean ± std over a handful of seeds: a std of ~0.01 justifies three decimals
SIGNIFICANT_MARK = "†"  # an interval that excludes 0
INCOMPLETE_MARK = "‡"  # a mean over fewer seeds than configured, or with a NaN seed value


class SeedMean(tuple):
    """A ``(mean, std)`` cell with ``flag``: why it is not over every configured seed (None:
    it is). A tuple, so every reader of ``(mean, std)`` cells reads it unchanged."""

    flag: str | None

    def __new__(cls, mean: float, std: float, flag: str | None = None) -> SeedMean:
        cell = super().__new__(cls, (mean, std))
        cell.flag = flag
        return cell


class FlaggedNumber(float):
    """A number cell derived from incomplete cells (e.g. Perf of Table E6), with ``flag``."""

    flag: str | None

    def __new__(cls, value: float, flag: str | None = None) -> FlaggedNumber:
        cell = super().__new__(cls, value)
        cell.flag = flag
        return cell


def flag_of(cell: Any) -> str | None:
    """Why a cell is incomplete, or None."""
    flag = getattr(cell, "flag", None)
    return flag if isinstance(flag, str) and flag else None


@dataclass
class ValueColumn:
    key: str
    label: str
    better: str | None = "max"  # max | min | None (no bold)
    decimals: int | None = DECIMALS  # None: four significant digits (cost columns)
    tex_label: str | None = None  # the LaTeX header where the label is not plain text


@dataclass(frozen=True)
class Interval:
    """A difference and its confidence interval, ``+0.012 [-0.003, +0.027]``, marked
    :data:`SIGNIFICANT_MARK` when ``significant``; ``n/a`` when the interval is not finite."""

    delta: float
    lo: float
    hi: float
    significant: bool


@dataclass(frozen=True)
class Text:
    """A value cell printed as it is; ``tex`` where LaTeX spells it otherwise."""

    text: str
    tex: str | None = None


@dataclass(frozen=True)
class BoldRule:
    """Which cells are bold: within a group of at least ``min_rows`` compared rows, the values
    within ``rtol`` / ``atol`` (:func:`numpy.isclose`) of the column's best."""

    min_rows: int = 2
    rtol: float = 0.0
    atol: float = 1e-12


@dataclass(frozen=True)
class Layout:
    """How the text formats frame the grid. The paper tables open with ``title. header`` and
    print their notes in italics (LaTeX: comments under the table); Table 1 opens with its
    header alone, lists its notes as bullets and leaves them out of LaTeX, and labels the block
    of teacher references with a row of its own."""

    title_in_text: bool = True
    bullet_notes: bool = False
    tex_notes: bool = True
    reference_heading: str | None = None  # a labelled row opening each block of references


@dataclass(frozen=True)
class Block:
    """Consecutive rows drawn together (an HTML ``<tbody>``), ``heading`` the label row that
    opens it, ``shaded`` drawn as a reference block."""

    rows: list[int]
    shaded: bool = False
    heading: str | None = None


@dataclass
class Table:
    """A table: see the module docstring for the cells. ``group``: the id keys within which
    the best value of each column is bold; ``about``: how to read the numbers (printed apart
    from the notes); ``csv_columns``: the CSV's columns in order (default: every column the
    rows hold, in order of appearance); ``title``: the caption registered with the builder."""

    stem: str
    header: str
    id_columns: list[tuple[str, str]]
    value_columns: list[ValueColumn]
    rows: list[dict[str, Any]]
    group: list[str]
    notes: list[str] = field(default_factory=list)
    about: str = ""
    title: str = ""
    bold: BoldRule = field(default_factory=BoldRule)
    layout: Layout = field(default_factory=Layout)
    csv_columns: list[str] | None = None

    def best(self) -> set[tuple[int, str]]:
        """(row index, column key) of the bold cells."""
        out: set[tuple[int, str]] = set()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(self.rows):
            if r.get("_reference") or self.row_flags(i):  # incomplete rows are never ranked
                continue
            groups.setdefault(tuple(r.get(k, "") for k in self.group), []).append(i)
        need = self.bold.min_rows
        for idx in groups.values():
            if len(idx) < need:
                continue
            for col in self.value_columns:
                if col.better is None:
                    continue
                vals = [(i, mean_of(self.rows[i].get(col.key))) for i in idx]
                vals = [(i, v) for i, v in vals if v is not None and math.isfinite(v)]
                if len(vals) < need:
                    continue
                target = (max if col.better == "max" else min)(v for _, v in vals)
                out |= {(i, col.key) for i, v in vals
                        if np.isclose(v, target, rtol=self.bold.rtol, atol=self.bold.atol)}  # fmt: skip
        return out

    def row_flags(self, i: int) -> list[str]:
        """Why row ``i``'s value cells are incomplete (each reason once), or []."""
        flags = (flag_of(self.rows[i].get(c.key)) for c in self.value_columns)
        return list(dict.fromkeys(f for f in flags if f))

    def incomplete_notes(self) -> list[str]:
        """One note per incomplete row: its ids and why (see the module docstring)."""
        notes = []
        for i, r in enumerate(self.rows):
            flags = self.row_flags(i)
            if flags:
                ids = ", ".join(str(r.get(k, "")) for k, _ in self.id_columns if r.get(k, ""))
                notes.append(f"{INCOMPLETE_MARK} {ids}: {'; '.join(flags)}; never bold.")
        return notes

    def display_ids(self) -> list[list[str]]:
        """Id cells with repeats blanked (a value is shown when it or a column left of it
        changes)."""
        out, prev = [], None
        for r in self.rows:
            ids = [str(r.get(k, "")) for k, _ in self.id_columns]
            if prev is None:
                shown = ids
            else:
                shown, changed = [], False
                for a, b in zip(ids, prev, strict=True):
                    changed = changed or a != b
                    shown.append(a if changed else "")
            out.append(shown)
            prev = ids
        return out

    def blocks(self) -> list[Block]:
        """The rows in blocks: a new one at each new value of the first id column, where the
        rows turn to or from references, and where a reference heading opens."""
        heading = self.layout.reference_heading
        out: list[Block] = []
        prev_ref = prev_shaded = False
        for i, (r, ids) in enumerate(zip(self.rows, self.display_ids(), strict=True)):
            ref = bool(r.get("_reference"))
            shaded = ref
            new_group = i == 0 or bool(ids and ids[0])
            opens = heading is not None and ref and (new_group or not prev_ref)
            if new_group or opens or shaded != prev_shaded:
                out.append(Block([], shaded, heading if opens else None))
            out[-1].rows.append(i)
            prev_ref, prev_shaded = ref, shaded
        return out


def mean_of(cell: Any) -> float | None:
    """The number a cell is ranked by (its mean), or None."""
    if cell is None or isinstance(cell, Text | Interval):
        return None
    if isinstance(cell, tuple):
        return None if cell[0] is None else float(cell[0])
    return float(cell)
