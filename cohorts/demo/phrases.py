"""The phrase-bank format of the synthetic notes: one :class:`Phrases` per concept.

Each concept has positive mentions (with a severity or size word), hedged mentions and negated
mentions ("no pleural effusion", "effusion has resolved"), and the alternative vocabulary
(synonyms, abbreviations) its wording moves to under cohort shift. The banks are
:mod:`cohorts.demo.phrases_cxr` and :mod:`cohorts.demo.phrases_clinical`; the notes are written
from them by :mod:`cohorts.demo.notes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
