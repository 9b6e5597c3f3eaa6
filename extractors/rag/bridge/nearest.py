"""The ``nearest-report`` bridge (image, volume, slide), offline: no weights needed.

It reads an image expert's cached embedding of the modality and hands out the report text (the
dataset's text modality) of the most cosine-similar *training-split* sample with a report,
never one of the sample's own patient. It sees sample ids, patient ids, splits, the image
embeddings and the training reports, never a label. A stand-in for report generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cohorts.manifest import read_manifest
from extractors.cache import read_cache
from extractors.rag.bridge.base import Bridge, BridgeError, BridgeInputs, BridgeRows, is_missing
from extractors.rag.bridge.registry import register_bridge

# The only manifest columns the bridge is given: no label can reach it.
SAMPLE_COLUMNS = ["sample_id", "patient_id", "split"]


@dataclass
class ReportLibrary:
    """The training reports a nearest-report bridge hands out, with their image embeddings.

    By default the cohort's own training split; for an external-validation target, the
    SOURCE cohort's (``--fit-manifest``), so both cohorts' bridged text comes from one library
    and the RAG branch embeds them in one space.
    """

    samples: pd.DataFrame  # sample_id, patient_id, split (no labels)
    image_ids: Sequence[str]
    image_emb: np.ndarray
    image_ok: np.ndarray
    reports: Sequence[Any]
    same_cohort: bool = True  # exclude a query's own patient (ids mean one person only here)


class NearestReports(NamedTuple):
    """Per query sample, in order: the handed-out text, its source, status and reason."""

    text: list[str | None]
    source: list[str | None]
    status: list[str]
    reason: list[str | None]


class _Match(NamedTuple):
    text: str | None
    source: str | None
    status: str
    reason: str | None


def _failed(reason: str) -> _Match:
    return _Match(None, None, "failed", reason)


@dataclass
class _Candidates:
    """The library's eligible training rows, sorted by sample id (ties go to the smallest)."""

    rows: list[int]  # row numbers in the library
    sample_ids: list[str]  # of every library row
    reports: Sequence[Any]  # of every library row
    vectors: np.ndarray  # unit image embeddings of ``rows``
    patient_ids: np.ndarray  # of ``rows``; all None across cohorts (nobody is excluded)


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)


def _candidates(library: ReportLibrary) -> _Candidates:
    """Training rows with an ok image embedding and a non-empty report."""
    lib_pos = {s: i for i, s in enumerate(library.image_ids)}
    lib_unit = _unit_rows(library.image_emb)
    lib_sid = library.samples["sample_id"].astype(str).tolist()
    lib_pid = library.samples["patient_id"].astype(str).to_numpy()
    lib_split = library.samples["split"].astype(str).to_numpy()
    lib_reports = library.reports
    cand = [
        i
        for i in range(len(lib_sid))
        if lib_split[i] == "train"
        and lib_sid[i] in lib_pos
        and library.image_ok[lib_pos[lib_sid[i]]]
        and not is_missing(lib_reports[i])
        and str(lib_reports[i]).strip()
    ]
    cand.sort(key=lambda i: lib_sid[i])
    if not cand:
        raise BridgeError(
            "nearest-report bridge: no training sample has both an image embedding and a report"
        )
    cand_vecs = lib_unit[[lib_pos[lib_sid[i]] for i in cand]]
    cand_pid = lib_pid[cand] if library.same_cohort else np.full(len(cand), None, dtype=object)
    return _Candidates(cand, lib_sid, lib_reports, cand_vecs, cand_pid)


def _match(vector: np.ndarray, patient: str, cands: _Candidates) -> _Match:
    """The cosine-nearest candidate of another patient."""
    sims = cands.vectors @ vector
    sims = np.where(cands.patient_ids == patient, -np.inf, sims)
    if not np.isfinite(sims).any():
        return _failed("no other-patient training report")
    nb = cands.rows[int(np.argmax(sims))]
    return _Match(
        " ".join(str(cands.reports[nb]).split()),
        f"nearest-report:{cands.sample_ids[nb]}",
        "ok",
        None,
    )


def nearest_report(
    samples: pd.DataFrame,
    image_ids: Sequence[str],
    image_emb: np.ndarray,
    image_ok: np.ndarray,
    reports: Sequence[Any],
    library: ReportLibrary | None = None,
) -> NearestReports:
    """For each row of ``samples`` (sample_id, patient_id, split): the report of the nearest
    training sample by cosine similarity of the image embeddings.

    Candidates: training-split rows of the library (default: ``samples`` themselves, with
    ``reports``) with an ok image embedding and a non-empty report, sorted by sample id (ties go
    to the smallest id). Within one cohort a sample never receives a report of its own
    patient. Labels are not an input.
    """
    if library is None:
        library = ReportLibrary(samples, image_ids, image_emb, image_ok, reports)
    for frame in (samples, library.samples):
        if set(frame.columns) - set(SAMPLE_COLUMNS):
            raise BridgeError(
                "nearest_report takes only sample_id, patient_id and split (no labels)"
            )
    pos = {sid: i for i, sid in enumerate(image_ids)}
    unit = _unit_rows(image_emb)
    sid = samples["sample_id"].astype(str).tolist()
    pid = samples["patient_id"].astype(str).to_numpy()
    cands = _candidates(library)
    matches: list[_Match] = []
    for i, s in enumerate(sid):
        if s not in pos:
            matches.append(_failed("no image embedding row"))
        elif not image_ok[pos[s]]:
            matches.append(_failed("image embedding not ok"))
        else:
            matches.append(_match(unit[pos[s]], pid[i], cands))
    return NearestReports(
        [m.text for m in matches],
        [m.source for m in matches],
        [m.status for m in matches],
        [m.reason for m in matches],
    )


def report_modality(modalities: Mapping[str, str], explicit: str | None = None) -> str:
    """The text modality whose reports the nearest-report bridge hands out."""
    if explicit:
        if modalities.get(explicit) != "text":
            raise BridgeError(f"report_modality {explicit!r} is not a text modality of the dataset")
        return explicit
    texts = [m for m, k in modalities.items() if k == "text"]
    if not texts:
        raise BridgeError(
            "nearest-report bridge: the dataset has no text modality to take reports from"
        )
    return texts[0]


@register_bridge("nearest-report")
class NearestReportBridge(Bridge):
    """Options: ``report_modality`` (default: the dataset's first text modality) and
    ``image_expert`` (whose cache the command line reads; here the cache comes as an input)."""

    def fill(self, inputs: BridgeInputs, rows: BridgeRows) -> dict[str, Any]:
        if inputs.image_cache is None:
            raise BridgeError(
                "nearest-report bridge needs the image expert's cache (--image-cache)"
            )
        cache = read_cache(inputs.image_cache)
        mmeta = inputs.manifest_meta
        rep_mod = report_modality(mmeta.modalities, self.cfg.get("report_modality"))
        samples = inputs.manifest[SAMPLE_COLUMNS].copy()
        library, library_dataset = None, mmeta.dataset
        if inputs.fit_manifest is not None:
            library, library_dataset = self.source_library(inputs, cache.meta.expert)
        found = nearest_report(
            samples,
            cache.sample_ids.astype(str).tolist(),
            cache.embeddings,
            cache.ok,
            inputs.manifest[rep_mod].tolist(),
            library=library,
        )
        for i in range(len(rows.sample_ids)):
            if inputs.present[i]:
                rows.set_row(i, found.text[i], found.source[i], found.status[i], found.reason[i])
        return {
            "image_expert": cache.meta.expert,
            "image_cache": str(inputs.image_cache),
            "report_modality": rep_mod,
            "library_dataset": library_dataset,
        }

    def source_library(self, inputs: BridgeInputs, expert: str) -> tuple[ReportLibrary, str]:
        """The source cohort's training reports (``inputs.fit_manifest``, not None here) and
        that cohort's name; its image cache must come from the same expert (one embedding
        space)."""
        if inputs.fit_image_cache is None:
            raise BridgeError("--fit-manifest needs --fit-image-cache (the source's image cache)")
        lib_df, lib_meta = read_manifest(inputs.fit_manifest)
        lib_cache = read_cache(inputs.fit_image_cache)
        if lib_cache.meta.expert != expert:
            raise BridgeError(
                f"library image cache is {lib_cache.meta.expert!r}, this cohort's is "
                f"{expert!r}: the nearest-neighbour search needs one embedding space"
            )
        lib_rep = report_modality(lib_meta.modalities, self.cfg.get("report_modality"))
        library = ReportLibrary(
            lib_df[SAMPLE_COLUMNS].copy(),
            lib_cache.sample_ids.astype(str).tolist(),
            lib_cache.embeddings,
            lib_cache.ok,
            lib_df[lib_rep].tolist(),
            same_cohort=lib_meta.dataset == inputs.manifest_meta.dataset,
        )
        return library, lib_meta.dataset
