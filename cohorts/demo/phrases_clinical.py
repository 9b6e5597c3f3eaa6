"""Phrase banks of clinical notes: ICU admission notes (MIMIC) and oncology notes (ccRCC)."""

from __future__ import annotations

from cohorts.demo.phrases import Phrases

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
ICU_PLANS = (
    "Plan: continue current management.",
    "Plan discussed with the team.",
    "Will reassess in the morning.",
)

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
ONCO_PLANS = (
    "Discussed at tumour board.",
    "Plan for nephrectomy.",
    "Will discuss systemic therapy options.",
)
