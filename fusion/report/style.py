"""The house style of the paper's figures: sized for a journal column, text never under 8 pt,
one look for MedMIX, the baselines and the teacher references (MedMIX always red, every other
method a colour and marker of its own), a chance line on AUROC axes, and every figure written
as PNG, SVG and PDF.

Figures are drawn at their printed size (:data:`SINGLE_COLUMN` or :data:`DOUBLE_COLUMN`
wide), so the font sizes set here are the sizes on the page. Provenance (which data and
experts produced a figure) is not drawn inside the figure: :func:`save_figure` writes it to a
sidecar ``<stem>.txt`` and into the files' metadata, and the report caption points there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medmix.io import atomic_path, write_text_atomic

SINGLE_COLUMN = 3.4  # inches: one column of a two-column journal page
DOUBLE_COLUMN = 7.0  # inches: the full text width
MIN_FONT_PT = 8.0
FORMATS = ("png", "svg", "pdf")
PNG_DPI = 300

CHANCE_AUROC = 0.5
CHANCE_COLOR = "#4d4d4d"
TEACHER_COLOR = "#b3b3b3"
TEACHER_HATCH = "////"
TEACHER_LABEL = "teacher reference"
BASELINE_COLOR = "#1f77b4"
SINGLE_MODALITY_COLOR = "#2ca02c"


MEDMIX_RED = "#c0392b"
# Every other method's colour: tab10 without its red, then tab20's light shades without its
# reds, so that MedMIX's red is never reused (and a method is never red-ish next to it).
OTHER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94",
                "#dbdb8d", "#9edae5")  # fmt: skip
OTHER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method: MedMIX red, the others from :data:`OTHER_COLORS` in order."""
    others = [m for m in dict.fromkeys(methods) if m != "medmix"]
    out = {m: OTHER_COLORS[k % len(OTHER_COLORS)] for k, m in enumerate(others)}
    return out | {"medmix": MEDMIX_RED}


def method_markers(methods: Sequence[str]) -> dict[str, str]:
    """One marker per method (MedMIX a star): with the colours, every method's pair is unique
    even past the palette's length."""
    others = [m for m in dict.fromkeys(methods) if m != "medmix"]
    out = {m: OTHER_MARKERS[(k // len(OTHER_COLORS)) % len(OTHER_MARKERS)]
           for k, m in enumerate(others)}  # fmt: skip
    return out | {"medmix": "*"}


STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by journal checkers
    "ps.fonttype": 42,
    "svg.fonttype": "none",  # SVG text stays text
    "savefig.dpi": PNG_DPI,
}


def plt():
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


@contextmanager
def style():
    """The house style for the figures drawn inside the block."""
    with plt().rc_context(STYLE):
        yield


def auroc_limits(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    """A y range for AUROC that shows the chance line with room below it and tops out at 1."""
    lo = [v for v in lows if v is not None and math.isfinite(v)]
    hi = [v for v in highs if v is not None and math.isfinite(v)]
    bottom = math.floor((min([CHANCE_AUROC, *lo]) - 0.049) * 10) / 10
    top = math.ceil((max([CHANCE_AUROC + 0.1, *hi]) + 0.02) * 20) / 20
    return max(0.0, bottom), min(1.0, top)


def chance_line(ax, horizontal: bool = True, label: str | None = "chance (AUROC 0.5)") -> None:
    """The AUROC of a random ranking, as a dashed line across the axes."""
    draw = ax.axhline if horizontal else ax.axvline
    draw(CHANCE_AUROC, color=CHANCE_COLOR, ls=(0, (4, 2)), lw=0.9, zorder=1.5, label=label)


def empty_panel(ax, text: str = "no runs yet") -> None:
    """A grey note in the middle of a panel with nothing to draw."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def panel_grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


def dataset_panels(n: int, panel_height: float, **subplots: Any) -> tuple[Any, list[Any], int]:
    """A figure of ``n`` panels (one per dataset) in a grid at most three wide, a double
    column wide when a row holds several: (figure, the ``n`` panels, columns). The grid's
    spare cells are hidden; with no panel, its one cell stays for a note."""
    n_rows, n_cols = panel_grid(n)
    width = DOUBLE_COLUMN if n_cols > 1 else SINGLE_COLUMN
    fig, axes = plt().subplots(n_rows, n_cols, figsize=(width, panel_height * n_rows),
                               squeeze=False, **subplots)  # fmt: skip
    cells = list(axes.flat)
    for ax in cells[max(n, 1) :]:
        ax.set_visible(False)
    return fig, cells[:n], n_cols


def dodge(n: int, width: float) -> np.ndarray:
    """Offsets that spread ``n`` markers at one x over ``width`` (centred on 0)."""
    if n <= 1:
        return np.zeros(max(n, 1))
    return np.linspace(-width / 2, width / 2, n)


def small_texts(fig, min_pt: float = MIN_FONT_PT) -> list[tuple[str, float]]:
    """(text, size) of every visible non-empty text of ``fig`` smaller than ``min_pt``."""
    from matplotlib.text import Text

    out = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and t.get_fontsize() < min_pt - 1e-6:
            out.append((t.get_text(), float(t.get_fontsize())))
    return out


def save_figure(fig, out_dir: str | Path, stem: str, about: str | None = None) -> list[Path]:
    """Write ``stem``.png, .svg and .pdf atomically and close the figure; ``about`` (the
    caption-level provenance: data, experts, what bars and whiskers mean) goes to the sidecar
    ``stem``.txt and into each file's metadata instead of onto the figure."""
    out_dir = Path(out_dir)
    written = []
    for ext in FORMATS:
        target = out_dir / f"{stem}.{ext}"
        meta = None
        if about:
            key = {"png": "Description", "svg": "Description", "pdf": "Subject"}[ext]
            meta = {key: about}
        with atomic_path(target, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=PNG_DPI, bbox_inches="tight", pad_inches=0.02,
                        metadata=meta)  # fmt: skip
        written.append(target)
    if about is not None:
        written.append(write_text_atomic(out_dir / f"{stem}.txt", about.strip() + "\n"))
    plt().close(fig)
    return written
