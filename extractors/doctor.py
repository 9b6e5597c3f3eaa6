"""``python -m extractors doctor CONFIG``: is every configured expert ready to run here?

For each expert of the config's ``experts:`` section (and the inner image/tile expert of a
slicer or tiler) the doctor checks, without downloading or loading any model:

* **packages** — the Python packages the expert (or a RAG report-generation bridge) imports
  are installed (a missing one names the project's extra that installs it, e.g.
  ``pip install -e ".[vision]"``);
* **weights** — where the weights come from and whether they are there: a hub snapshot in the
  local cache (``HF_HOME`` / ``HF_HUB_CACHE``) at the configured revision, a ``local_dir`` /
  checkpoint file, the packaged model of an offline expert, or ``random-init`` (a CI stand-in:
  ready, but flagged, because its embeddings carry no information); ``trust_remote_code``
  without a pinned revision is refused;
* **pin** — every model that comes from a hub repository (the expert's own, the inner image
  expert of a slicer/tiler, each RAG component) has a 40-hex ``revision``: an unpinned one is
  reported as ``UNPINNED`` whether or not its weights are here, and counted in the summary
  (it does not block a run: the commit resolved at load time is recorded in the caches);
* **device** — the configured device exists (``cuda:N`` visible, bf16 support), and an expert
  that needs a GPU is not left on the CPU.

It also says whether the config validates against the schema. A **paper systems** section
sums the checks up per system of the paper that is tested here only on tiny random models
(MAIRA-2, Merlin's CT encoder and report bridge, HistGen, RadFM, OneLLM, the DINOv3 ViT-L,
Qwen2-7B and Chronos-L teachers): one READY / NOT READY line each, from the same checks (with
the reason when not ready), linked to its section of docs/readiness.md, which lists what only
real weights can confirm; a system the config does not use is "not configured" (and left out
of the text). The section is informational: the exit status is the experts'. The three ways
to provide missing weights are printed once, after the experts, with the ``hf download``
command of each missing model. Exit status 0 when everything is ready, 1 otherwise; ``--json`` prints the
report as JSON.

The checks are :mod:`extractors.doctor_checks`, the RAG chain's entries
:mod:`extractors.doctor_rag` and the paper systems :mod:`extractors.doctor_systems`; this module
runs them over a config and formats the report.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extractors.doctor_checks import (
    FAIL,
    HOW_TO_REF,
    OK,
    Check,
    ExpertReport,
    check_device,
    check_packages,
    check_pin,
    check_schema,
    check_weights,
    environment,
    error_check,
    hub_spec,
)
from extractors.doctor_rag import rag_reports
from extractors.doctor_systems import SystemReport, format_paper_systems, paper_systems
from extractors.loading import HOW_TO_PREFIX, LOCAL_DIR_OPTION, RANDOM_INIT_OPTION, hub_cache
from extractors.registry import build_from_spec, config_presets, expert_class
from medmix.config import RAG_TYPE

# the doctor's API: run_doctor / main, and the report types and checks it is made of
__all__ = [
    "Check",
    "DoctorReport",
    "ExpertReport",
    "SystemReport",
    "check_device",
    "check_packages",
    "check_pin",
    "check_weights",
    "format_report",
    "main",
    "run_doctor",
]


@dataclass
class DoctorReport:
    config: str
    config_valid: Check
    environment: dict[str, str]
    experts: list[ExpertReport]
    paper_systems: list[SystemReport] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.config_valid.state != FAIL and all(e.ready for e in self.experts)

    @property
    def unpinned(self) -> list[str]:
        return [e.name for e in self.experts if e.unpinned]

    @property
    def pinnable(self) -> list[str]:
        """Experts / components with a pin check (a hub model)."""
        return [e.name for e in self.experts if "pin" in e.checks]

    @property
    def downloads(self) -> list[str]:
        return list(dict.fromkeys(e.download for e in self.experts if e.download))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "ready": self.ready,
            "unpinned": self.unpinned,
            "config_valid": asdict(self.config_valid),
            "environment": self.environment,
            "experts": [
                {
                    **{k: v for k, v in asdict(e).items() if k != "checks"},
                    "ready": e.ready,
                    "unpinned": e.unpinned,
                    "checks": {k: asdict(c) for k, c in e.checks.items()},
                }
                for e in self.experts
            ],
            "how_to_provide": how_to_provide_lines(self.downloads) if self.downloads else [],
            "paper_systems": [asdict(p) for p in self.paper_systems],
        }


def run_doctor(config: str | os.PathLike, only: list[str] | None = None) -> DoctorReport:
    path = Path(config)
    cfg = yaml.safe_load(path.read_text()) or {}
    experts = dict(cfg.get("experts") or {})
    with config_presets(experts):  # wrapped experts resolve their inner presets
        return _doctor_report(path, cfg, experts, only)


def _doctor_report(
    path: Path, cfg: dict[str, Any], experts: dict[str, Any], only: list[str] | None
) -> DoctorReport:
    reports = []
    for name, spec in experts.items():
        if only and name not in only:
            continue
        spec = dict(spec or {})
        rep = ExpertReport(name=name, type=str(spec.get("type", name)))
        if rep.type == RAG_TYPE:  # built by the rag rules from the rag: section, not the registry
            reports += rag_reports(cfg)
            continue
        try:
            cls = expert_class(rep.type)
            rep.kind = cls.kind
            expert = build_from_spec(name, spec)
        except Exception as exc:
            rep.checks["config"] = error_check(exc)
            reports.append(rep)
            continue
        try:
            rep.model = str(expert.model_id)
        except Exception:
            rep.model = "?"
        rep.checks["packages"] = check_packages(expert)
        rep.checks["weights"] = check_weights(expert)
        rep.checks["device"] = check_device(expert, spec.get("device"))
        hub = hub_spec(expert)
        if hub is not None:
            rep.checks["pin"] = check_pin(hub)
        reports.append(rep)
    for rep in reports:
        _split_how_to(rep)
    systems = paper_systems(cfg, reports, only)
    return DoctorReport(str(path), check_schema(cfg), environment(), reports, systems)


_DOWNLOAD = re.compile(r"`hf download ([^`]+)`")


def _split_how_to(rep: ExpertReport) -> None:
    """Cut the "three ways to provide the weights" text out of each check (it is printed once,
    at the end) and keep the ``hf download`` arguments of the missing model."""
    for key, c in rep.checks.items():
        if HOW_TO_PREFIX not in c.detail:
            continue
        head, tail = c.detail.split(HOW_TO_PREFIX, 1)
        m = _DOWNLOAD.search(tail)
        if m and c.state == FAIL and not rep.download:
            rep.download = m.group(1)
        rep.checks[key] = Check(c.state, f"{head.rstrip()} {HOW_TO_REF}".strip())


def how_to_provide_lines(downloads: list[str]) -> list[str]:
    """The three ways to provide missing weights, once, with each missing model's download."""
    lines = [
        "Provide the missing weights in one of three ways:",
        f"  (1) on a machine with internet and the same HF_HOME, download each, then copy "
        f"{hub_cache()} here (HF_HUB_OFFLINE=1 then reads only that cache):",
    ]
    lines += [f"        hf download {d}" for d in downloads]
    lines += [f"  (2) {LOCAL_DIR_OPTION};", f"  (3) {RANDOM_INIT_OPTION}."]
    return lines


def format_report(report: DoctorReport) -> str:
    lines = [f"MedMIX doctor: {report.config}"]
    lines += [f"  {k}: {v}" for k, v in report.environment.items()]
    lines.append(
        f"  config schema: {report.config_valid.state} {'' if report.config_valid.state == OK else report.config_valid.detail}"
    )
    lines.append("")
    for e in report.experts:
        mark = "READY" if e.ready else "NOT READY"
        pin = "  ** UNPINNED **" if e.unpinned else ""
        lines.append(f"[{mark:9s}] {e.name} (type {e.type}, {e.kind}) {e.model}{pin}")
        for key, c in e.checks.items():
            lines.append(f"    {key:8s} {c.state:4s} {c.detail}")
    n_ready = sum(e.ready for e in report.experts)
    lines.append("")
    unpinned = report.unpinned
    if unpinned:
        lines.append(
            f"UNPINNED: {len(unpinned)} of {len(report.pinnable)} hub models have no 40-hex "
            f"revision ({', '.join(unpinned)}): set `revision:` to the commit you downloaded."
        )
    elif report.pinnable:
        lines.append(f"All {len(report.pinnable)} hub models are pinned to a 40-hex revision.")
    if report.downloads:
        lines += ["", *how_to_provide_lines(report.downloads), ""]
    systems = format_paper_systems(report.paper_systems)
    if systems:
        lines += [*([""] if lines[-1] else []), *systems, ""]
    lines.append(
        f"{n_ready}/{len(report.experts)} experts ready"
        + ("" if report.config_valid.state == OK else "; the config does not validate")
        + (" — ready to run." if report.ready else " — fix the FAIL lines before a long run.")
    )
    return "\n".join(lines)


def main(config: str, as_json: bool = False, only: list[str] | None = None) -> int:
    from extractors.presets import check_preset
    from medmix.config import ConfigError

    report = run_doctor(config, only)
    experts = dict((yaml.safe_load(Path(config).read_text()) or {}).get("experts") or {})
    for rep in report.experts:  # each preset against its class: unknown keys, bad values
        if rep.name not in experts:
            continue
        try:
            check_preset(rep.name, experts[rep.name], experts)
        except ConfigError as exc:
            others = {k: c for k, c in rep.checks.items() if k != "config"}
            rep.checks = {"config": Check(FAIL, str(exc)[:400]), **others}
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    return 0 if report.ready else 1
