"""The house style of the paper's figures: sized for a journal column, text never under 8 pt,
one look for MedMIX, the baselines and the teacher references, a chance line on AUROC axes,
and every figure written as PNG, SVG and PDF.

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
