# Shared helpers for the rules: the paths and the per-rule config slices come from the
# medmix package, so the workflow and the Python entry points agree on one layout.

import json
import re
import shlex

from fusion.registry import method_inputs
from medmix.config import (
    cache_paths,
    dataset_paths,
    dataset_slice,
    table1_methods,
    expert_closure,
    extract_slice,
    validate_config,
)

# Cross-checks beyond the JSON schema (every expert named under datasets is defined).
validate_config(config)

RESULTS = config["results"]
DATASETS = list(config["datasets"])
DEMO_DATASETS = [d for d in DATASETS if config["datasets"][d]["adapter"] == "demo"]
ADAPTER_DATASETS = [d for d in DATASETS if config["datasets"][d]["adapter"] != "demo"]


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when the list is empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def adapter_args(dataset):
    """A dataset's ``args:`` as adapter command-line options (true -> bare flag)."""
    out = []
    for key, value in config["datasets"][dataset].get("args", {}).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:  # 0 is a value
            out += [flag, shlex.quote(str(value))]
    return " ".join(out)
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"


wildcard_constraints:
    dataset="[a-z0-9][a-z0-9_-]*",
    modality="[a-z0-9][a-z0-9_]*",
    expert="[a-z0-9][a-z0-9_-]*",
    method="[a-z0-9][a-z0-9_-]*",
    protocol="[a-z0-9][a-z0-9_.-]*",


def inline_json(obj):
    """A config slice as one shell-quoted JSON argument (params changes trigger reruns)."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def modalities_of_method(dataset, method):
    mods = list(config["datasets"][dataset]["modalities"])
    if method.startswith("medmix-only-"):
        only = method.removeprefix("medmix-only-")
        if only not in mods:
            raise ValueError(f"method {method}: dataset {dataset} has no modality {only!r}")
        return [only]
    return mods


# Experts whose pins clash with the shared extract env run in their own env (rule extract).
EXPERT_ENVS = {"moirai": "envs/moirai.yaml"}


def extract_env(wildcards):
    """The conda env of one extraction: the expert's own where it needs one, else extract.yaml."""
    for spec in expert_closure(config, wildcards.expert).values():
        if spec.get("type") in EXPERT_ENVS:
            return os.path.join(workflow.basedir, EXPERT_ENVS[spec["type"]])
    return os.path.join(workflow.basedir, "envs/extract.yaml")


def expert_needs_gpu(expert):
    """1 when the expert (or an expert it wraps) is configured for a CUDA device."""
    specs = expert_closure(config, expert).values()
    return int(any(str(s.get("device", "cpu")).startswith(("cuda", "auto")) for s in specs))


def run_summaries(dataset):
    paths = dataset_paths(config, dataset)
    return [str(paths.run_dir("full", m) / "summary.json") for m in table1_methods(config, dataset)]


def final_outputs():
    out = [f"{RESULTS}/tables/main.{ext}" for ext in ("md", "csv", "tex")]
    out += [f"{RESULTS}/figures/main_auroc.{ext}" for ext in ("png", "svg")]
    out += [f"{RESULTS}/figures/fusion_weights.{ext}" for ext in ("png", "svg")]
    return out


def medmix_predictions():
    files = []
    for ds in DATASETS:
        run = dataset_paths(config, ds).run_dir("full", "medmix")
        files += [str(run / f"seed{s}" / "predictions.parquet") for s in config["seeds"]]
    return files


def run_header(cfg):
    """One line saying which data and experts produced a table (demo/offline or real weights)."""
    parts = []
    for ds, dcfg in cfg["datasets"].items():
        kind = "synthetic demo cohort" if dcfg["adapter"] == "demo" else f"{dcfg['adapter']} adapter"
        experts = sorted({e for names in dcfg["modalities"].values() for e in names})
        parts.append(f"{ds} ({kind}; experts: {', '.join(experts)})")
    offline = all(
        spec.get("random_init", False) or not any(k in spec for k in ("model_id", "local_dir"))
        for spec in cfg["experts"].values()
    )
    source = "offline experts (established features, packaged MiniLM, randomly initialised FM architectures)" if offline else "foundation-model experts"
    return f"Test split, mean ± std over {len(cfg['seeds'])} seeds. Data: " + "; ".join(parts) + f". Experts: {source}."


def train_inputs(wildcards):
    """Expert caches and teacher caches of one (dataset, method) run."""
    inputs = method_inputs(config, wildcards.dataset, wildcards.method)
    files = [str(p) for ev in inputs.caches.values() for p in ev.values()]
    files += [str(p) for p in inputs.teachers.values()]
    return sorted(set(files))


def train_slice(dataset):
    """dataset_slice plus the teacher presets the dataset names (validated by the CLI)."""
    cfg = dataset_slice(config, dataset)
    experts = dict(cfg["experts"])
    for name in (config["datasets"][dataset].get("teachers") or {}).values():
        experts.update(expert_closure(config, name))
    return {**cfg, "experts": experts}


# -- teachers (rule extract_teacher) --


def teacher_expert(dataset, modality):
    teachers = config["datasets"][dataset].get("teachers") or {}
    if modality not in teachers:
        raise ValueError(
            f"dataset {dataset}: no teacher for modality {modality!r} (datasets.{dataset}.teachers)"
        )
    return teachers[modality]


def teacher_slice(dataset, modality):
    """The config one teacher extraction depends on: the modality and its teacher preset."""
    name = teacher_expert(dataset, modality)
    dcfg = dict(config["datasets"][dataset])
    dcfg["modalities"] = {modality: [name]}
    dcfg["teachers"] = {modality: name}
    keep = {k: config[k] for k in ("results", "extraction") if k in config}
    return {**keep, "datasets": {dataset: dcfg}, "experts": expert_closure(config, name)}


def teacher_env(wildcards):
    """The teacher expert's own conda env where it needs one (EXPERT_ENVS), else extract.yaml."""
    name = teacher_expert(wildcards.dataset, wildcards.modality)
    for spec in expert_closure(config, name).values():
        if spec.get("type") in EXPERT_ENVS:
            return os.path.join(workflow.basedir, EXPERT_ENVS[spec["type"]])
    return os.path.join(workflow.basedir, "envs/extract.yaml")


# -- external validation targets (rule extract) --


def fit_source(dataset):
    """The source dataset an external-validation target is embedded for (experts that learn
    from data fit on the source's training split), or None."""
    sources = [e["source"] for e in config.get("external") or [] if e["target"] == dataset]
    return sources[0] if sources else None


def fit_manifest_input(wildcards):
    src = fit_source(wildcards.dataset)
    return [f"{RESULTS}/{src}/manifest.parquet"] if src else []


def fit_manifest_arg(wildcards, input):
    return f"--fit-manifest {input.fit[0]}" if input.fit else ""
