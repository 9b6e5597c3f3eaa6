"""MIMIC-IV-MM-like cohort: frontal + lateral CXR, a clinical note and 48 h of ICU time series."""

from __future__ import annotations

import sys

import numpy as np

from cohorts.demo import cxr, ehr, notes
from cohorts.demo.base import (
    KIND_CODES,
    CohortKind,
    Draw,
    Plan,
    logistic,
    patient_sites,
    samples_frame,
    settle_missingness,
    severity,
)
from cohorts.demo.signal import DEFAULT_EVIDENCE, Concept, SignalSpec, sample_rng, sample_signal

NAME = "mimic"
MODALITIES = {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"}
LABELS = ("mortality", "long_stay", "readmission")
FRACTIONS = {"train": 0.72, "val": 0.13, "test": 0.15}
P_SECOND_ADMISSION = 0.22

# concept -> how strongly each modality's view of it enters the outcome logits
CONCEPTS = (
    Concept("resp", {"frontal": 0.7, "lateral": 0.45, "note": 0.6, "ehr": 0.9}),
    Concept("cardiac", {"frontal": 0.6, "lateral": 0.45, "note": 0.6, "ehr": 0.8}),
    Concept("renal", {"note": 0.5, "ehr": 1.0}),
    Concept("infection", {"frontal": 0.3, "note": 0.8, "ehr": 0.8}),
    Concept("chronic", {"frontal": 0.6, "lateral": 0.45, "note": 1.0}),
    Concept("social", {"note": 1.0}),
    Concept("trajectory", {"ehr": 1.0}),
    Concept("support", {"frontal": 0.8, "lateral": 0.5}),
)
NAMES = tuple(c.name for c in CONCEPTS)
#                      resp cardiac renal infect chronic social traj support
WEIGHTS = np.array([
    [0.7, 0.7, 0.5, 0.3, 0.3, 0.0, 0.9, 0.5],  # mortality
    [0.5, 0.2, 0.4, 0.8, 0.2, 0.2, 0.2, 0.7],  # long_stay
    [0.1, 0.3, 0.3, 0.0, 0.9, 0.9, -0.2, 0.0],  # readmission
])  # fmt: skip
SPEC = SignalSpec(
    modalities=tuple(MODALITIES),
    concepts=CONCEPTS,
    labels=LABELS,
    weights=WEIGHTS,
    prevalence=(0.17, 0.33, 0.22),
    shared=0.6,
    global_corr=0.4,
    scale=2.0,
    low_quality={"frontal": 0.12, "lateral": 0.12, "note": 0.12, "ehr": 0.10},
    prevalence_shift=(0.7, 0.6, 0.6),
)
NOTE_CONCEPTS = ("resp", "cardiac", "renal", "infection", "chronic", "social")
NOTE_THRESHOLDS = dict.fromkeys(NOTE_CONCEPTS, 0.4)


def plan(n_patients: int, seed: int, shift: float = 0.0, evidence: str = DEFAULT_EVIDENCE) -> Plan:
    rng = sample_rng(seed, KIND_CODES[NAME], 0)
    n_adm = 1 + (rng.random(n_patients) < P_SECOND_ADMISSION)
    pidx = np.repeat(np.arange(n_patients), n_adm)
    sig = sample_signal(SPEC, pidx, rng, shift, evidence)
    n = len(pidx)
    # ICU length of stay (hours) follows the long-stay logit; short stays have no EHR extract
    long_stay = sum(sig.contributions.values())[:, 1]  # zero-mean share of the long-stay logit
    stay_h = np.exp(4.2 + 0.3 * long_stay + 0.6 * rng.standard_normal(n))
    site = patient_sites(n_patients, rng, (0.4, 0.3, 0.15, 0.15))[pidx]
    sick = sig.sickness
    present = {
        "frontal": rng.random(n) > logistic(-2.2 - 0.6 * sick),  # fewer films for the less sick
        "lateral": rng.random(n) > logistic(-1.0 + 0.9 * sick),  # portable AP only when sick
        "note": rng.random(n) > np.where(site == 3, 0.8, 0.04),  # one site's notes not linked
        "ehr": (stay_h >= 12) & (rng.random(n) > 0.03),
    }
    settle_missingness(present, sig, SPEC.weights, NAME, seed, rng, "ehr")
    df = samples_frame(pidx, FRACTIONS, seed, sig.labels[:, 0], sig.labels, LABELS, prefix="A")
    return Plan(NAME, seed, shift, df, present, sig, {"stay_hours": stay_h, "site": site})


def _cxr_severity(e: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    resp, card, inf, chron, sup = (
        e.get(k, 0.0) for k in ("resp", "cardiac", "infection", "chronic", "support")
    )
    sev = {
        "opacity": severity(resp, 0.3),
        "edema": severity(0.6 * card + 0.4 * resp, 0.5),
        "effusion": severity(card, 0.6),
        "atelectasis": severity(resp, 1.0),
        "consolidation": severity(inf + 0.3 * resp, 0.8),
        "cardiomegaly": severity(0.5 * card + 0.5 * chron, 0.5),
        "emphysema": severity(chron, 0.8),
        "device": severity(sup, -0.2),
        "cardiac_size": 0.5 * (card + chron),
        "inflation": 0.5 * chron,
        # incidental findings unrelated to the outcomes
        "granuloma": float(rng.random() < 0.08),
        "nodule": float(rng.random() < 0.05),
        "scoliosis": float(rng.random() < 0.05) * rng.uniform(0.3, 1.5),
    }
    return {k: float(v) for k, v in sev.items()}


def draw(d: Draw) -> str | None:
    """Render one present modality of a row; its manifest value."""
    e = dict(zip(NAMES, map(float, d.evidence), strict=True))
    shift = d.plan.shift
    if d.modality == "note":
        ev = {k: e[k] for k in NOTE_CONCEPTS}
        return notes.icu_note(ev, NOTE_THRESHOLDS, d.rng, d.quality, shift)
    if d.modality == "ehr":
        df = ehr.simulate_stay(e, int(d.plan.extra["stay_hours"][d.row]), d.rng, d.quality, shift)
        return d.write(".parquet", ehr.write_parquet, df)
    img = cxr.render_cxr(d.modality, _cxr_severity(e, d.rng), d.rng, d.quality, shift)
    return d.write(".png", cxr.write_png, img)


KIND = CohortKind.of(
    sys.modules[__name__],
    "binary",
    "MIMIC-IV-MM-like: CXR PNGs, ICU note, 48 h x 46-variable EHR Parquet; 3 outcomes",
)
