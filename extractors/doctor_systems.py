"""The doctor's *paper systems* section: one READY / NOT READY line per system of the paper.

The systems that this repository tests only on tiny random models (MAIRA-2, Merlin's CT encoder
and report bridge, HistGen, RadFM, OneLLM, the DINOv3 ViT-L, Qwen2-7B and Chronos-L teachers)
are summed up from the checks of the doctor entries that make them up (with the reason when not
ready), each linked to its section of docs/readiness.md, which lists what only real weights can
confirm; a system the config does not use is "not configured" (and left out of the text). The
section is informational: the doctor's exit status is the experts'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extractors.doctor_checks import FAIL, HOW_TO_REF, UNPINNED, WARN, ExpertReport
from extractors.registry import list_experts
from medmix.config import is_rag_expert
from medmix.plan import onellm_unavailable

READINESS_DOC = "docs/readiness.md"
READY, NOT_READY, NOT_CONFIGURED = "READY", "NOT READY", "not configured"


@dataclass
class SystemReport:
    """One system of the paper on this machine: READY, NOT READY or not configured."""

    system: str  # the anchor of its section in docs/readiness.md
    title: str
    role: str
    state: str  # READY | NOT READY | not configured
    components: list[str] = field(default_factory=list)  # the doctor's entries it sums up
    reasons: list[str] = field(default_factory=list)  # why not ready (each FAIL check)
    warnings: list[str] = field(default_factory=list)
    readiness: str = ""  # docs/readiness.md#<system>: what only real weights can confirm


@dataclass(frozen=True)
class PaperSystem:
    """A system of the paper that this repository tests only on tiny random models.

    ``source``: ``expert`` (entries of ``experts:`` whose type, or whose inner tile/slice
    expert's type, is one of ``types``) or ``bridge`` (``rag.bridges`` entries of that type).
    ``teacher_or_model``: only the experts the datasets name as teachers, or whose ``model_id``
    contains this text (Qwen2-7B and Chronos-L share their expert type with smaller students).
    ``method``: a fusion method that needs this system (OneLLM's Table 1 row)."""

    key: str
    title: str
    role: str
    source: str
    types: tuple[str, ...]
    teacher_or_model: str | None = None
    method: str | None = None


PAPER_SYSTEMS: tuple[PaperSystem, ...] = (
    PaperSystem("maira-2", "MAIRA-2", "CXR report bridge", "bridge", ("maira2",)),
    PaperSystem("merlin-ct-encoder", "Merlin", "CT encoder", "expert", ("merlin",)),
    PaperSystem("merlin-ct-report-bridge", "Merlin", "CT report bridge", "bridge", ("merlin",)),
    PaperSystem("histgen", "HistGen", "WSI report bridge", "bridge", ("histgen",)),
    PaperSystem("radfm", "RadFM", "CT volume teacher", "expert", ("radfm",)),
    PaperSystem("onellm", "OneLLM", "Table 1 baseline", "expert", ("onellm",), method="onellm"),
    PaperSystem("dinov3-vit-l", "DINOv3 ViT-L", "image / WSI teacher", "expert", ("dinov3",)),
    PaperSystem("qwen2-7b", "Qwen2-7B", "note teacher", "expert", ("qwen2",), "qwen2-7b"),
    PaperSystem(
        "chronos-l", "Chronos-L", "EHR teacher", "expert", ("chronos",), "chronos-t5-large"
    ),
)

_INNER_KEYS = ("tile_expert", "image_expert")  # the slide tiler's / CT slicer's inner expert


def _expert_types(experts: dict[str, Any], name: str, depth: int = 0) -> set[str]:
    """The registered type of an ``experts:`` entry and of the inner expert it wraps."""
    spec = experts.get(name)
    if not isinstance(spec, dict):
        return {name}  # a registered name used directly
    types = {str(spec.get("type", name))}
    for key in _INNER_KEYS:
        inner = spec.get(key)
        if isinstance(inner, str) and depth < 3:
            types |= _expert_types(experts, inner, depth + 1)
        elif isinstance(inner, dict):
            types.add(str(inner.get("type", "")))
    return types


def _model_ids(experts: dict[str, Any], name: str) -> str:
    spec = experts.get(name) or {}
    ids = [str(spec.get("model_id") or "")]
    ids += [_model_ids(experts, spec[k]) for k in _INNER_KEYS if isinstance(spec.get(k), str)]
    return " ".join(ids).lower()


def _teachers(cfg: dict[str, Any]) -> set[str]:
    return {
        str(t)
        for ds in (cfg.get("datasets") or {}).values()
        if isinstance(ds, dict)
        for t in (ds.get("teachers") or {}).values()
    }


def _components(system: PaperSystem, cfg: dict[str, Any]) -> list[str]:
    """The doctor entries (expert names, ``rag/bridge/<key>``) that make up ``system``."""
    experts = {k: v for k, v in (cfg.get("experts") or {}).items() if isinstance(v, dict)}
    if system.source == "bridge":
        if not any(is_rag_expert(cfg, name) for name in experts):
            return []  # no RAG expert: its bridges never run
        bridges = (cfg.get("rag") or {}).get("bridges") or {}
        return [
            f"rag/bridge/{key}"
            for key, b in bridges.items()
            if isinstance(b, dict) and str(b.get("type")) in system.types
        ]
    teachers = _teachers(cfg)
    out = []
    for name in experts:
        if not _expert_types(experts, name) & set(system.types):
            continue
        if system.teacher_or_model and not (
            name in teachers or system.teacher_or_model in _model_ids(experts, name)
        ):
            continue
        out.append(name)
    return out


def _short(detail: str, limit: int = 160) -> str:
    detail = " ".join(detail.replace(HOW_TO_REF, "").split())
    return detail if len(detail) <= limit else detail[: limit - 1].rstrip() + "…"


def _method_check(system: PaperSystem, cfg: dict[str, Any]) -> list[str]:
    """Why a fusion method that needs ``system`` cannot run (OneLLM: its weights and expert)."""
    if system.method != "onellm":
        return []
    reasons = []
    if "onellm" not in list_experts():
        reasons.append("no expert type 'onellm' is registered in this version of extractors")
    why = onellm_unavailable(cfg)
    if why:
        reasons.append(f"fusion method onellm: {why}")
    return reasons


def paper_systems(
    cfg: dict[str, Any], reports: list[ExpertReport], only: list[str] | None = None
) -> list[SystemReport]:
    """One line per paper system, from the doctor's checks of the entries that make it up.

    READY: every entry of the system passes (packages, weights under the loading policy,
    device; warnings such as a big model on the CPU are kept). With ``only`` (``--expert``)
    the systems outside the selection are left out."""
    by_name = {r.name: r for r in reports}
    methods = {str(m) for m in (cfg.get("methods") or [])}
    out = []
    for system in PAPER_SYSTEMS:
        rep = SystemReport(
            system.key,
            system.title,
            system.role,
            NOT_CONFIGURED,
            readiness=f"{READINESS_DOC}#{system.key}",
        )
        comps = _components(system, cfg)
        uses_method = system.method is not None and system.method in methods
        if only:
            comps = [c for c in comps if c in by_name]
            if not comps:
                continue
        elif not comps and not uses_method:
            out.append(rep)
            continue
        rep.components = comps
        for name in comps:
            er = by_name.get(name)
            if er is None:
                rep.reasons.append(f"{name}: not checked")
                continue
            for key, c in er.checks.items():
                if c.state == FAIL:
                    rep.reasons.append(f"{name} {key}: {_short(c.detail)}")
                elif c.state in (WARN, UNPINNED):
                    rep.warnings.append(f"{name} {key}: {_short(c.detail)}")
        if uses_method and not only:
            if not comps:
                rep.reasons.append(
                    f"no expert of type {system.types[0]!r} in experts: (the {system.method} "
                    "method reads its embeddings)"
                )
            rep.reasons += _method_check(system, cfg)
        rep.state = NOT_READY if rep.reasons else READY
        out.append(rep)
    return out


def format_paper_systems(systems: list[SystemReport]) -> list[str]:
    used = [s for s in systems if s.state != NOT_CONFIGURED]
    if not used:
        return []
    lines = [
        "Paper systems (tested here on tiny random models; what only real weights can confirm: "
        f"{READINESS_DOC}):"
    ]
    for s in used:
        head = f"  [{s.state:9s}] {s.title} ({s.role}; {', '.join(s.components) or 'no expert'})"
        if s.reasons:
            lines.append(f"{head}: {_short(s.reasons[0], 200)}")
            lines += [f"      also: {_short(r, 200)}" for r in s.reasons[1:3]]
            if len(s.reasons) > 3:
                lines.append(f"      and {len(s.reasons) - 3} more (--json lists them)")
        elif s.warnings:
            lines.append(f"{head}: warn: {_short(s.warnings[0], 200)}")
        else:
            lines.append(head)
        lines.append(f"      unverified until it runs on real weights: {s.readiness}")
    n_ready = sum(s.state == READY for s in used)
    lines.append(
        f"  {n_ready}/{len(used)} paper systems ready on this machine "
        "(informational: the exit status is the experts')."
    )
    return lines
