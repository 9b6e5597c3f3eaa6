"""Phrase banks of chest radiograph findings (OpenI reports, MIMIC radiology impressions)."""

from __future__ import annotations

from cohorts.demo.phrases import Phrases

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
