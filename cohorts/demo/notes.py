"""Synthetic clinical text: radiology reports, ICU notes, oncology notes.

Each concept has a phrase bank of positive mentions (with a severity word), hedged mentions
and negated mentions ("no pleural effusion", "effusion has resolved"). The note's evidence
for a concept picks the kind of mention: high -> positive, near the threshold -> hedged or
omitted, low -> often a pertinent negative that still contains the finding word. So a
bag-of-words model sees the word in positive and negative notes alike and is partly misled,
while an encoder that reads negation can tell them apart. Under cohort shift the wording
moves to alternative vocabulary (synonyms, abbreviations).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SEVERITY = (("mild", "minimal", "slight"), ("moderate",), ("severe", "marked", "extensive"))
SIZE = (("small", "trace", "tiny"), ("moderate", "moderate-sized"), ("large", "extensive"))


@dataclass(frozen=True)
class Phrases:
    """Templates for one concept; ``{sev}`` is a severity word, ``{side}`` a side, ``{num}`` a number."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    hedged: tuple[str, ...] = ()
    shifted_positive: tuple[str, ...] = ()
    shifted_negative: tuple[str, ...] = ()
    noun: str = ""  # short name for combined negatives ("No X, Y or Z.")
    numbers: tuple[float, ...] = (0.0, 0.0, 1.0, 0.0, 100.0)  # base, slope, step, lo, hi
    p_negative: float = 0.35  # chance a clearly absent concept gets a pertinent negative
    sizes: bool = False  # grade with size words (small/large) instead of mild/severe
    extra: dict = field(default_factory=dict)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _fill(template: str, rng: np.random.Generator, level: int, evidence: float, ph: Phrases) -> str:
    base, slope, step, lo, hi = ph.numbers
    num = round((base + slope * evidence + rng.normal(0, abs(slope) * 0.2)) / step) * step
    num = min(max(num, lo), hi)
    text = template.format(
        sev=_pick(rng, (SIZE if ph.sizes else SEVERITY)[level]),
        side=_pick(rng, ("right", "left", "bilateral")),
        num=f"{num:g}",
    )
    text = re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)
    return text[0].upper() + text[1:]


@dataclass
class Mention:
    kind: str  # "positive" | "hedged" | "negative"
    concept: str
    text: str


def mention(
    concept: str,
    ph: Phrases,
    evidence: float,
    threshold: float,
    rng: np.random.Generator,
    shift: float = 0.0,
) -> Mention | None:
    """One sentence (or None) describing ``concept`` given the note's evidence for it."""
    p_shift = min(0.85, 0.6 * shift)
    if evidence > threshold:
        level = 0 if evidence < threshold + 0.7 else (1 if evidence < threshold + 1.4 else 2)
        bank = (
            ph.shifted_positive if ph.shifted_positive and rng.random() < p_shift else ph.positive
        )
        return Mention("positive", concept, _fill(_pick(rng, bank), rng, level, evidence, ph))
    if evidence > threshold - 0.5:
        if ph.hedged and rng.random() < 0.5:
            return Mention("hedged", concept, _fill(_pick(rng, ph.hedged), rng, 0, evidence, ph))
        return None
    if rng.random() < ph.p_negative:
        bank = (
            ph.shifted_negative if ph.shifted_negative and rng.random() < p_shift else ph.negative
        )
        return Mention("negative", concept, _fill(_pick(rng, bank), rng, 0, evidence, ph))
    return None


def join_negatives(
    mentions: list[Mention], banks: dict[str, Phrases], rng: np.random.Generator
) -> list[str]:
    """Merge some pertinent negatives into one list sentence, as radiologists write them."""
    neg = [m for m in mentions if m.kind == "negative" and banks[m.concept].noun]
    out = [m.text for m in mentions if m not in neg]
    if len(neg) >= 3 and rng.random() < 0.6:
        k = int(rng.integers(2, len(neg) + 1))
        grouped, rest = neg[:k], neg[k:]
        nouns = [banks[m.concept].noun for m in grouped]
        lead = _pick(rng, ("No", "No evidence of", "There is no", "Negative for"))
        out.append(f"{lead} {', '.join(nouns[:-1])} or {nouns[-1]}.")
        out.extend(m.text for m in rest)
    else:
        out.extend(m.text for m in neg)
    return out


def assemble(
    evidence: dict[str, float],
    thresholds: dict[str, float],
    banks: dict[str, Phrases],
    rng: np.random.Generator,
    quality: float,
    shift: float = 0.0,
) -> tuple[list[Mention], list[str]]:
    """Mentions for all concepts, shuffled into a sentence list; poor quality keeps at most one."""
    names = list(evidence)
    order = [names[i] for i in rng.permutation(len(names))]
    mentions = [
        m for c in order if (m := mention(c, banks[c], evidence[c], thresholds[c], rng, shift))
    ]
    if quality < 0.5:  # short, uninformative note: at most one random mention survives
        mentions = mentions[: int(rng.integers(0, 2))]
    return mentions, join_negatives(mentions, banks, rng)


# ------------------------------------------------------------------------------------------
# chest radiograph findings (OpenI reports, MIMIC radiology impressions)

CXR_PHRASES: dict[str, Phrases] = {
    "cardiomegaly": Phrases(
        positive=(
            "{sev} cardiomegaly.",
            "{sev} enlargement of the cardiac silhouette.",
            "The cardiac silhouette is enlarged, {sev} cardiomegaly.",
            "Stable {sev} cardiomegaly.",
        ),
        negative=(
            "The heart is normal in size.",
            "No cardiomegaly.",
            "Heart size is within normal limits.",
            "Cardiomegaly has resolved.",
        ),
        hedged=("Borderline heart size.", "Heart size is upper limits of normal."),
        shifted_positive=(
            "Enlarged cardiac silhouette.",
            "Cardiothoracic ratio increased, {sev} enlargement.",
        ),
        shifted_negative=("Normal cardiac silhouette.",),
        noun="cardiomegaly",
    ),
    "opacity": Phrases(
        positive=(
            "{sev} {side} lung opacity.",
            "Patchy {sev} opacity in the {side} lower lobe.",
            "There are {sev} airspace opacities in the {side} lung.",
        ),
        negative=(
            "The lungs are clear.",
            "No focal airspace opacity.",
            "Previously seen opacity has resolved.",
        ),
        hedged=(
            "Possible subtle opacity in the {side} base.",
            "Questionable {side} basilar opacity.",
        ),
        shifted_positive=("{sev} {side} airspace disease.", "Hazy {side} infiltrate."),
        shifted_negative=("No infiltrate.",),
        noun="focal airspace opacity",
    ),
    "atelectasis": Phrases(
        positive=(
            "{sev} {side} basilar atelectasis.",
            "Linear atelectasis at the {side} base.",
            "Platelike atelectasis in the {side} lower lobe.",
        ),
        negative=("No atelectasis.", "Atelectasis has resolved."),
        hedged=("Minimal {side} basilar atelectasis versus scarring.",),
        shifted_positive=("{sev} {side} volume loss.", "Subsegmental collapse at the {side} base."),
        noun="atelectasis",
    ),
    "effusion": Phrases(
        positive=(
            "{sev} {side} pleural effusion.",
            "There is a {sev} {side} pleural effusion.",
            "Blunting of the {side} costophrenic angle consistent with {sev} effusion.",
        ),
        negative=(
            "No pleural effusion.",
            "Previously seen effusion has resolved.",
            "Pleural effusion is not seen.",
            "The costophrenic angles are sharp.",
        ),
        hedged=("Possible trace {side} effusion.", "Cannot exclude a small {side} effusion."),
        shifted_positive=("{sev} {side} pleural fluid.", "{side} hydrothorax, {sev}."),
        shifted_negative=("No pleural fluid.",),
        sizes=True,
        noun="pleural effusion",
    ),
    "nodule": Phrases(
        positive=(
            "{num} mm nodule in the {side} upper lobe.",
            "Rounded {num} mm {side} pulmonary nodule.",
            "Several small {side} lung nodules, the largest {num} mm.",
        ),
        negative=(
            "No pulmonary nodules.",
            "No suspicious nodule or mass.",
            "Previously described nodule is no longer seen.",
        ),
        hedged=("Possible small nodule versus nipple shadow.",),
        shifted_positive=("{num} mm nodular density in the {side} lung.",),
        sizes=True,
        noun="pulmonary nodule",
        numbers=(6.0, 3.0, 1.0, 4.0, 30.0),
        p_negative=0.35,
    ),
    "granuloma": Phrases(
        positive=(
            "Calcified granulomas in the {side} lung.",
            "Scattered calcified granulomas.",
            "Small calcified granuloma in the {side} mid lung.",
        ),
        negative=("No calcified granulomas.",),
        hedged=("Punctate density, possibly a granuloma.",),
        shifted_positive=(
            "Sequela of prior granulomatous disease.",
            "Calcified nodules from old granulomatous infection.",
        ),
        noun="calcified granuloma",
        p_negative=0.15,
    ),
    "emphysema": Phrases(
        positive=(
            "Hyperinflated lungs with {sev} emphysema.",
            "{sev} emphysematous changes.",
            "Flattened hemidiaphragms consistent with emphysema.",
        ),
        negative=("No emphysema.", "Lung volumes are normal.", "No hyperinflation."),
        hedged=("Lungs are mildly hyperexpanded.",),
        shifted_positive=("Changes of COPD with {sev} hyperinflation.",),
        noun="hyperinflation",
        p_negative=0.3,
    ),
    "edema": Phrases(
        positive=(
            "{sev} pulmonary edema.",
            "{sev} interstitial edema with Kerley B lines.",
            "Perihilar haziness consistent with {sev} edema.",
        ),
        negative=(
            "No pulmonary edema.",
            "Pulmonary edema has resolved.",
            "No vascular congestion.",
        ),
        hedged=("Possible mild vascular congestion.",),
        shifted_positive=("{sev} fluid overload.", "{sev} CHF pattern."),
        shifted_negative=("No CHF.",),
        noun="pulmonary edema",
    ),
    "consolidation": Phrases(
        positive=(
            "{sev} {side} lower lobe consolidation.",
            "Dense {side} consolidation concerning for pneumonia.",
            "{side} lobar consolidation, {sev}.",
        ),
        negative=("No focal consolidation.", "Consolidation has resolved.", "No pneumonia."),
        hedged=("Consolidation cannot be excluded at the {side} base.",),
        shifted_positive=("{side} lobar pneumonia.", "{sev} {side} airspace consolidation."),
        sizes=True,
        noun="focal consolidation",
    ),
    "pneumothorax": Phrases(
        positive=(
            "{sev} {side} apical pneumothorax.",
            "There is a {sev} {side} pneumothorax.",
            "{side} pneumothorax with visible pleural line.",
        ),
        negative=("No pneumothorax.", "Pneumothorax has resolved.", "There is no pneumothorax."),
        hedged=("Possible tiny {side} apical pneumothorax.",),
        shifted_positive=("{sev} {side} PTX.",),
        shifted_negative=("No PTX.",),
        sizes=True,
        noun="pneumothorax",
        p_negative=0.55,
    ),
    "fibrosis": Phrases(
        positive=(
            "{sev} reticular interstitial opacities consistent with fibrosis.",
            "Chronic {sev} interstitial fibrosis at the bases.",
            "Coarse reticular markings, {sev} fibrosis.",
        ),
        negative=("No interstitial lung disease.", "No fibrosis."),
        hedged=("Possible early interstitial changes.",),
        shifted_positive=("{sev} ILD pattern.", "Honeycombing at the bases."),
        noun="interstitial disease",
        p_negative=0.25,
    ),
    "scoliosis": Phrases(
        positive=(
            "{sev} thoracic scoliosis.",
            "Dextroconvex scoliosis of the thoracic spine, {sev}.",
            "{sev} curvature of the thoracic spine.",
        ),
        negative=("The thoracic spine is straight.", "No scoliosis."),
        shifted_positive=("{sev} spinal curvature.",),
        p_negative=0.2,
    ),
    "hernia": Phrases(
        positive=(
            "{sev} hiatal hernia.",
            "Retrocardiac air-fluid level consistent with hiatal hernia.",
            "Large hiatal hernia.",
        ),
        negative=("No hiatal hernia.",),
        shifted_positive=("Retrocardiac gastric herniation.",),
        sizes=True,
        p_negative=0.15,
    ),
    "device": Phrases(
        positive=(
            "Right internal jugular central line with tip in the SVC.",
            "Left chest wall pacemaker with leads in the right heart.",
            "Endotracheal tube and enteric tube in place.",
        ),
        negative=("No lines or tubes.", "Central line has been removed."),
        shifted_positive=("Indwelling catheter in place.", "Support devices unchanged."),
        p_negative=0.2,
    ),
}

CXR_INDICATIONS = (
    "Chest pain.",
    "Shortness of breath.",
    "Cough.",
    "Preoperative evaluation.",
    "Fever.",
    "Follow-up.",
    "Dyspnea on exertion.",
    "Routine screening.",
)
CXR_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary abnormality.",
    "Normal chest.",
    "No active disease.",
    "No acute cardiopulmonary process.",
)
CXR_LIMITED = (
    "Limited study due to patient rotation.",
    "Portable technique limits evaluation.",
    "Study limited by low lung volumes.",
    "Comparison not available.",
    "See prior report.",
)


def radiology_report(
    evidence: dict[str, float],
    thresholds: dict[str, float],
    rng: np.random.Generator,
    quality: float,
    shift: float = 0.0,
    sections: bool = True,
) -> str:
    """An OpenI-style report (indication, findings, impression) from finding evidence."""
    mentions, sentences = assemble(evidence, thresholds, CXR_PHRASES, rng, quality, shift)
    if quality < 0.5:
        sentences = [_pick(rng, CXR_LIMITED), *sentences]
    positives = [m for m in mentions if m.kind == "positive"]
    if positives:
        impression = " ".join(m.text for m in positives[:2])
    else:
        impression = _pick(rng, CXR_NORMAL_IMPRESSIONS)
    findings = " ".join(sentences) if sentences else "Unremarkable."
    if not sections:
        return f"{findings} Impression: {impression}"
    comparison = _pick(rng, ("None.", "Prior chest radiograph.", "None available."))
    return f"INDICATION: {_pick(rng, CXR_INDICATIONS)} COMPARISON: {comparison} FINDINGS: {findings} IMPRESSION: {impression}"


# ------------------------------------------------------------------------------------------
# ICU admission notes (MIMIC)

ICU_PHRASES: dict[str, Phrases] = {
    "resp": Phrases(
        positive=(
            "{sev} hypoxemic respiratory failure requiring high-flow oxygen.",
            "Increased work of breathing, placed on BiPAP.",
            "Intubated for {sev} respiratory distress.",
            "Tachypneic with {sev} oxygen requirement.",
        ),
        negative=(
            "Breathing comfortably on room air.",
            "No respiratory distress.",
            "Denies shortness of breath.",
            "Respiratory failure has resolved.",
        ),
        hedged=("Mild dyspnea on exertion.",),
        shifted_positive=("{sev} AHRF on HFNC.", "Required NIV for {sev} dyspnea."),
        shifted_negative=("Saturating well on RA.",),
    ),
    "cardiac": Phrases(
        positive=(
            "Hypotensive, started on norepinephrine.",
            "Known heart failure with reduced ejection fraction, EF {num}%.",
            "{sev} cardiogenic shock.",
            "Troponin elevated, {sev} demand ischemia.",
        ),
        negative=(
            "Hemodynamically stable off pressors.",
            "No history of heart failure.",
            "Denies chest pain.",
            "No signs of shock.",
        ),
        hedged=("Borderline blood pressures, monitoring.",),
        shifted_positive=("HFrEF, EF {num}%.", "On levophed for {sev} shock."),
        shifted_negative=("HD stable.",),
        numbers=(40.0, -8.0, 5.0, 10.0, 45.0),
    ),
    "renal": Phrases(
        positive=(
            "Acute kidney injury, creatinine rising.",
            "{sev} AKI with decreased urine output.",
            "Oliguric, nephrology consulted for possible dialysis.",
        ),
        negative=(
            "Renal function at baseline.",
            "No history of kidney disease.",
            "Good urine output.",
            "AKI has resolved.",
        ),
        hedged=("Creatinine slightly above baseline.",),
        shifted_positive=("{sev} acute renal failure.",),
        shifted_negative=("Cr at baseline.",),
    ),
    "infection": Phrases(
        positive=(
            "Febrile, blood cultures drawn, started on vancomycin and cefepime for presumed sepsis.",
            "{sev} sepsis from a urinary source.",
            "Leukocytosis with {sev} pneumonia, on antibiotics.",
        ),
        negative=(
            "Afebrile, no signs of infection.",
            "Cultures negative, antibiotics stopped.",
            "No evidence of sepsis.",
        ),
        hedged=("Low-grade temperature, cultures pending.",),
        shifted_positive=("{sev} SIRS, broad-spectrum abx started.",),
        shifted_negative=("No SIRS criteria.",),
    ),
    "chronic": Phrases(
        positive=(
            "Past medical history significant for COPD, diabetes and CKD stage {num}.",
            "Multiple comorbidities including heart failure and COPD.",
            "{sev} chronic illness burden, on home oxygen.",
        ),
        negative=(
            "No significant past medical history.",
            "Previously healthy.",
            "No chronic lung disease.",
        ),
        hedged=("History of hypertension.",),
        shifted_positive=("PMH: COPD, DM2, CKD {num}.",),
        shifted_negative=("No PMH.",),
        numbers=(3.0, 0.6, 1.0, 3.0, 5.0),
    ),
    "social": Phrases(
        positive=(
            "Lives alone with limited social support.",
            "History of missed follow-up appointments and poor medication adherence.",
            "Unstable housing; social work consulted.",
            "Active alcohol use.",
        ),
        negative=(
            "Lives with family who are closely involved in care.",
            "Denies alcohol or drug use.",
            "Good follow-up with primary care.",
        ),
        shifted_positive=("Homeless, poor adherence.",),
        p_negative=0.5,
    ),
}

ICU_OPENERS = (
    "{age} year old {sex} admitted to the ICU from the emergency department.",
    "{age}-year-old {sex} transferred to the MICU.",
    "Patient is a {age} yo {sex} admitted for further management.",
)


def icu_note(
    evidence: dict[str, float],
    thresholds: dict[str, float],
    rng: np.random.Generator,
    quality: float,
    shift: float = 0.0,
) -> str:
    age = int(rng.integers(25, 92))
    sex = _pick(rng, ("man", "woman"))
    opener = _pick(rng, ICU_OPENERS).format(age=age, sex=sex)
    _, sentences = assemble(evidence, thresholds, ICU_PHRASES, rng, quality, shift)
    if quality < 0.5:
        return " ".join([opener, "Full note to follow.", *sentences])
    plan = _pick(
        rng,
        (
            "Plan: continue current management.",
            "Plan discussed with the team.",
            "Will reassess in the morning.",
        ),
    )
    return " ".join([opener, *sentences, plan])


# ------------------------------------------------------------------------------------------
# oncology notes (ccRCC)

ONCO_PHRASES: dict[str, Phrases] = {
    "burden": Phrases(
        positive=(
            "Staging CT shows a {num} cm renal mass with perinephric fat invasion.",
            "Clinical stage T3 disease with renal vein involvement.",
            "Bulky {num} cm primary tumour, {sev} locoregional extent.",
        ),
        negative=(
            "Small organ-confined renal mass.",
            "No lymphadenopathy.",
            "Tumour confined to the kidney, stage T1.",
        ),
        hedged=("Mass abuts but does not clearly invade the renal sinus.",),
        shifted_positive=("cT3a, {num} cm RCC.",),
        shifted_negative=("cT1a lesion.",),
        numbers=(6.0, 2.5, 0.5, 4.0, 18.0),
    ),
    "metastasis": Phrases(
        positive=(
            "Imaging shows multiple liver metastases.",
            "Metastatic disease to the lungs and liver.",
            "{sev} metastatic burden.",
        ),
        negative=(
            "No evidence of distant metastases.",
            "Staging negative for metastatic disease.",
            "No liver or lung lesions.",
        ),
        hedged=("Indeterminate subcentimetre liver lesion.",),
        shifted_positive=("Stage IV, M1 disease.",),
        shifted_negative=("M0.",),
    ),
    "grade": Phrases(
        positive=(
            "Biopsy shows high-grade clear cell carcinoma, ISUP grade {num}.",
            "Sarcomatoid features on biopsy.",
            "{sev} nuclear pleomorphism on core biopsy.",
        ),
        negative=(
            "Biopsy shows low-grade clear cell carcinoma.",
            "No sarcomatoid or rhabdoid features.",
            "ISUP grade 1 on biopsy.",
        ),
        shifted_positive=("Fuhrman grade {num} ccRCC.",),
        numbers=(3.0, 0.5, 1.0, 3.0, 4.0),
        p_negative=0.5,
    ),
    "performance": Phrases(
        positive=(
            "ECOG performance status {num}.",
            "Reports {sev} fatigue and 8 kg weight loss.",
            "Anemic with hemoglobin of 9.1 g/dL.",
            "Hypercalcemia noted on admission labs.",
        ),
        negative=(
            "ECOG 0, fully active.",
            "Denies weight loss or fatigue.",
            "Hemoglobin within normal limits.",
        ),
        hedged=("Some fatigue but independent in daily activities.",),
        shifted_positive=("PS {num}, {sev} cachexia.",),
        shifted_negative=("KPS 100%.",),
        numbers=(2.0, 0.8, 1.0, 1.0, 4.0),
    ),
    "necrosis": Phrases(
        positive=(
            "Tumour shows {sev} central necrosis.",
            "Heterogeneous enhancement with necrotic areas.",
        ),
        negative=("Homogeneously enhancing lesion without necrosis.", "No tumour necrosis."),
        p_negative=0.3,
    ),
}

ONCO_OPENERS = (
    "{age}-year-old {sex} with newly diagnosed clear cell renal cell carcinoma.",
    "{age} yo {sex} referred to urology for a renal mass.",
    "Oncology consultation for a {age}-year-old {sex} with a renal tumour.",
)


def oncology_note(
    evidence: dict[str, float],
    thresholds: dict[str, float],
    rng: np.random.Generator,
    quality: float,
    shift: float = 0.0,
) -> str:
    opener = _pick(rng, ONCO_OPENERS).format(
        age=int(rng.integers(38, 86)), sex=_pick(rng, ("man", "woman"))
    )
    _, sentences = assemble(evidence, thresholds, ONCO_PHRASES, rng, quality, shift)
    if quality < 0.5:
        return " ".join([opener, "Details in outside records.", *sentences])
    plan = _pick(
        rng,
        (
            "Discussed at tumour board.",
            "Plan for nephrectomy.",
            "Will discuss systemic therapy options.",
        ),
    )
    return " ".join([opener, *sentences, plan])
