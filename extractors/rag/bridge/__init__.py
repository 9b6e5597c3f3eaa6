"""Stage 1: turn every modality into text (paper App. B, "report bridging").

Output, one row per manifest sample, ``results/{dataset}/bridge/{modality}.parquet``:
``sample_id``, ``text`` (null unless ok), ``source`` (what produced the text), ``status``
(ok / missing / failed) and ``reason`` (null when ok).

Bridges by input kind (``rag.bridges`` in the config; a modality name overrides its kind):

* ``passthrough`` (text): the note itself, whitespace-normalised.
* ``ehr-serialize`` (timeseries): ``variable_name: value unit; …`` over a fixed field order —
  the 46 variables of ``cohorts.adapters.ehr_variables`` in their table order, then any other
  column of the file in sorted order. Each variable is aggregated over the window (default the
  whole file; ``window_hours: [lo, hi)`` restricts it) with ``aggregation`` (last / mean / min /
  max; ``per_variable`` overrides it for single variables); variables without an observed value
  are omitted; values are written with ``precision`` significant digits, without exponent.
  Observations <= 1 of a ``fraction_to_percent`` variable (FiO2) are fractions, written in %.
* ``nearest-report`` (image, volume, slide): the offline bridge, no weights needed. It reads an
  image expert's cached embedding of this modality and returns the report text (the dataset's
  text modality) of the most cosine-similar *training-split* sample with a report, never one of
  the sample's own patient. It sees sample ids, patient ids, splits, the image embeddings and the
  training reports — never a label. A stand-in for report generation, labelled as such.
* ``maira2`` (chest X-ray), ``merlin`` (CT), ``histgen`` (WSI): report-generation models, loaded
  under the policy of ``extractors.loading`` (MAIRA-2's remote code only when its config opts in,
  at a pinned revision; Merlin built from merlin-vlm's classes without their downloads, see
  ``MerlinBridge``); they raise ``LoadingError`` naming what is missing when their weights (or
  code) are absent, and one sample that fails to generate is ``failed`` with its reason.

Modules: ``base`` (rows, inputs, the ``Bridge`` class), ``registry`` (``register_bridge``,
``create_bridge``, ``list_bridges``), one module per bridge, ``driver`` (the steps that
``run_bridge`` chains) and ``files`` (the bridge file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from extractors.rag.bridge.base import (
    Bridge,
    BridgeError,
    BridgeInputs,
    BridgeRows,
)
from extractors.rag.bridge.driver import (
    BridgeFactory,
    bridge_config,
    bridge_modality,
    build_bridge,
    load_inputs,
)
from extractors.rag.bridge.files import (
    BRIDGE_COLUMNS,
    META_KEY,
    BridgeResult,
    read_bridge,
    write_bridge,
)
from extractors.rag.bridge.registry import (
    bridge_class,
    create_bridge,
    list_bridges,
    register_bridge,
)

# Importing a bridge module registers its bridge. The order below is the registration order,
# which list_bridges(), BRIDGE_TYPES and the config error that lists them follow.
# isort: off
from extractors.rag.bridge.passthrough import PassthroughBridge, passthrough
from extractors.rag.bridge.ehr import (
    AGGREGATIONS,
    EhrSerializeBridge,
    aggregate,
    ehr_fields,
    ehr_percent_from_fraction,
    format_value,
    fractions_to_percent,
    serialize_ehr,
    serialize_ehr_file,
)
from extractors.rag.bridge.nearest import (
    NearestReportBridge,
    NearestReports,
    ReportLibrary,
    nearest_report,
    report_modality,
)
from extractors.rag.bridge.generator import ReportGenerator
from extractors.rag.bridge.maira2 import Maira2Bridge, plain_report
from extractors.rag.bridge.merlin import (
    MERLIN_DECODER_FILES,
    MERLIN_ORGAN_SYSTEMS,
    MerlinBridge,
    build_merlin_report_model,
    load_merlin_state,
)
from extractors.rag.bridge.histgen import HistGenBridge
# isort: on

BRIDGE_TYPES = tuple(list_bridges())
# The report-generation bridges by name. run_bridge builds a generator through this mapping
# (looked up when called), so a caller or test can put an already loaded model in its place.
GENERATORS: dict[str, BridgeFactory] = {
    name: bridge_class(name) for name in list_bridges(generative=True)
}


def run_bridge(
    manifest_path: str | os.PathLike,
    modality: str,
    spec: Mapping[str, Any],
    image_cache: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    device: str = "cpu",
    fit_manifest: str | os.PathLike | None = None,
    fit_image_cache: str | os.PathLike | None = None,
) -> BridgeResult:
    """Bridge one modality of a manifest; returns the rows and their metadata.

    ``fit_manifest`` / ``fit_image_cache`` (external-validation targets, nearest-report only):
    take the reports from that cohort's training split instead of this one's.
    """
    inputs = load_inputs(
        manifest_path,
        modality,
        root,
        image_cache=image_cache,
        fit_manifest=fit_manifest,
        fit_image_cache=fit_image_cache,
    )
    bridge = build_bridge(spec, device, generators=GENERATORS)
    return bridge_modality(bridge, inputs, spec)


__all__ = [
    "AGGREGATIONS",
    "BRIDGE_COLUMNS",
    "BRIDGE_TYPES",
    "GENERATORS",
    "MERLIN_DECODER_FILES",
    "MERLIN_ORGAN_SYSTEMS",
    "META_KEY",
    "Bridge",
    "BridgeError",
    "BridgeFactory",
    "BridgeInputs",
    "BridgeResult",
    "BridgeRows",
    "EhrSerializeBridge",
    "HistGenBridge",
    "Maira2Bridge",
    "MerlinBridge",
    "NearestReportBridge",
    "NearestReports",
    "PassthroughBridge",
    "ReportGenerator",
    "ReportLibrary",
    "aggregate",
    "bridge_class",
    "bridge_config",
    "bridge_modality",
    "build_bridge",
    "build_merlin_report_model",
    "create_bridge",
    "ehr_fields",
    "ehr_percent_from_fraction",
    "format_value",
    "fractions_to_percent",
    "list_bridges",
    "load_inputs",
    "load_merlin_state",
    "nearest_report",
    "passthrough",
    "plain_report",
    "read_bridge",
    "register_bridge",
    "report_modality",
    "run_bridge",
    "serialize_ehr",
    "serialize_ehr_file",
    "write_bridge",
]
