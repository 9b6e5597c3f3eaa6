"""Fusion methods as data: the catalogue, the method-name grammar, labels and row order.

This module is the one place that knows which fusion methods exist, how a method string is
spelt, how a table calls it and where its row goes. It imports neither torch nor pandas, so
the config check and the workflow's planning read it; :mod:`fusion.registry` refuses to
register a model class whose name is not catalogued here, and a test checks that every
catalogued method has its class.

Method strings (the ``{method}`` wildcard and the run folder name):

* a catalogued name (``medmix``, ``concat``, …) — on every modality of the dataset;
* ``<base>-only-<modality>``: the base method restricted to one modality's experts
  (e.g. ``medmix-only-frontal``);
* ``<modality>-large``: the single-modality teacher reference (paper Table 1, ``*-Large``):
  a head on that modality's teacher cache; ``large`` in the config's ``methods:`` asks for
  one per modality with a teacher;
* ``linear-probe``: a scikit-learn logistic regression on the concatenated expert embeddings.

Adding a method: one :class:`MethodInfo` line in :data:`CATALOGUE` (name, table label, row
group) and one class registered under that name in ``fusion/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from medmix.errors import UserError
from medmix.protocol_names import modality_label

ONLY_SEP = "-only-"
LARGE_SUFFIX = "-large"
LARGE = "large"  # the base of every <modality>-large row, and the config's name for them
TEACHER_EXPERT = "teacher"  # the expert name of a teacher cache used as a model input
PROBE = "linear-probe"  # fitted by scikit-learn (fusion.probe), not a torch model
MEDMIX = "medmix"
ONELLM = "onellm"

# Row groups of Table 1: references first, then the baselines, then MedMIX and its variants.
REFERENCE, BASELINE, OURS = 0, 1, 2


class MethodError(UserError, ValueError):
    """An unknown method name or a method that does not fit the dataset."""


class MethodUnavailable(MethodError):
    """A method that cannot run here (e.g. OneLLM without its weights); the run is marked so."""


@dataclass(frozen=True)
class MethodInfo:
    """One fusion method of the catalogue."""

    name: str  # the registered name (a run folder's method, a config's `methods:` entry)
    label: str  # its row label in tables and figures
    group: int  # REFERENCE | BASELINE | OURS: where its row goes (then catalogue order)
    teacher_input: bool = False  # reads the teacher caches as inputs (train and inference)
    in_config: bool = True  # may be named in the config's `methods:` (ablation variants not)


# The paper's row order (Table 1) within each group: the linear probe (logistic regression on
# the same features) leads the baselines; MedMIX-Σ, our variant beyond the paper, follows
# MedMIX, which it modifies.
CATALOGUE: tuple[MethodInfo, ...] = (
    MethodInfo(MEDMIX, "MedMIX", OURS),
    MethodInfo("medmix-sum", "MedMIX-Σ (ours)", OURS),
    MethodInfo(PROBE, "Linear probe (LR)", BASELINE),
    MethodInfo("meanavg", "MeanAvg", BASELINE),
    MethodInfo("concat", "Concat", BASELINE),
    MethodInfo("max", "Max", BASELINE),
    MethodInfo("attention", "Attention", BASELINE),
    MethodInfo("m3care", "M3Care", BASELINE),
    MethodInfo("adacomed", "AdaCoMed", BASELINE, teacher_input=True),
    MethodInfo(ONELLM, "OneLLM", BASELINE),
    MethodInfo("medmix-uniform", "MedMIX (uniform mean)", BASELINE, in_config=False),
    MethodInfo(LARGE, "Large", REFERENCE, teacher_input=True),
)
METHODS: dict[str, MethodInfo] = {m.name: m for m in CATALOGUE}


def method_info(name: str) -> MethodInfo:
    """The catalogue entry of a registered name (not a ``-only-`` / ``-large`` string)."""
    if name not in METHODS:
        raise MethodError(f"unknown fusion method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def config_methods() -> list[str]:
    """The names the config's ``methods:`` accepts, in catalogue order."""
    return [m.name for m in CATALOGUE if m.in_config]


class MethodName(NamedTuple):
    """A parsed method string."""

    base: str  # the catalogued name: medmix, linear-probe, large, …
    only: str | None  # the single modality (``-only-<m>``, ``<m>-large``), else None


def parse_method(method: str) -> MethodName:
    """``medmix`` -> (medmix, None); ``medmix-only-note`` -> (medmix, note);
    ``note-large`` -> (large, note). By name only: the base is not checked."""
    if method.endswith(LARGE_SUFFIX) and ONLY_SEP not in method:
        return MethodName(LARGE, method[: -len(LARGE_SUFFIX)])
    if ONLY_SEP in method:
        base, only = method.split(ONLY_SEP, 1)
        return MethodName(base, only)
    return MethodName(method, None)


def only_method(base: str, modality: str) -> str:
    """The method string of ``base`` restricted to one modality."""
    return f"{base}{ONLY_SEP}{modality}"


def teacher_method(modality: str) -> str:
    """The teacher reference row of a modality: ``<modality>-large``."""
    return f"{modality}{LARGE_SUFFIX}"


def is_probe(method: str) -> bool:
    """``linear-probe`` or ``linear-probe-only-<modality>`` (fitted by scikit-learn)."""
    return parse_method(method).base == PROBE


def is_teacher(method: str) -> bool:
    """A ``<modality>-large`` teacher reference row (a foundation model alone, not a fusion)."""
    return method.endswith(LARGE_SUFFIX)


def is_single_modality(method: str) -> bool:
    """A ``<base>-only-<modality>`` row."""
    return ONLY_SEP in method


def is_neural_method(method: str) -> bool:
    """A torch fusion model (not the linear probe, not a ``<modality>-large`` teacher row)."""
    base = parse_method(method).base
    return base not in (PROBE, LARGE)


def reads_teacher_input(base: str) -> bool:
    """Whether the method reads the teacher caches as inputs (AdaCoMed, ``*-large``)."""
    info = METHODS.get(base)
    return bool(info and info.teacher_input)


# -- labels and row order ---------------------------------------------------------------


def method_label(method: str) -> str:
    """The row label: ``MedMIX (Note only)``, ``Note-Large``, ``Concat``…"""
    if method.startswith(only_method(MEDMIX, "")):
        return f"MedMIX ({modality_label(method.removeprefix(only_method(MEDMIX, '')))} only)"
    if method.endswith(LARGE_SUFFIX):
        return f"{modality_label(method.removesuffix(LARGE_SUFFIX))}{LARGE_SUFFIX.title()}"
    info = METHODS.get(method)
    return info.label if info else method


def _rank(method: str) -> tuple[int, int, str]:
    if method.startswith(only_method(MEDMIX, "")) or method.endswith(LARGE_SUFFIX):
        return (REFERENCE, 0, method)
    info = METHODS.get(method)
    if info is None:
        return (BASELINE, len(CATALOGUE), method)
    return (info.group, [m.name for m in CATALOGUE if m.group == info.group].index(method), method)


def method_order(methods: Sequence[str]) -> list[str]:
    """Single-modality references first, then baselines in the paper's order, MedMIX last
    (its variants right after it)."""
    return sorted(set(methods), key=_rank)


def table1_order(methods: Sequence[str]) -> list[str]:
    """Table 1's rows: the compared methods in :func:`method_order`, then the ``*-Large``
    teacher references (a foundation model alone: shown apart, never ranked)."""
    ordered = method_order(methods)
    return [m for m in ordered if not is_teacher(m)] + [m for m in ordered if is_teacher(m)]


def medmix_first(methods: Sequence[str]) -> list[str]:
    """MedMIX first, then the others in the paper's order (Tables E2–E5)."""
    rest = [m for m in method_order(methods) if m != MEDMIX]
    return ([MEDMIX] if MEDMIX in methods else []) + rest
