"""OpenI-like cohort: frontal + lateral chest radiographs and a radiology report; 15 findings."""

from __future__ import annotations

import sys
from statistics import NormalDist

import numpy as np

from cohorts.demo import cxr, notes
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

NAME = "openi"
MODALITIES = {"frontal": "image", "lateral": "image", "report": "text"}
FINDINGS = cxr.FINDINGS
# long-tailed prevalences of the 14 findings; "normal" (no finding) comes out at ~25-30 %
PREVALENCE = dict(
    cardiomegaly=0.20, opacity=0.17, atelectasis=0.12, effusion=0.11, nodule=0.10, granuloma=0.13,
    emphysema=0.08, edema=0.07, consolidation=0.07, pneumothorax=0.06, fibrosis=0.06,
    scoliosis=0.08, hernia=0.06, device=0.09,
)  # fmt: skip
LABELS = ("normal", *FINDINGS)
FRACTIONS = {"train": 0.65, "val": 0.15, "test": 0.20}
P_SECOND_STUDY = 0.3
VIEWS = {"frontal": 1.0, "lateral": 0.75, "report": 1.1}
# the lateral view shows some findings better (posterior effusion, retrocardiac hernia) and
# some hardly at all (scoliosis, small nodules)
LATERAL_VIEW = dict.fromkeys(FINDINGS, 0.75) | {
    "effusion": 1.0,
    "hernia": 1.0,
    "scoliosis": 0.0,
    "nodule": 0.4,
    "granuloma": 0.5,
}

SPEC = SignalSpec(
    modalities=tuple(MODALITIES),
    concepts=tuple(Concept(f, VIEWS | {"lateral": LATERAL_VIEW[f]}) for f in FINDINGS),
    labels=FINDINGS,
    weights=np.eye(len(FINDINGS)),
    prevalence=tuple(PREVALENCE[f] for f in FINDINGS),
    shared=0.5,
    global_corr=0.4,
    scale=3.0,
    low_quality={"frontal": 0.12, "lateral": 0.15, "report": 0.12},
)


def _thresholds(mult: float) -> dict[str, float]:
    """Evidence above which a finding shows: in about ``mult`` x its prevalence of samples."""
    return {f: NormalDist().inv_cdf(1 - min(0.45, mult * PREVALENCE[f])) for f in FINDINGS}


IMAGE_THRESHOLDS = _thresholds(3.0)  # drawn (graded by severity)
TEXT_THRESHOLDS = _thresholds(2.5)  # written as present


def plan(n_patients: int, seed: int, shift: float = 0.0, evidence: str = DEFAULT_EVIDENCE) -> Plan:
    rng = sample_rng(seed, KIND_CODES[NAME], 0)
    n_studies = 1 + (rng.random(n_patients) < P_SECOND_STUDY)
    pidx = np.repeat(np.arange(n_patients), n_studies)
    sig = sample_signal(SPEC, pidx, rng, shift, evidence)
    findings = sig.labels
    labels = np.concatenate([(findings.sum(1) == 0)[:, None].astype(np.int8), findings], axis=1)
    n = len(pidx)
    # structured missingness: sicker patients get portable AP films without a lateral view;
    # one site rarely sends its reports; a few studies are lateral-only
    site = patient_sites(n_patients, rng, (0.45, 0.35, 0.2))[pidx]
    present = {
        "frontal": rng.random(n) > 0.05,
        "lateral": rng.random(n) > logistic(-1.7 + 0.9 * sig.sickness),
        "report": rng.random(n) > np.where(site == 2, 0.55, 0.03),
    }
    settle_missingness(present, sig, SPEC.weights, NAME, seed, rng, "frontal")
    df = samples_frame(pidx, FRACTIONS, seed, 1 - labels[:, 0], labels, LABELS)
    return Plan(NAME, seed, shift, df, present, sig, {"site": site})


def _image_severity(e: np.ndarray) -> dict[str, float]:
    thr = np.array([IMAGE_THRESHOLDS[f] for f in FINDINGS])
    sev = severity(e, thr, sharpness=3.0)
    out = {f: float(s) for f, s in zip(FINDINGS, sev, strict=True)}
    out["cardiac_size"] = float(e[FINDINGS.index("cardiomegaly")])
    out["inflation"] = float(e[FINDINGS.index("emphysema")])
    return out


def draw(d: Draw) -> str | None:
    """Render one present modality of a row; its manifest value."""
    if d.modality == "report":
        ev = {f: float(v) for f, v in zip(FINDINGS, d.evidence, strict=True)}
        return notes.radiology_report(ev, TEXT_THRESHOLDS, d.rng, d.quality, d.plan.shift)
    sev = _image_severity(d.evidence)
    img = cxr.render_cxr(d.modality, sev, d.rng, d.quality, d.plan.shift)
    return d.write(".png", cxr.write_png, img)


KIND = CohortKind.of(
    sys.modules[__name__],
    "multilabel",
    "OpenI-like: frontal/lateral CXR PNG + radiology report, 15 long-tailed findings",
)
