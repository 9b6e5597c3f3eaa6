"""Tables as standalone HTML pages (the form the Snakemake report shows inline).

A page holds one ``<table>``: the title and the header line as its ``<caption>``, a
``<thead>``, one ``<tbody>`` per group (a dataset, a source → target pair; a rule between
groups), bold best cells as ``<strong>``, reference rows (the ``*-Large`` teachers) in a
separate, labelled block that is never ranked, and the notes under the table. The cell texts
are the Markdown / LaTeX ones, so every format prints the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

CSS = """
body { font-family: "Helvetica Neue", Helvetica, Arial, sans-serif; font-size: 14px;
       color: #111; margin: 16px; background: #fff; }
table { border-collapse: collapse; }
caption { caption-side: top; text-align: left; padding-bottom: 8px; max-width: 70em; }
caption .title { font-weight: bold; display: block; font-size: 15px; }
caption .header { font-style: italic; color: #444; display: block; margin-top: 2px; }
thead th { border-top: 2px solid #111; border-bottom: 1px solid #111; padding: 4px 10px;
           text-align: left; white-space: nowrap; }
thead th.num { text-align: center; }
td { padding: 3px 10px; white-space: nowrap; }
td.num { text-align: center; font-variant-numeric: tabular-nums; }
tbody + tbody tr:first-child td { border-top: 1px solid #111; }
tbody:last-of-type tr:last-child td { border-bottom: 2px solid #111; }
tbody.reference td { color: #555; background: #f6f6f6; }
tbody.reference tr:first-child td { border-top: 1px dashed #777; }
tr.block-heading td { font-style: italic; color: #555; padding-top: 6px; }
td.missing { color: #888; }
ul.notes { color: #444; max-width: 70em; padding-left: 1.2em; }
"""


NUM_CLASS = ' class="num"'


@dataclass
class Cell:
    text: str
    bold: bool = False
    numeric: bool = False


@dataclass
class Block:
    """Consecutive rows drawn as one ``<tbody>``; a ``reference`` block is styled apart and
    opened by ``heading`` (a full-width italic row)."""

    rows: list[list[Cell]] = field(default_factory=list)
    heading: str | None = None
    reference: bool = False


def render_html_table(
    title: str,
    header: str,
    labels: list[str],
    numeric: list[bool],
    blocks: list[Block],
    notes: list[str] | None = None,
) -> str:
    """One self-contained HTML page with the table (``numeric``: per column, centred)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<table>",
        '<caption><span class="title">'
        + escape(title)
        + "</span>"
        + (f'<span class="header">{escape(header)}</span>' if header else "")
        + "</caption>",
        "<thead><tr>"
        + "".join(
            f'<th scope="col"{NUM_CLASS if num else ""}>{escape(lab)}</th>'
            for lab, num in zip(labels, numeric, strict=True)
        )
        + "</tr></thead>",
    ]
    for block in blocks:
        cls = ' class="reference"' if block.reference else ""
        out.append(f"<tbody{cls}>")
        if block.heading:
            out.append(
                f'<tr class="block-heading"><td colspan="{len(labels)}">'
                f"{escape(block.heading)}</td></tr>"
            )
        for row in block.rows:
            out.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
        out.append("</tbody>")
    out.append("</table>")
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes)
                   + "</ul>")  # fmt: skip
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _td(cell: Cell) -> str:
    classes = []
    if cell.numeric:
        classes.append("num")
    if cell.text == "n/a":
        classes.append("missing")
    attr = f' class="{" ".join(classes)}"' if classes else ""
    text = escape(cell.text)
    return f"<td{attr}>{f'<strong>{text}</strong>' if cell.bold else text}</td>"
