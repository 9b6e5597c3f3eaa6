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
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

OK, WARN, FAIL = "ok", "warn", "FAIL"
UNPINNED = "UNPINNED"  # the pin check of a hub model without a 40-hex revision (not a failure)


@dataclass
class Check:
    state: str  # ok | warn | FAIL
    detail: str


@dataclass
class ExpertReport:
    name: str
    type: str
    kind: str = ""
    model: str = ""
    checks: dict[str, Check] = field(default_factory=dict)
    download: str | None = None  # ``hf download`` arguments when the weights are missing

    @property
    def ready(self) -> bool:
        return all(c.state != FAIL for c in self.checks.values())

    @property
    def unpinned(self) -> bool:
        return any(c.state == UNPINNED for c in self.checks.values())


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


# -- individual checks -----------------------------------------------------------------------


def _installed(dist: str) -> bool:
    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False


def check_packages(expert: Any) -> Check:
    missing: list[str] = []
    for e in _with_inner(expert):
        if callable(getattr(e, "missing_imports", None)):
            missing += e.missing_imports()
        else:
            missing += [d for d in getattr(e, "packages", ()) if not _installed(d)]
    missing = sorted(set(missing))
    if missing:
        return _missing_check(missing)
    return Check(OK, "installed")


def _missing_check(missing: list[str]) -> Check:
    from extractors.experts.fm_common import install_hint

    return Check(FAIL, f"missing: {', '.join(missing)} (install with {install_hint(missing)})")


def _with_inner(expert: Any) -> list[Any]:
    inner = getattr(expert, "inner", None)
    return [expert, inner] if inner is not None else [expert]


def check_weights(expert: Any) -> Check:
    target = getattr(expert, "inner", None) or expert
    status = getattr(target, "weights_status", None)
    if callable(status):
        try:
            state, detail = status()
        except Exception as exc:  # a broken config, never a crash of the doctor
            return Check(FAIL, f"{type(exc).__name__}: {exc}"[:400])
        if state == "ok":
            return Check(WARN if "not a pinned commit" in detail else OK, detail)
        if state in ("random-init", "fallback"):  # a CI stand-in / MiniLM's packaged copy
            return Check(WARN, detail)
        return Check(FAIL, detail)
    if getattr(target, "random_init", False) or target.params.get("random_init"):
        return Check(WARN, "seeded random weights (random_init); for CI/demo only")
    if hasattr(target, "model_spec"):  # an offline expert that loads through extractors.loading
        return _spec_weights(target.model_spec())
    return Check(OK, "no weights (an offline feature extractor)")


def hub_spec(expert: Any) -> Any:
    """The ModelSpec of the hub model behind an expert (its inner expert for a slicer/tiler),
    or None when it has none (offline features, random init, a local folder or checkpoint)."""
    target = getattr(expert, "inner", None) or expert
    get = getattr(target, "model_spec", None)
    if not callable(get):
        return None
    try:
        spec = get()
    except Exception:  # a broken config is reported by the other checks
        return None
    return _hub(spec)


def _hub(spec: Any) -> Any:
    if spec is None or spec.random_init or spec.local_dir or not spec.model_id:
        return None
    return spec


def check_pin(spec: Any) -> Check:
    """``ok`` for a 40-hex revision; ``UNPINNED`` otherwise (whether or not weights are here)."""
    from extractors.loading import is_pinned

    if is_pinned(spec.revision):
        return Check(OK, f"{spec.model_id} pinned at {spec.revision}")
    return Check(
        UNPINNED,
        f"{spec.model_id}: revision {repr(spec.revision) if spec.revision else 'null'} is not a "
        "40-hex commit, so the run is not reproducible; set `revision:` to the commit you downloaded",
    )


def _cuda() -> tuple[int, list[str], bool]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return 0, [], False
    if not torch.cuda.is_available():
        return 0, [], False
    n = torch.cuda.device_count()
    names = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB)")
    return n, names, bool(torch.cuda.is_bf16_supported())


def check_device(expert: Any, spec_device: str | None) -> Check:
    n, names, bf16 = _cuda()
    device = str(spec_device or getattr(expert, "device", "cpu"))
    needs_gpu = any(getattr(e, "needs_gpu", False) for e in _with_inner(expert))
    if device == "auto":
        device = "cuda" if n else "cpu"
    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= n:
            return Check(FAIL, f"{spec_device or device} requested but {n} CUDA device(s) visible")
        return Check(OK, f"{names[idx]}; autocast {'bf16' if bf16 else 'fp16'}")
    if needs_gpu:
        return Check(WARN, "runs on the CPU; this model wants a GPU (set device: cuda or auto)")
    return Check(OK, "cpu")


# -- the whole config ------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    from extractors.loading import hf_home, hub_cache, offline

    n, names, _ = _cuda()
    env = {
        "HF_HOME": str(hf_home()),
        "HF_HUB_CACHE": str(hub_cache()),
        "HF_HUB_OFFLINE": "1" if offline() else "0",
        "cuda": "; ".join(names) if n else "none visible",
    }
    for dist in ("torch", "transformers"):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = "missing"
    return env


def _validate(cfg: dict[str, Any]) -> Check:
    from medmix.config import ConfigError, validate_config

    try:
        validate_config(copy.deepcopy(cfg))
    except ConfigError as exc:
        return Check(FAIL, str(exc))
    return Check(OK, "valid")


def _spec_weights(spec: Any) -> Check:
    """The weights check of a component that loads through extractors.loading (a ModelSpec)."""
    from extractors.experts.fm_common import weights_status

    try:
        state, detail = weights_status(spec)
    except Exception as exc:  # a broken config, never a crash of the doctor
        return Check(FAIL, f"{type(exc).__name__}: {exc}"[:400])
    if state == "ok":
        return Check(WARN if "not a pinned commit" in detail else OK, detail)
    return Check(WARN if state == "random-init" else FAIL, detail)


def _paths_exist(cfg: dict[str, Any], keys: tuple[str, ...]) -> Check:
    missing = [
        f"{k}={cfg.get(k)!r}"
        for k in keys
        if not cfg.get(k) or not Path(str(cfg[k])).expanduser().exists()
    ]
    return Check(FAIL, f"not found: {', '.join(missing)}") if missing else Check(OK, "found")


# (module, pip name) each report-generation bridge imports beyond the core dependencies; HistGen
# imports its own checkout (repo_dir), which its weights check finds or not.
BRIDGE_IMPORTS: dict[str, tuple[tuple[str, str], ...]] = {
    "maira2": (("transformers", "transformers"), ("PIL", "pillow")),
    "merlin": (
        ("merlin", "merlin-vlm"),
        ("torchvision", "torchvision"),
        ("peft", "peft"),
        ("accelerate", "accelerate"),
        ("monai", "monai"),
    ),
    "histgen": (("torch", "torch"),),
}


def _imports_check(imports: tuple[tuple[str, str], ...]) -> Check:
    import importlib.util

    missing = [pip for mod, pip in imports if importlib.util.find_spec(mod) is None]
    return _missing_check(missing) if missing else Check(OK, "installed")


def rag_reports(cfg: dict[str, Any]) -> list[ExpertReport]:
    """The RAG expert is a chain, not one model: the knowledge source, the MedCPT query and
    article encoders, the LLM of the soft prompt, and each report-generation bridge."""
    from extractors.rag.bridge import GENERATORS
    from extractors.rag.encoders import build_encoder
    from extractors.rag.expert import PACKAGES
    from medmix.rag_settings import rag_config
    from extractors.rag.softprompt import SoftPromptEncoder

    try:
        rag = rag_config({k: v for k, v in (cfg.get("rag") or {}).items() if k != "device"})
    except Exception as exc:
        rep = ExpertReport("rag", "rag", checks={"config": Check(FAIL, f"{exc}"[:400])})
        return [rep]
    device = str((cfg.get("rag") or {}).get("device", "cpu"))
    n_gpu = _cuda()[0]
    dev = (
        Check(FAIL, f"rag.device {device} but no CUDA device visible")
        if device.startswith("cuda") and not n_gpu
        else Check(OK, "cuda" if n_gpu and device != "cpu" else "cpu")
    )
    missing = [d for d in PACKAGES if not _installed(d)]
    pkgs = _missing_check(missing) if missing else Check(OK, "installed")
    source = str(rag["knowledge"]["source"])
    reports = [ExpertReport("rag/knowledge", "rag", "text", source, {
        "source": Check(OK, "found") if Path(source).exists() else Check(
            FAIL, f"{source} not found: the MedlinePlus bulk XML (mplus_topics_<date>.xml) or a docs.parquet")})]  # fmt: skip
    components = [
        ("rag/query_encoder", lambda: build_encoder("rag/query_encoder", rag["query_encoder"])),
        (
            "rag/article_encoder",
            lambda: build_encoder("rag/article_encoder", rag["article_encoder"]),
        ),
        ("rag/llm", lambda: SoftPromptEncoder(rag["llm"])),
    ]
    for name, build in components:
        rep = ExpertReport(name, "rag", "text")
        try:
            spec = build().spec
            rep.model = str(spec.model_id)
            rep.checks.update(packages=pkgs, weights=_spec_weights(spec), device=dev)
            if _hub(spec) is not None:
                rep.checks["pin"] = check_pin(spec)
        except Exception as exc:
            rep.checks["config"] = Check(FAIL, f"{type(exc).__name__}: {exc}"[:400])
        reports.append(rep)
    for key, bcfg in rag["bridges"].items():
        btype = str(bcfg.get("type"))
        if btype not in GENERATORS:
            continue  # pass-through, EHR serialisation, nearest-report: no weights
        rep = ExpertReport(f"rag/bridge/{key}", btype, key)
        rep.checks["packages"] = _imports_check(BRIDGE_IMPORTS.get(btype, ()))
        try:
            gen = GENERATORS[btype](bcfg)
            if btype == "histgen":
                rep.checks["weights"] = _paths_exist(
                    gen.cfg, ("repo_dir", "checkpoint", "ann_path", "features_dir")
                )
            else:
                rep.model = str(gen.spec.model_id)
                rep.checks["weights"] = _spec_weights(gen.spec)
                if _hub(gen.spec) is not None:
                    rep.checks["pin"] = check_pin(gen.spec)
            rep.checks["device"] = dev
        except Exception as exc:
            rep.checks["config"] = Check(FAIL, f"{type(exc).__name__}: {exc}"[:400])
        reports.append(rep)
    return reports


# -- the paper's systems ---------------------------------------------------------------------

READINESS_DOC = "docs/readiness.md"
READY, NOT_READY, NOT_CONFIGURED = "READY", "NOT READY", "not configured"


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
        if not any(str(s.get("type")) == "rag" for s in experts.values()):
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
    from extractors.registry import list_experts
    from medmix.plan import onellm_unavailable

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


def run_doctor(config: str | os.PathLike, only: list[str] | None = None) -> DoctorReport:
    from extractors.registry import config_presets

    path = Path(config)
    cfg = yaml.safe_load(path.read_text()) or {}
    experts = dict(cfg.get("experts") or {})
    with config_presets(experts):  # wrapped experts resolve their inner presets
        return _doctor_report(path, cfg, experts, only)


def _doctor_report(
    path: Path, cfg: dict[str, Any], experts: dict[str, Any], only: list[str] | None
) -> DoctorReport:
    from extractors.registry import build_from_spec, expert_class

    reports = []
    for name, spec in experts.items():
        if only and name not in only:
            continue
        spec = dict(spec or {})
        rep = ExpertReport(name=name, type=str(spec.get("type", name)))
        if rep.type == "rag":  # built by the rag rules from the rag: section, not the registry
            reports += rag_reports(cfg)
            continue
        try:
            cls = expert_class(rep.type)
            rep.kind = cls.kind
            expert = build_from_spec(name, spec)
        except Exception as exc:
            rep.checks["config"] = Check(FAIL, f"{type(exc).__name__}: {exc}"[:400])
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
    return DoctorReport(str(path), _validate(cfg), _environment(), reports, systems)


_DOWNLOAD = re.compile(r"`hf download ([^`]+)`")
HOW_TO_REF = "(how to provide them: see the end of the report)"


def _split_how_to(rep: ExpertReport) -> None:
    """Cut the "three ways to provide the weights" text out of each check (it is printed once,
    at the end) and keep the ``hf download`` arguments of the missing model."""
    from extractors.loading import HOW_TO_PREFIX

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
    from extractors.loading import LOCAL_DIR_OPTION, RANDOM_INIT_OPTION, hub_cache

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
    report = run_doctor(config, only)
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    return 0 if report.ready else 1
