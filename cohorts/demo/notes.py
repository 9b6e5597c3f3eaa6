"""Synthetic clinical text: radiology reports, ICU notes, oncology notes.

Each concept has a phrase bank of positive mentions (with a severity word), hedged mentions
and negated mentions ("no pleural effusion", "effusion has resolved"). The note's evidence
for a concept picks the kind of mention: high -> positive, near the threshold -> hedged or
omitted, low -> often a pertinent negative that still contains the finding word. So a
bag-of-words model sees the word in positive and negative notes alike and is partly misled,
while an encoder that reads negation can tell them apart. Under cohort shift the wording
moves to alternative vocabulary (synonyms, abbreviations).

The phrase banks are data (:mod:`cohorts.demo.phrases_cxr`, :mod:`cohorts.demo.phrases_clinical`,
in the format of :mod:`cohorts.demo.phrases`); this module picks mentions from them and
assembles the notes. Every choice is a draw from the caller's generator, in a fixed order, so a
seed gives the same note.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cohorts.demo.phrases import SEVERITY, SIZE, Phrases
from cohorts.demo.phrases_clinical import (
    ICU_OPENERS,
    ICU_PHRASES,
    ICU_PLANS,
    ONCO_OPENERS,
    ONCO_PHRASES,
    ONCO_PLANS,
)
from cohorts.demo.phrases_cxr import (
    CXR_INDICATIONS,
    CXR_LIMITED,
    CXR_NORMAL_IMPRESSIONS,
    CXR_PHRASES,
)


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


@dataclass(frozen=True)
class ClinicalNote:
    """A kind of clinical note: its opener (drawn first), phrase banks, the line a poor-quality
    note has instead of a plan, and its plans. Called like :func:`radiology_report`."""

    opener: Callable[[np.random.Generator], str]
    banks: dict[str, Phrases]
    short: str
    plans: tuple[str, ...]

    def __call__(
        self,
        evidence: dict[str, float],
        thresholds: dict[str, float],
        rng: np.random.Generator,
        quality: float,
        shift: float = 0.0,
    ) -> str:
        opener = self.opener(rng)
        _, sentences = assemble(evidence, thresholds, self.banks, rng, quality, shift)
        if quality < 0.5:
            return " ".join([opener, self.short, *sentences])
        return " ".join([opener, *sentences, _pick(rng, self.plans)])


def _icu_opener(rng: np.random.Generator) -> str:
    age = int(rng.integers(25, 92))
    sex = _pick(rng, ("man", "woman"))
    return _pick(rng, ICU_OPENERS).format(age=age, sex=sex)


def _oncology_opener(rng: np.random.Generator) -> str:
    return _pick(rng, ONCO_OPENERS).format(
        age=int(rng.integers(38, 86)), sex=_pick(rng, ("man", "woman"))
    )


# ICU admission notes (MIMIC) and oncology notes (ccRCC)
icu_note = ClinicalNote(_icu_opener, ICU_PHRASES, "Full note to follow.", ICU_PLANS)
oncology_note = ClinicalNote(
    _oncology_opener, ONCO_PHRASES, "Details in outside records.", ONCO_PLANS
)
