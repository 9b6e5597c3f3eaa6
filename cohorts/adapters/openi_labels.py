"""OpenI (IU chest X-ray): the MeSH term -> finding map behind the 15 binary labels.

Each report carries the indexers' MeSH terms (``<MeSH><major>`` in NLM's XML, the ``MeSH``
column of the Kaggle table), written ``Heading/qualifier/qualifier…``, e.g.
``Opacity/lung/base/left/patchy`` or ``Lung/hypoinflation/mild``. A finding fires when one of
its rules matches a term: ``heading`` matches the heading (any qualifiers), ``heading/q``
needs qualifier ``q`` too. Matching ignores case and repeated blanks.

The 14 findings are the most frequent clinically meaningful ones over the 3,851 IU reports
(counts of reports in the comment), after merging synonyms; anatomy-only headings (``Lung``,
``Spine``, ``Aorta``) count only with the qualifier that makes them a finding. Left out:
devices (``Catheters, Indwelling``, ``Surgical Instruments``, … — not findings), technical
terms (``Technical Quality of Image Unsatisfactory``) and rarer findings (scoliosis 121,
nodule 119, elevated diaphragm 115, deformity 113, edema/congestion 93, fracture 83).
``No Indexing`` means the report was never indexed: its labels are unknown and the adapter
drops it. A report whose terms map to no finding (and is not ``normal``) has all labels 0.
"""

from __future__ import annotations

import re

# fmt: off
FINDINGS: dict[str, tuple[str, ...]] = {
    "normal": ("normal",),                                                          # 1379
    "degenerative_spine": ("thoracic vertebrae/degenerative", "spine/degenerative",
                           "spondylosis", "osteophyte"),                              # 554
    "opacity": ("opacity", "density"),                                              # 524
    "granuloma": ("calcified granuloma", "granulomatous disease", "granuloma"),      # 407
    "cardiomegaly": ("cardiomegaly", "cardiac shadow/enlarged"),                    # 364
    "atelectasis": ("pulmonary atelectasis",),                                      # 315
    "calcinosis": ("calcinosis",),                                                  # 292
    "hypoinflation": ("lung/hypoinflation",),                                       # 284
    "hyperinflation": ("lung/hyperdistention", "emphysema", "pulmonary emphysema",
                       "bullous emphysema", "pulmonary disease, chronic obstructive",
                       "diaphragm/flattened"),                                       # 269
    "tortuous_aorta": ("aorta/tortuous", "aorta, thoracic/tortuous"),               # 237
    "airspace_disease": ("airspace disease", "consolidation", "pneumonia", "infiltrate"),  # 200
    "pleural_effusion": ("pleural effusion", "costophrenic angle/blunted"),         # 187
    "scarring": ("cicatrix",),                                                      # 184
    "lung_markings": ("markings",),                                                 # 159
    "atherosclerosis": ("atherosclerosis",),                                        # 125
}
# fmt: on
LABELS: list[str] = list(FINDINGS)
UNINDEXED = "no indexing"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def parse_terms(terms: list[str] | str | None) -> list[tuple[str, frozenset[str]]]:
    """``"A/q1/q2;B"`` (or a list of terms) -> ``[("a", {"q1", "q2"}), ("b", set())]``."""
    if terms is None:
        return []
    if isinstance(terms, str):
        terms = terms.split(";")
    out = []
    for term in terms:
        parts = [_norm(p) for p in str(term).split("/")]
        if parts and parts[0]:
            out.append((parts[0], frozenset(p for p in parts[1:] if p)))
    return out


_RULES = [
    (name, [(_norm(r).partition("/")[0], _norm(r).partition("/")[2]) for r in rules])
    for name, rules in FINDINGS.items()
]


def findings(terms: list[str] | str | None) -> dict[str, int] | None:
    """The 15 binary labels of one report, or None when it was not indexed (labels unknown)."""
    parsed = parse_terms(terms)
    if not parsed or any(h == UNINDEXED for h, _ in parsed):
        return None
    out = {}
    for name, rules in _RULES:
        out[name] = int(any(h == rh and (not rq or rq in q) for h, q in parsed for rh, rq in rules))
    return out


def markdown_table() -> str:
    """The map as Markdown (docs/adapters.md embeds it)."""
    lines = ["| label | MeSH terms (heading or heading/qualifier) |", "|---|---|"]
    lines += [f"| `{name}` | {'; '.join(rules)} |" for name, rules in FINDINGS.items()]
    return "\n".join(lines)
