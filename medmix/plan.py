"""The run plan: which runs, tables and figures a config asks for, and what each run reads.

Torch-free and pandas-free: the workflow plans its DAG from these functions alone, and the
Python entry points (training, rendering, the status table) ask the same questions here, so
the two always agree. ``python -m medmix.plan --config config.yaml`` prints the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmix.config import (
    RAG_TYPE,
    cache_paths,
    dataset_paths,
    expert_closure,
    load_config,
    table1_methods,
)
from medmix.hparams import FusionHParams
from medmix.methods import (
    LARGE,
    ONELLM,
    TEACHER_EXPERT,
    MethodError,
    is_single_modality,
    parse_method,
    reads_teacher_input,
)
from medmix.outputs import asked_outputs
from medmix.protocol_names import expand_settings

ONELLM_WEIGHTS_ENV = "MEDMIX_ONELLM_WEIGHTS"
EXTERNAL_PREFIX = "external-"


# -- what each run reads -------------------------------------------------------------------


@dataclass
class MethodInputs:
    """What a (dataset, method) run reads: expert caches, teacher caches (by modality)."""

    modalities: list[str]
    caches: dict[str, dict[str, Path]]  # modality -> expert -> cache (teacher inputs included)
    teachers: dict[str, Path]  # modality -> teacher cache read for distillation only
    unavailable: str | None = None  # why the method cannot run here (then nothing is read)
    # its short form for a table cell: "weights absent", "no teacher" ("inputs missing" when
    # the trainer finds nothing more specific)
    unavailable_kind: str | None = None


def onellm_weights(cfg: dict[str, Any]) -> Path | None:
    """The OneLLM checkpoint folder from ``fusion.onellm_weights`` or $MEDMIX_ONELLM_WEIGHTS."""
    raw = FusionHParams.of(cfg).onellm_weights or os.environ.get(ONELLM_WEIGHTS_ENV)
    return Path(raw) if raw else None


def onellm_unavailable(cfg: dict[str, Any]) -> str | None:
    """Why OneLLM cannot run with this config (None when its weights and expert are there)."""
    path = onellm_weights(cfg)
    hint = (
        "OneLLM (Han et al., CVPR 2024) needs its 7B+ checkpoint (the OneLLM-7B release: "
        "LLaMA-2-7B plus the universal encoder and projection experts, about 15 GB), which is "
        "not downloaded by this pipeline. Put it in a folder and set fusion.onellm_weights "
        f"(or ${ONELLM_WEIGHTS_ENV}); the OneLLM rows are marked 'weights absent' until then."
    )
    if path is None:
        return "no OneLLM weights configured. " + hint
    ckpts = [p for p in path.glob("*") if p.suffix in (".pth", ".pt", ".safetensors", ".bin")]
    if not path.is_dir() or not ckpts:
        return f"no OneLLM checkpoint found in {path}. " + hint
    if ONELLM not in (cfg.get("experts") or {}):
        return (
            f"OneLLM weights found in {path}, but no expert preset {ONELLM!r} is configured to "
            "turn them into per-modality embeddings (experts: {onellm: {type: ...}})"
        )
    return None


def method_inputs(cfg: dict[str, Any], dataset: str, method: str) -> MethodInputs:
    """The caches and teacher caches a run of ``method`` on ``dataset`` reads (torch-free)."""
    paths = dataset_paths(cfg, dataset)
    dcfg = cfg["datasets"][dataset]
    all_mods = list(dcfg["modalities"])
    teachers = dict(dcfg.get("teachers") or {})
    base, only = parse_method(method)
    mods = [only] if only is not None else all_mods
    if only is not None and only not in all_mods:
        raise MethodError(f"method {method!r}: dataset {dataset} has no modality {only!r}")
    caches = cache_paths(cfg, dataset)
    if base == ONELLM:
        why = onellm_unavailable(cfg)
        if why:
            return MethodInputs(mods, {}, {}, unavailable=why, unavailable_kind="weights absent")
        return MethodInputs(mods, {m: {ONELLM: paths.cache(m, ONELLM)} for m in mods}, {})
    if base == LARGE:
        if only not in teachers:
            raise MethodError(f"method {method!r}: no teacher configured for modality {only!r}")
        return MethodInputs(mods, {only: {TEACHER_EXPERT: paths.teacher(only)}}, {})
    selected = {m: dict(caches[m]) for m in mods}
    if reads_teacher_input(base) and not any(m in teachers for m in mods):
        why = (
            f"{method} reads the large (teacher) branch, and dataset {dataset} has no teacher "
            f"for {mods} (datasets.{dataset}.teachers: {{modality: expert}})"
        )
        return MethodInputs(mods, {}, {}, unavailable=why, unavailable_kind="no teacher")
    if reads_teacher_input(base):
        for m in mods:
            if m in teachers:
                selected[m][TEACHER_EXPERT] = paths.teacher(m)
        return MethodInputs(mods, selected, {})
    kd = float(FusionHParams.of(cfg).lambda_kd)
    distill = base.startswith("medmix") and kd > 0
    kd_teachers = {m: paths.teacher(m) for m in mods if m in teachers} if distill else {}
    return MethodInputs(mods, selected, kd_teachers)


def run_caches(cfg: dict[str, Any], role: str = "expert") -> list[str]:
    """The caches the configured Table 1 runs of every dataset read (rule ``sample_status``):
    expert caches (``role="expert"``) or teacher caches (``role="teacher"``: distillation
    targets and the large branch of AdaCoMed / the *-large rows). No cache is listed that no
    run needs, so the table never makes the workflow extract more."""
    if role not in ("expert", "teacher"):
        raise ValueError(f"role must be 'expert' or 'teacher', got {role!r}")
    files: list[str] = []
    for ds in cfg["datasets"]:
        for method in table1_methods(cfg, ds):
            inputs = method_inputs(cfg, ds, method)
            files += [str(p) for ev in inputs.caches.values() for p in ev.values()]
            files += [str(p) for p in inputs.teachers.values()]
    want_teacher = role == "teacher"
    return [f for f in dict.fromkeys(files) if (Path(f).parent.name == "teachers") == want_teacher]


# -- external validation ---------------------------------------------------------------


def external_protocol(target: str) -> str:
    """The run-folder name of an external evaluation on ``target``."""
    return f"{EXTERNAL_PREFIX}{target}"


def external_pairs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The configured (source, target) pairs, checked for compatible modalities.

    The target's modalities must be a subset of the source's (MIMIC-III has no chest X-rays
    for the MIMIC-IV-MM models): a modality the target lacks is evaluated as missing for every
    sample, which is what the models are built for. Shared modalities need the same experts
    and teachers.
    """
    pairs = []
    for entry in cfg.get("external") or []:
        src, tgt = entry["source"], entry["target"]
        for ds in (src, tgt):
            if ds not in cfg["datasets"]:
                raise ValueError(f"external: dataset {ds!r} is not configured")
        sm, tm = cfg["datasets"][src]["modalities"], cfg["datasets"][tgt]["modalities"]
        extra = [m for m in tm if m not in sm]
        if extra or not tm:
            raise ValueError(
                f"external {src} -> {tgt}: the target's modalities must be a non-empty subset of "
                f"the source's ({list(tm)} vs {list(sm)}; not in the source: {extra})"
            )
        for m in tm:
            if set(sm[m]) != set(tm[m]):
                raise ValueError(
                    f"external {src} -> {tgt}: experts of {m!r} differ ({sm[m]} vs {tm[m]})"
                )
        st = cfg["datasets"][src].get("teachers") or {}
        tt = cfg["datasets"][tgt].get("teachers") or {}
        if {m: st.get(m) for m in tm} != {m: tt.get(m) for m in tm}:
            raise ValueError(
                f"external {src} -> {tgt}: teachers differ ({st} vs {tt}); methods that read "
                f"the large branch at inference (AdaCoMed, <modality>-large) need the target's "
                f"teacher caches: give datasets.{tgt}.teachers the source's"
            )
        pairs.append((src, tgt))
    return pairs


def external_targets(cfg: dict[str, Any]) -> set[str]:
    return {t for _, t in external_pairs(cfg)}


# -- what the config asks for ---------------------------------------------------------------


def training_datasets(cfg: dict[str, Any]) -> list[str]:
    """Configured datasets minus the ones used only as external-validation targets."""
    targets = {e["target"] for e in cfg.get("external") or []}
    sources = {e["source"] for e in cfg.get("external") or []}
    return [d for d in cfg["datasets"] if d not in targets or d in sources]


def protocol_methods(cfg: dict[str, Any]) -> list[str]:
    section = cfg.get("protocols") or {}
    return list(section.get("methods") or ["medmix"])


def protocol_grid(cfg: dict[str, Any], dataset: str) -> list[str]:
    """Every protocol setting of the config's ``protocols:`` section for ``dataset``."""
    return expand_settings(cfg.get("protocols"), list(cfg["datasets"][dataset]["modalities"]))


def efficiency_methods(cfg: dict[str, Any]) -> list[str]:
    section = cfg.get("efficiency") or {}
    return list(section.get("methods") or external_methods(cfg))


def external_methods(cfg: dict[str, Any]) -> list[str]:
    """The fusion methods of the main comparison (no single-modality or teacher references)."""
    methods = list(cfg.get("methods") or ["medmix"])
    return [m for m in methods if not is_single_modality(m) and not m.endswith(LARGE)]


def paper_outputs(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """The table and figure stems ``render paper`` writes for this config."""
    return asked_outputs(cfg, training_datasets(cfg))


def run_header(cfg: dict[str, Any], datasets: Sequence[str] | None = None) -> str:
    """One line saying which data and experts produced a table (demo/offline or real weights)."""
    parts = []
    for ds, dcfg in cfg["datasets"].items():
        if datasets is not None and ds not in datasets:
            continue
        if dcfg["adapter"] == "demo":
            shift = (dcfg.get("demo") or {}).get("shift") or 0
            kind = "synthetic demo cohort" + (f", shift {shift}" if shift else "")
        else:
            kind = f"{dcfg['adapter']} adapter"
        experts = sorted({e for names in dcfg["modalities"].values() for e in names})
        parts.append(f"{ds} ({kind}; experts: {', '.join(experts)})")
    used: dict[str, dict[str, Any]] = {}
    for ds, d in cfg["datasets"].items():
        if datasets is not None and ds not in datasets:  # only the experts of these data
            continue
        for names in d["modalities"].values():
            for e in names:
                if e in cfg["experts"]:
                    used.update(expert_closure(cfg, e))
    specs = list(used.values())
    real = [
        s
        for s in specs
        if not s.get("random_init") and any(k in s for k in ("model_id", "local_dir"))
    ]
    if real:
        source = "foundation-model experts"
    else:
        kinds = []
        if any(
            s.get("type") not in ("minilm", RAG_TYPE) and not s.get("random_init") for s in specs
        ):
            kinds.append("established features")
        if any(s.get("type") == "minilm" for s in specs):
            kinds.append("packaged MiniLM")
        if any(s.get("random_init") for s in specs):
            kinds.append("randomly initialised FM architectures")
        if any(s.get("type") == RAG_TYPE for s in specs):
            kinds.append("RAG branch")
        source = f"offline experts ({', '.join(kinds)})" if kinds else "offline experts"
    return f"Data: {'; '.join(parts)}. Experts: {source}."


def plan_summary(cfg: dict[str, Any]) -> dict[str, Any]:
    """The plan of a config as plain data (what ``python -m medmix.plan`` prints)."""
    datasets = training_datasets(cfg)
    return {
        "datasets": {
            ds: {
                "table1": table1_methods(cfg, ds),
                "protocols": protocol_grid(cfg, ds),
            }
            for ds in datasets
        },
        "protocol_methods": protocol_methods(cfg),
        "external": [list(p) for p in external_pairs(cfg)],
        "efficiency_methods": efficiency_methods(cfg),
        **paper_outputs(cfg),
        "header": run_header(cfg, datasets),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medmix.plan",
        description="Print the runs, tables and figures a config asks for (JSON).",
    )
    parser.add_argument("--config", default="config.yaml", help="a MedMIX config (YAML)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    json.dump(plan_summary(cfg), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    from medmix.cli import run_cli

    raise SystemExit(run_cli(main))
