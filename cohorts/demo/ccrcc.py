"""MMIST-ccRCC-like cohort: abdominal CT (NIfTI), H&E whole-slide image (TIFF), oncology note."""

from __future__ import annotations

import sys

import numpy as np

from cohorts.demo import ct, notes, wsi
from cohorts.demo.base import (
    KIND_CODES,
    CohortKind,
    Draw,
    Plan,
    logistic,
    patient_sites,
    samples_frame,
    settle_missingness,
)
from cohorts.demo.signal import DEFAULT_EVIDENCE, Concept, SignalSpec, sample_rng, sample_signal

NAME = "ccrcc"
MODALITIES = {"ct": "volume", "wsi": "slide", "note": "text"}
LABELS = ("vital_status_12m",)  # 1 = alive 12 months after diagnosis
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}

CONCEPTS = (
    Concept("burden", {"ct": 1.2, "note": 0.6}),
    Concept("necrosis", {"ct": 0.7, "wsi": 0.6, "note": 0.2}),
    Concept("metastasis", {"ct": 1.0, "note": 0.8}),
    Concept("grade", {"wsi": 1.0, "note": 0.35}),
    Concept("performance", {"note": 0.9}),
)
NAMES = tuple(c.name for c in CONCEPTS)
# all concepts lower survival
WEIGHTS = -np.array([[0.8, 0.6, 1.0, 0.9, 0.8]])
SPEC = SignalSpec(
    modalities=tuple(MODALITIES),
    concepts=CONCEPTS,
    labels=LABELS,
    weights=WEIGHTS,
    prevalence=(0.88,),
    shared=0.55,
    global_corr=0.4,
    scale=2.0,
    low_quality={"ct": 0.12, "wsi": 0.12, "note": 0.12},
    prevalence_shift=(-0.7,),
)
NOTE_THRESHOLDS = dict.fromkeys(NAMES, 0.4)


def plan(n_patients: int, seed: int, shift: float = 0.0, evidence: str = DEFAULT_EVIDENCE) -> Plan:
    rng = sample_rng(seed, KIND_CODES[NAME], 0)
    pidx = np.arange(n_patients)
    sig = sample_signal(SPEC, pidx, rng, shift, evidence)
    n = n_patients
    site = patient_sites(n_patients, rng, (0.5, 0.3, 0.2))
    z_met = sig.clean["note"][:, NAMES.index("metastasis")]
    z_perf = sig.clean["note"][:, NAMES.index("performance")]
    # no nephrectomy (hence no slide) mostly for metastatic or frail patients;
    # CT done elsewhere for some referrals; notes of one site not linked
    surgical = rng.random(n) > logistic(-1.7 + 0.9 * z_met + 0.6 * z_perf)
    present = {
        "ct": rng.random(n) > np.where(site == 2, 0.35, 0.06),
        "wsi": surgical,
        "note": rng.random(n) > np.where(site == 1, 0.2, 0.05),
    }
    settle_missingness(present, sig, SPEC.weights, NAME, seed, rng, "note")
    df = samples_frame(pidx, FRACTIONS, seed, sig.labels[:, 0], sig.labels, LABELS)
    return Plan(NAME, seed, shift, df, present, sig, {"site": site, "surgical": surgical})


def draw(d: Draw) -> str | None:
    """Render one present modality of a row; its manifest value."""
    e = dict(zip(NAMES, map(float, d.evidence), strict=True))
    rng, q, shift = d.rng, d.quality, d.plan.shift
    if d.modality == "note":
        return notes.oncology_note(e, NOTE_THRESHOLDS, rng, q, shift)
    if d.modality == "ct":
        vol = ct.render_ct(e["burden"], e["necrosis"], e["metastasis"], rng, q, shift)
        return d.write(".nii.gz", ct.write_nifti, vol)
    he = wsi.render_he(e["grade"], e["necrosis"], rng, q, shift)
    return d.write(".tiff", wsi.write_pyramidal_tiff, wsi.pyramid(he))


KIND = CohortKind.of(
    sys.modules[__name__],
    "binary",
    "MMIST-ccRCC-like: CT NIfTI + pyramidal H&E TIFF + oncology note; 12-month vital status",
)
