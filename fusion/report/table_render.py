"""One renderer per format for the one table model: Markdown, LaTeX, CSV (separate mean / std
columns, no blanking) and HTML (the form the Snakemake report shows inline). Every format
prints the same cell texts; bold marks the best value per column within its group."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fusion.report.table_model import (
    INCOMPLETE_MARK,
    SIGNIFICANT_MARK,
    Interval,
    Table,
    Text,
    ValueColumn,
    flag_of,
)
from medmix.io import write_text_atomic
from medmix.table_html import Block, Cell, render_html_table

FORMATS = ("md", "tex", "csv", "html")
_TEX_MARK = "$^{\\dagger}$"
_TEX_INCOMPLETE = "$^{\\ddagger}$"


def tex_escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"),
                 ("#", "\\#"), ("→", "$\\rightarrow$"), ("±", "$\\pm$")):  # fmt: skip
        text = text.replace(a, b)
    return text


def cell_text(cell: Any, col: ValueColumn, bold: bool, style: str) -> str:
    """A value cell as ``style`` (md | tex | html) prints it; HTML bold is the caller's. An
    incomplete cell (:func:`~fusion.report.table_model.flag_of`) carries the incomplete mark."""
    text = _plain_text(cell, col, bold, style)
    if flag_of(cell):
        text += _TEX_INCOMPLETE if style == "tex" else INCOMPLETE_MARK
    return text


def _plain_text(cell: Any, col: ValueColumn, bold: bool, style: str) -> str:
    if isinstance(cell, Text):
        text = cell.tex if style == "tex" and cell.tex is not None else cell.text
    elif isinstance(cell, Interval):
        if not math.isfinite(cell.lo):
            text = "n/a"
        else:
            d = col.decimals
            text = f"{cell.delta:+.{d}f} [{cell.lo:+.{d}f}, {cell.hi:+.{d}f}]"
            if cell.significant:
                text += _TEX_MARK if style == "tex" else SIGNIFICANT_MARK
    elif cell is None or (
        isinstance(cell, tuple) and (cell[0] is None or not math.isfinite(cell[0]))
    ):
        return "n/a"
    elif isinstance(cell, tuple):
        mean, std = cell
        pm = " $\\pm$ " if style == "tex" else " ± "
        text = f"{mean:.{col.decimals}f}{pm}{(std or 0.0):.{col.decimals}f}"
    elif not math.isfinite(float(cell)):
        text = "n/a"
    elif col.decimals is None:
        v = float(cell)
        digits = 0 if v == 0 else max(0, 3 - math.floor(math.log10(abs(v))))
        text = f"{v:.{digits}f}"
    else:
        text = f"{float(cell):.{col.decimals}f}"
    if not bold or style == "html":
        return text
    return f"**{text}**" if style == "md" else f"\\textbf{{{text}}}"


def _value_cells(table: Table, i: int, best: set[tuple[int, str]], style: str) -> list[str]:
    row = table.rows[i]
    return [cell_text(row.get(c.key), c, (i, c.key) in best, style) for c in table.value_columns]


def _lead(table: Table) -> str:
    """The header line, behind the title where the layout prints it."""
    return f"{table.title}. {table.header}" if table.layout.title_in_text else table.header


def _labels(table: Table) -> list[str]:
    return [lab for _, lab in table.id_columns] + [c.label for c in table.value_columns]


def table_markdown(table: Table) -> str:
    best, layout, ids = table.best(), table.layout, table.display_ids()
    title = f"**{table.title}.** " if layout.title_in_text else ""
    lines = [f"<!-- {_lead(table)} -->", "", f"{title}_{table.header}_", ""]
    labels = _labels(table)
    lines += ["| " + " | ".join(labels) + " |", "|" + "---|" * len(labels)]
    for block in table.blocks():
        for i in block.rows:
            cells = ids[i] + _value_cells(table, i, best, "md")
            if block.heading and i == block.rows[0]:  # Markdown has no inner rule: a label row
                heading = [cells[0], f"_{block.heading}_"] + [""] * (len(labels) - 2)
                lines.append("| " + " | ".join(heading) + " |")
                cells[0] = ""
            lines.append("| " + " | ".join(cells) + " |")
    if not table.rows:
        lines.append("| " + " | ".join(["—"] * len(labels)) + " |")
    note = (lambda n: f"- {n}") if layout.bullet_notes else (lambda n: f"_{n}_")
    notes = [*table.notes, *table.incomplete_notes()]
    if notes:
        lines += ["", *(note(n) for n in notes)]
    if table.about:
        lines += ["", note(table.about)]
    return "\n".join(lines) + "\n"


def table_latex(table: Table) -> str:
    best, ids = table.best(), table.display_ids()
    n_id, n_cols = len(table.id_columns), len(table.id_columns) + len(table.value_columns)
    labels = [c.tex_label if c.tex_label is not None else tex_escape(c.label)
              for c in table.value_columns]  # fmt: skip
    out = [
        f"% {_lead(table)}",
        *([f"% {table.about}"] if table.about else []),
        "\\begin{tabular}{" + "l" * n_id + "c" * len(table.value_columns) + "}",
        "\\toprule",
        " & ".join(tex_escape(lab) for _, lab in table.id_columns)
        + " & "
        + " & ".join(labels)
        + " \\\\",
        "\\midrule",
    ]
    for block in table.blocks():
        for i in block.rows:
            shown = list(ids[i])
            if i and shown[0]:
                out.append("\\midrule")
            if block.heading and i == block.rows[0]:
                out.append(f"\\cmidrule(l){{2-{n_cols}}}")
                out.append(f"{tex_escape(shown[0])} & \\multicolumn{{{n_cols - 1}}}{{l}}"
                           f"{{\\textit{{{block.heading}}}}} \\\\")  # fmt: skip
                shown[0] = ""
            cells = [tex_escape(x) for x in shown] + _value_cells(table, i, best, "tex")
            out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if table.layout.tex_notes:
        out += [f"% {n}" for n in table.notes]
    out += [f"% {n}" for n in table.incomplete_notes()]  # in every layout
    return "\n".join(out) + "\n"


def table_csv(table: Table) -> str:
    """Every row with its full ids, ``<key>_mean`` / ``<key>_std`` (or ``<key>``) and
    ``<key>_best`` per value column, and the row's ``_`` keys."""
    best = table.best()
    recs = []
    for i, r in enumerate(table.rows):
        rec = {lab: r.get(k, "") for k, lab in table.id_columns}
        for c in table.value_columns:
            cell = r.get(c.key)
            if isinstance(cell, tuple):
                rec[f"{c.key}_mean"], rec[f"{c.key}_std"] = cell
            else:
                rec[c.key] = cell
            rec[f"{c.key}_best"] = (i, c.key) in best
        for k, v in r.items():
            if k.startswith("_"):
                rec[k.lstrip("_")] = v
        flags = table.row_flags(i)
        if flags:
            rec["incomplete"] = "; ".join(flags)
        recs.append(rec)
    cols = table.csv_columns
    if any("incomplete" in rec for rec in recs):  # the column exists only when needed
        for rec in recs:
            rec.setdefault("incomplete", "")
        if cols is not None and "incomplete" not in cols:
            cols = [*cols, "incomplete"]
    if cols is None and not recs:
        cols = [lab for _, lab in table.id_columns]
        for c in table.value_columns:
            cols += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_best"]
    frame = pd.DataFrame(recs, columns=cols)
    return frame.to_csv(index=False, float_format="%.6f")


def table_html(table: Table) -> str:
    """The table as an HTML page: one ``<tbody>`` per block (a rule between them), reference
    blocks apart."""
    best, ids = table.best(), table.display_ids()
    labels = _labels(table)
    numeric = [False] * len(table.id_columns) + [True] * len(table.value_columns)
    blocks: list[Block] = []
    for block in table.blocks():
        rows = []
        for i in block.rows:
            texts = _value_cells(table, i, best, "html")  # HTML bold is the cell's flag
            bold = [(i, c.key) in best for c in table.value_columns]
            rows.append([Cell(x) for x in ids[i]]
                        + [Cell(t, b, True) for t, b in zip(texts, bold, strict=True)])  # fmt: skip
        blocks.append(Block(rows, block.heading, block.shaded))
    if not table.rows:
        blocks.append(Block(rows=[[Cell("—") for _ in labels]]))
    notes = [*table.notes, *table.incomplete_notes(), *([table.about] if table.about else [])]
    return render_html_table(table.title, table.header, labels, numeric, blocks, notes)


RENDERERS = {"md": table_markdown, "tex": table_latex, "csv": table_csv, "html": table_html}


def write_table(table: Table, out_dir: str | Path, stem: str | None = None) -> list[Path]:
    """Write ``<stem>.md``, ``.tex``, ``.csv`` and ``.html`` (``stem``: the table's own)."""
    out_dir = Path(out_dir)
    stem = stem or table.stem
    return [write_text_atomic(out_dir / f"{stem}.{ext}", RENDERERS[ext](table)) for ext in FORMATS]
