"""Protocol setting names: the one parser of the ``{protocol}`` wildcard (torch-free).

A setting is one string, usable as the Snakemake ``{protocol}`` wildcard and as the run folder
name (``results/{dataset}/runs/{setting}/{method}/``): ``full``,
``[train_|test_]drop_one-<modality>-<r>``, ``[train_|test_]random-<p>``,
``[train_|test_]mnar-label|severity-<p>`` and ``[train_|test_]replay-<p>``.
:func:`format_protocol` builds one and :func:`parse_protocol` rejects non-canonical spellings,
so one setting has one folder. What each kind does to the data is in :mod:`fusion.protocols`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medmix.errors import UserError

PROTOCOLS = ("full", "drop_one", "random", "mnar", "replay")
KINDS = PROTOCOLS[1:]
SCOPES = ("train", "test", "all")
SCOPE_SPLITS = {
    "train": ("train", "val"),
    "test": ("test", "external"),
    "all": ("train", "val", "test", "external"),
}
MNAR_SCORES = ("label", "severity")

# The paper's grid (§4.3): drop-one rates, and the random-drop rates at train / test time.
PAPER_DROP_ONE_RATES = (0.3, 0.5, 0.7)
PAPER_TRAIN_RANDOM_RATES = (0.3, 0.5, 0.7)
PAPER_TEST_RANDOM_RATES = (0.1, 0.3, 0.5, 0.7)

_MODALITY = r"[a-z0-9][a-z0-9_]*"
_RATE = r"[0-9]+(?:\.[0-9]+)?"
_PATTERNS = {
    "drop_one": re.compile(rf"^(?:(train|test)_)?drop_one-({_MODALITY})-({_RATE})$"),
    "random": re.compile(rf"^(?:(train|test)_)?random-({_RATE})$"),
    "mnar": re.compile(rf"^(?:(train|test)_)?mnar-(label|severity)-({_RATE})$"),
    "replay": re.compile(rf"^(?:(train|test)_)?replay-({_RATE})$"),
}

# Every setting string, as one regex without groups: the ``{protocol}`` wildcard of the train
# rule (so the ablation and external-validation run folders are never taken for a setting).
SETTING_REGEX = (
    rf"full|(?:(?:train|test)_)?(?:drop_one-{_MODALITY}-{_RATE}|random-{_RATE}"
    rf"|mnar-(?:label|severity)-{_RATE}|replay-{_RATE})"
)


# Display names of modalities in tables and figures (the paper's spelling).
MODALITY_LABELS = {
    "frontal": "Front CXR",
    "lateral": "Lateral CXR",
    "side": "Side CXR",
    "report": "Note",
    "note": "Note",
    "ehr": "EHR",
    "ct": "CT",
    "wsi": "WSI",
}


def modality_label(m: str) -> str:
    return MODALITY_LABELS.get(m, m)


class ProtocolError(UserError, ValueError):
    """A protocol setting that cannot be parsed, or does not fit the data."""


def format_rate(rate: float) -> str:
    """The canonical spelling of a rate: ``0.3``, ``0.05``, ``1.0``."""
    rate = float(rate)
    if not 0.0 <= rate <= 1.0 or not math.isfinite(rate):
        raise ProtocolError(f"rate {rate} is not in [0, 1]")
    text = f"{rate:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


@dataclass(frozen=True)
class ProtocolSpec:
    """A parsed protocol setting."""

    kind: str  # full | drop_one | random | mnar | replay
    scope: str = "all"  # train | test | all (full: all, nothing is dropped)
    rate: float = 0.0
    modality: str | None = None  # drop_one
    score: str | None = None  # mnar: label | severity

    @property
    def name(self) -> str:
        return format_protocol(self.kind, self.scope, self.rate, self.modality, self.score)

    @property
    def family(self) -> str:
        """The paper's family name: ``train_drop_one``, ``test_random``, ``mnar``, ``full``…"""
        if self.kind == "full":
            return "full"
        return self.kind if self.scope == "all" else f"{self.scope}_{self.kind}"

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits whose samples the protocol may corrupt."""
        return () if self.kind == "full" else SCOPE_SPLITS[self.scope]

    @property
    def touches_training(self) -> bool:
        return any(s in ("train", "val") for s in self.splits)


def format_protocol(
    kind: str,
    scope: str = "all",
    rate: float = 0.0,
    modality: str | None = None,
    score: str | None = None,
) -> str:
    """Build a setting string, e.g. ``format_protocol("drop_one", "test", 0.5, "note")``."""
    if kind == "full":
        return "full"
    if kind not in KINDS:
        raise ProtocolError(f"unknown protocol kind {kind!r} (have {PROTOCOLS})")
    if scope not in SCOPES:
        raise ProtocolError(f"unknown scope {scope!r} (have {SCOPES})")
    prefix = "" if scope == "all" else f"{scope}_"
    r = format_rate(rate)
    if kind == "drop_one":
        if not modality or not re.fullmatch(_MODALITY, modality):
            raise ProtocolError(f"drop_one needs a modality name, got {modality!r}")
        return f"{prefix}drop_one-{modality}-{r}"
    if kind == "mnar":
        if score not in MNAR_SCORES:
            raise ProtocolError(f"mnar needs a score in {MNAR_SCORES}, got {score!r}")
        return f"{prefix}mnar-{score}-{r}"
    return f"{prefix}{kind}-{r}"


def parse_protocol(name: str) -> ProtocolSpec:
    """Parse a setting string; non-canonical spellings (``random-0.30``) are rejected."""
    if name == "full":
        return ProtocolSpec("full")
    for kind, pattern in _PATTERNS.items():
        m = pattern.match(name)
        if not m:
            continue
        scope = m.group(1) or "all"
        if kind == "drop_one":
            spec = ProtocolSpec(kind, scope, float(m.group(3)), modality=m.group(2))
        elif kind == "mnar":
            spec = ProtocolSpec(kind, scope, float(m.group(3)), score=m.group(2))
        else:
            spec = ProtocolSpec(kind, scope, float(m.group(2)))
        canonical = spec.name  # validates the rate
        if canonical != name:
            raise ProtocolError(f"protocol {name!r}: write it as {canonical!r}")
        return spec
    raise ProtocolError(
        f"unknown protocol {name!r}; expected full, [train_|test_]drop_one-<modality>-<r>, "
        "[train_|test_]random-<p>, [train_|test_]mnar-label|severity-<p>, [train_|test_]replay-<p>"
    )


def is_test_only(name: str) -> bool:
    """True when the setting corrupts evaluation splits only (a model trained on ``full``
    with the same seed is the model this setting trains: it can be evaluated, not retrained)."""
    spec = parse_protocol(name)
    return spec.kind != "full" and not spec.touches_training


def expand_settings(section: dict[str, Any] | None, modalities: Sequence[str]) -> list[str]:
    """The settings a config ``protocols:`` section asks for on a dataset with ``modalities``.

    Keys (all optional): ``train_drop_one`` / ``test_drop_one`` (rates; one setting per
    modality and rate), ``train_random`` / ``test_random`` (rates), ``extra`` (further setting
    strings, e.g. ``mnar-label-0.5``, ``test_replay-1.0``; a ``drop_one`` one naming a
    modality the dataset lacks is skipped). ``methods`` is ignored here.
    """
    section = dict(section or {})
    out: list[str] = []
    for scope in ("train", "test"):
        for r in section.get(f"{scope}_drop_one") or []:
            out += [format_protocol("drop_one", scope, r, modality=m) for m in modalities]
        for p in section.get(f"{scope}_random") or []:
            out.append(format_protocol("random", scope, p))
    for name in section.get("extra") or []:
        spec = parse_protocol(str(name))
        if spec.kind == "drop_one" and spec.modality not in modalities:
            continue
        out.append(spec.name)
    seen: set[str] = set()
    return [s for s in out if not (s in seen or seen.add(s))]
