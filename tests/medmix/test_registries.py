"""Lists that several layers read come from one registry: the torch-free catalogues of the
plan layer (methods, RAG bridges) must match the registries of the stages that implement
them, so adding an entry in one place and forgetting the other fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from extractors.rag.bridge import AGGREGATIONS, list_bridges
from fusion.registry import list_methods, method_class
from medmix.config import load_schema
from medmix.methods import CATALOGUE, LARGE, PROBE, config_methods, method_label
from medmix.rag_settings import GENERATIVE_BRIDGES


def test_every_catalogued_method_has_its_model_and_every_model_its_entry() -> None:
    registered = set(list_methods())
    catalogued = {m.name for m in CATALOGUE}
    method_class("medmix-uniform")  # the ablation variant registers with the others
    assert registered | {"medmix-uniform"} == catalogued
    for entry in CATALOGUE:
        if entry.name == PROBE:  # scikit-learn, not a torch model
            continue
        cls = method_class(entry.name)
        assert bool(getattr(cls, "uses_teacher_input", False)) == entry.teacher_input


def test_the_config_schema_accepts_exactly_the_catalogued_methods() -> None:
    enum = load_schema()["properties"]["methods"]["items"]["enum"]
    assert enum == config_methods()
    assert "medmix-uniform" not in enum and LARGE in enum


def test_labels_come_from_the_catalogue() -> None:
    assert method_label("medmix-sum") == "MedMIX-Σ (ours)"
    assert method_label("medmix-only-report") == "MedMIX (Note only)"
    assert method_label("ehr-large") == "EHR-Large"


def test_registering_an_uncatalogued_method_is_refused() -> None:
    from fusion.registry import register_method
    from medmix.methods import MethodError

    with pytest.raises(MethodError, match="not in the catalogue"):

        @register_method("my-new-fusion")
        class _New:  # noqa: N801
            pass


def test_bridge_lists_match_the_bridge_registry() -> None:
    bridges = load_schema()["properties"]["rag"]["properties"]["bridges"]["additionalProperties"]
    assert bridges["properties"]["type"]["enum"] == list_bridges()
    assert bridges["properties"]["aggregation"]["enum"] == list(AGGREGATIONS)
    assert set(GENERATIVE_BRIDGES) == set(list_bridges(generative=True))


def test_every_catalogued_output_has_its_builder_and_every_builder_its_entry() -> None:
    """medmix.outputs lists what the workflow declares (with its report caption); the report
    package registers how each is drawn."""
    from fusion.report.paper import figure_patterns, table_stems
    from medmix.outputs import FIGURE, MAIN, OUTPUTS, PAPER, TABLE

    for group in (MAIN, PAPER):
        catalogue = {
            kind: sorted(o.stem for o in OUTPUTS if o.group == group and o.kind == kind)
            for kind in (TABLE, FIGURE)
        }
        drawn = sorted(p.replace("{dataset}", "") for p in figure_patterns(group))
        assert sorted(table_stems(group)) == catalogue[TABLE]
        assert drawn == catalogue[FIGURE]
    captions = {o.caption for o in OUTPUTS}
    report_dir = Path(__file__).resolve().parents[2] / "workflow" / "report"
    assert sorted(c for c in captions if not (report_dir / c).is_file()) == []
