"""The tables and figures MedMIX writes, as data: stem, report caption, when a config asks
for it. Torch- and pandas-free: the workflow declares exactly these files and gives each its
caption, and the renderer's builders (``fusion/report/``) register against these stems.

Adding a table or figure: one :class:`Output` entry here (its caption is an ``.rst`` file in
``workflow/report/``) and one builder registered under the stem in ``fusion/report/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medmix.config import is_activated, section

TABLE_FORMATS = ("md", "csv", "tex", "html")  # html: the form the report shows inline
FIGURE_FORMATS = ("png", "svg", "pdf", "txt")  # txt: the provenance sidecar
TABLE, FIGURE = "table", "figure"
MAIN, PAPER = "main", "paper"  # written by `render tables|figures` / by `render paper`
PROTOCOL_FAMILIES = ("train_drop_one", "test_drop_one", "train_random", "test_random")


def _protocols(*keys: str) -> Callable[[dict[str, Any]], bool]:
    return lambda cfg: any(section(cfg, "protocols").get(k) for k in keys)


def _always(cfg: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Output:
    """One table or figure (or one per training dataset: ``stem`` ends in ``_``)."""

    stem: str
    kind: str  # TABLE | FIGURE
    caption: str  # the report caption, workflow/report/<caption>
    asked: Callable[[dict[str, Any]], bool] = _always
    group: str = PAPER  # MAIN (Table 1 and its figures) | PAPER (the rest)

    @property
    def per_dataset(self) -> bool:
        return self.stem.endswith("_")

    def stems(self, datasets: list[str]) -> list[str]:
        return [f"{self.stem}{d}" for d in datasets] if self.per_dataset else [self.stem]


# Order = the order `render paper` writes them and the report lists them.
OUTPUTS: tuple[Output, ...] = (
    Output("main", TABLE, "main_table.rst", group=MAIN),
    Output("main_auroc", FIGURE, "main_auroc.rst", group=MAIN),
    Output("fusion_weights", FIGURE, "fusion_weights.rst", group=MAIN),
    Output("experts", TABLE, "experts.rst"),
    Output("per_task", TABLE, "per_task.rst"),
    *(Output(f, TABLE, f"{f}.rst", _protocols(f)) for f in PROTOCOL_FAMILIES),
    Output("structured", TABLE, "structured.rst", _protocols("extra")),
    Output("drop_one_", FIGURE, "drop_one.rst", _protocols("train_drop_one", "test_drop_one")),
    Output("random_drop_", FIGURE, "random_drop.rst", _protocols("train_random", "test_random")),
    Output("weights_", FIGURE, "weights.rst", _protocols(*PROTOCOL_FAMILIES, "extra")),
    Output("efficiency", TABLE, "efficiency.rst", lambda cfg: is_activated(cfg, "efficiency")),
    Output("pareto", FIGURE, "pareto.rst", lambda cfg: is_activated(cfg, "efficiency")),
    Output("ablation", TABLE, "ablation_table.rst", lambda cfg: is_activated(cfg, "ablations")),
    Output("ablation", FIGURE, "ablation_figure.rst", lambda cfg: is_activated(cfg, "ablations")),
    Output("external", TABLE, "external.rst", lambda cfg: bool(cfg.get("external"))),
)


def output_entry(stem: str, kind: str) -> Output:
    """The entry a written stem belongs to (``drop_one_demo-openi`` -> ``drop_one_``)."""
    for out in OUTPUTS:
        if out.kind == kind and (
            stem == out.stem or (out.per_dataset and stem.startswith(out.stem))
        ):
            return out
    raise KeyError(f"no {kind} {stem!r} in medmix.outputs.OUTPUTS")


def asked_outputs(
    cfg: dict[str, Any], datasets: list[str], group: str = PAPER
) -> dict[str, list[str]]:
    """The table and figure stems of ``group`` this config asks for, in catalogue order."""
    out: dict[str, list[str]] = {"tables": [], "figures": []}
    for entry in OUTPUTS:
        if entry.group == group and entry.asked(cfg):
            out["tables" if entry.kind == TABLE else "figures"] += entry.stems(datasets)
    return out
