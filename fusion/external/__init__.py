"""External validation (paper §4.5, Table 2): another cohort aligned with a saved model.

Train on one configured dataset, evaluate on another with the same tasks and modalities, or a
subset of them (``python -m fusion external``; scored by :func:`fusion.evaluate.run_external`).
This module aligns the target cohort with the source's saved model:

* :func:`load_target`: the target's caches of the model's experts, read with the SOURCE's
  standardisation statistics; a modality the target lacks is missing for every sample
  (MIMIC-IV-MM → MIMIC-III, which has no chest X-rays);
* :func:`external_view`: the target's evaluation rows are its ``external`` rows (all of its rows
  when it has none: the whole cohort is unseen);
* :func:`check_alignment`: expert caches must describe the same embedding space in both
  cohorts. Experts with a fixed model (FMs, MiniLM, radiomics features) do. Experts fitted on a
  cohort's training split (TF-IDF+SVD, a time-series variable list learnt from the files) do
  when the target was extracted with the source's fit — the workflow passes
  ``--fit-manifest`` (the source's manifest) to every extraction of an external target — which
  their cache metadata shows (the preprocess hash covers the fit). The RAG branch (projection
  and image bridge fitted per cohort) and any expert whose metadata differs are listed as
  ``unaligned_experts`` in ``summary.json`` (and in the table's header) with a warning. A
  different embedding dim is an error.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from extractors.cache import read_meta
from extractors.registry import expert_class
from fusion.data import FusionData, load_fusion_data
from medmix.config import cache_paths, dataset_paths, expert_type, is_rag_expert
from medmix.methods import TEACHER_EXPERT

log = logging.getLogger("medmix.fusion.external")


def cohort_fitted_experts(cfg: dict[str, Any], experts: list[str]) -> list[str]:
    """The experts (config names) whose embedding space is fitted on a cohort's own data."""
    out = []
    specs = cfg.get("experts", {})
    for name in experts:
        spec = specs.get(name, {})
        typ = expert_type(cfg, name)
        fitted = is_rag_expert(cfg, name)
        if not fitted:
            try:
                cls = expert_class(typ)
                fitted = bool(getattr(cls, "requires_fit", False))
                if typ in ("catch22", "ts-stats") and spec.get("variables") is None:
                    fitted = True
            except Exception:  # noqa: BLE001 - unknown type: cannot tell, assume fixed
                fitted = False
        if fitted:
            out.append(name)
    return out


def load_target(cfg: dict[str, Any], target: str, spec: Any, standardization: Any) -> FusionData:
    """The caches of ``target`` that a saved model with ``spec`` reads, standardised with its
    statistics; a modality the target lacks is missing for every sample."""
    paths = dataset_paths(cfg, target)
    caches = cache_paths(cfg, target)
    have = set(cfg["datasets"][target]["modalities"])
    for m in spec.modalities:  # a teacher cache read as an input expert (AdaCoMed, *-large)
        if m in have:
            caches.setdefault(m, {})[TEACHER_EXPERT] = paths.teacher(m)
    missing = [(m, e) for m, e in spec.flat_experts if m in have and e not in caches.get(m, {})]
    if missing:
        raise ValueError(f"{target}: no cache configured for {missing}")
    # a modality the target cohort lacks: no cache, missing for every sample
    wanted = {
        m: {e: caches[m][e] if m in have else None for e in spec.experts[m]}
        for m in spec.modalities
    }
    return load_fusion_data(paths.manifest, wanted, standardization)


def _rag_bridges_aligned(cfg: dict[str, Any], source: str, target: str, modality: str) -> bool:
    """The RAG branch (shared knowledge base, projection and encoders) gives one embedding
    space across cohorts when the text its bridge hands it does: text, EHR and report-generation
    bridges are fixed functions of the input; the nearest-report bridge is, when the target's
    reports come from the source's training split (``--fit-manifest``, as the workflow does)."""
    from extractors.rag.bridge import read_bridge  # the bridges: only when RAG is judged

    try:
        metas = [
            read_bridge(dataset_paths(cfg, ds).root / "bridge" / f"{modality}.parquet")[1]
            for ds in (source, target)
        ]
    except Exception:  # noqa: BLE001 - no bridge to judge by: cannot vouch for it
        return False
    kinds = {str((m.get("bridge") or {}).get("type")) for m in metas}
    if len(kinds) != 1:
        return False
    if kinds == {"nearest-report"}:
        return all(m.get("library_dataset") == source for m in metas)
    return True


def check_alignment(cfg: dict[str, Any], source: str, target: str, spec: Any) -> list[str]:
    """Experts whose caches may not share one embedding space across the two cohorts."""
    if source == target:
        return []
    sc, tc = cache_paths(cfg, source), cache_paths(cfg, target)
    fitted = set(cohort_fitted_experts(cfg, [e for _, e in spec.flat_experts]))
    flagged = set()
    have = set(cfg["datasets"][target]["modalities"])
    for m, e in spec.flat_experts:
        if e == TEACHER_EXPERT or m not in have:
            continue
        if is_rag_expert(cfg, e) and not _rag_bridges_aligned(cfg, source, target, m):
            flagged.add(e)
            continue
        try:
            a, b = read_meta(sc[m][e]), read_meta(tc[m][e])
        except Exception:  # noqa: BLE001 - a cache is gone: judge by the expert's type
            if e in fitted:
                flagged.add(e)
            continue
        if a.dim != b.dim:
            raise ValueError(f"{m}/{e}: dim {a.dim} in {source} but {b.dim} in {target}")
        # A fitted expert's preprocess hash covers its fit (TF-IDF vocabulary and SVD, the
        # learnt variable list): equal hashes = one embedding space (the target was extracted
        # with --fit-manifest on the source, as the workflow does for external targets).
        if (a.model_id, a.preprocess_hash) != (b.model_id, b.preprocess_hash):
            flagged.add(e)
    out = sorted(f"{m}/{e}" for m, e in spec.flat_experts if e in flagged)
    if out:
        log.warning(
            "%s -> %s: experts %s are fitted per cohort (or configured differently): their "
            "embedding spaces may not match across cohorts",
            source, target, out,
        )  # fmt: skip
    return out


def external_view(data: FusionData) -> tuple[FusionData, np.ndarray]:
    """``data`` with its evaluation rows labelled ``external`` (all rows if it has none)."""
    split = np.asarray(data.split).astype(object)
    rows = split == "external"
    if not rows.any():
        rows = np.ones(len(split), dtype=bool)
    new = np.where(rows, "external", "unused").astype(object)
    return replace(data, split=new), rows


__all__ = ["check_alignment", "cohort_fitted_experts", "external_view", "load_target"]
