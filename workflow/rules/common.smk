# Shared helpers for the rules: the paths and the per-rule config slices come from the
# medmix package, so the workflow and the Python entry points agree on one layout.

import hashlib
import json
import re
import shlex
import tempfile

import yaml

from medmix.config import (
    cache_paths,
    dataset_paths,
    dataset_slice,
    table1_methods,
    expert_closure,
    extract_slice,
    is_rag_expert,
    validate_config,
)
from medmix.extract_shards import without_shard_settings
from medmix.outputs import FIGURE_FORMATS, MAIN, TABLE_FORMATS, asked_outputs
from medmix.plan import method_inputs
from medmix.protocol_names import SETTING_REGEX

# Cross-checks beyond the JSON schema (every expert named under datasets is defined).
validate_config(config)

RESULTS = config["results"]
DATASETS = list(config["datasets"])
# Experts the extract rule embeds (a RAG entry is built by the rag rules instead).
EXTRACTED_EXPERTS = [e for e in config["experts"] if not is_rag_expert(config, e)]
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


# Adapter options naming a small file whose content defines the cohort: inputs of the adapter
# job, so editing the file reruns it (data folders are not tracked: too large to hash). A
# named file that does not exist is left to the adapter, which stops with a one-line error.
ADAPTER_FILE_ARGS = ("split_file", "mapping")


def adapter_files(wildcards):
    args = config["datasets"][wildcards.dataset].get("args", {})
    named = {k: str(args[k]) for k in ADAPTER_FILE_ARGS if args.get(k)}
    return {k: v for k, v in named.items() if os.path.isfile(v)}


LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"


wildcard_constraints:
    dataset="[a-z0-9][a-z0-9_-]*",
    modality="[a-z0-9][a-z0-9_]*",
    expert="[a-z0-9][a-z0-9_-]*",
    method="[a-z0-9][a-z0-9_-]*",
    protocol="[a-z0-9][a-z0-9_.-]*",


# -- config slices and long argument lists: files, so the printed commands stay short --
#
# The part of the config a job depends on (its slice) reaches its command as a file, so the
# console shows `--config results/.medmix/config/<hash>.yaml`, not the JSON. Two params:
#   config_slice=lambda wc: inline_json(SLICE)   the slice itself: Snakemake records it and
#                                                reruns the job when it changes
#   cfg=lambda wc, output: slice_file(SLICE)     the file's path, which the command reads; the
#                                                function takes `output`, so Snakemake counts
#                                                the param as derived and does not record it
# The recorded value is the shell-quoted JSON the commands received inline before, so outputs
# of earlier versions of the workflow still match it and are not rerun.
# A long list of arguments (file names, settings) goes the same way through args_file, read
# by the command as `$(cat FILE)`; a long text (a table header) through text_file, read as
# `"$(cat FILE)"`.

GENERATED = f"{RESULTS}/.medmix"


def inline_json(obj):
    """A config slice as canonical (sorted), shell-quoted JSON: the tracked ``config_slice``."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def _content_file(kind, key, suffix, write):
    """``GENERATED/kind/<hash of key><suffix>``, written by ``write(file object)`` the first
    time (atomically: concurrent writers write the same bytes). A dry run writes nothing.
    """
    directory = f"{GENERATED}/{kind}"
    path = f"{directory}/{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"
    if not workflow.dryrun and not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    return path


def slice_file(obj):
    """The file holding the config slice ``obj`` for a command's ``--config``. YAML, because the
    entry points read config files with yaml.safe_load, which takes JSON's 1e-08 for a string;
    named by the content's hash, so a changed slice is a new file."""
    text = json.dumps(obj, sort_keys=True)
    return _content_file(
        "config",
        text,
        ".yaml",
        lambda fh: yaml.safe_dump(json.loads(text), fh, sort_keys=True),
    )


def args_file(values):
    """The file holding ``values``, one per line, for a command's ``$(cat FILE)`` (the shell
    splits it into one argument per value, so no value may contain whitespace)."""
    values = [str(v) for v in values]
    bad = [v for v in values if not v or re.search(r"\s", v)]
    if bad:
        raise ValueError(
            f"arguments passed through a file cannot be empty or hold spaces: {bad}"
        )
    text = "".join(f"{v}\n" for v in values)
    return _content_file("args", text, ".txt", lambda fh: fh.write(text))


def text_file(text):
    """The file holding ``text``, for a command's ``"$(cat FILE)"`` (one argument, spaces and
    all: a table header)."""
    return _content_file("args", text, ".txt", lambda fh: fh.write(text))


# Experts whose pins clash with the shared extract env run in their own env (rule extract).
EXPERT_ENVS = {"moirai": "envs/moirai.yaml"}


def expert_env(name):
    """The conda env of an extraction by ``name``: the expert's own where it (or an expert it
    wraps) needs one, else extract.yaml."""
    for spec in expert_closure(config, name).values():
        if spec.get("type") in EXPERT_ENVS:
            return os.path.join(workflow.basedir, EXPERT_ENVS[spec["type"]])
    return os.path.join(workflow.basedir, "envs/extract.yaml")


def extract_env(wildcards):
    return expert_env(wildcards.expert)


def expert_needs_gpu(expert):
    """1 when the expert (or an expert it wraps) is configured for a CUDA device."""
    specs = expert_closure(config, expert).values()
    return int(
        any(str(s.get("device", "cpu")).startswith(("cuda", "auto")) for s in specs)
    )


def run_summaries(dataset):
    paths = dataset_paths(config, dataset)
    return [
        str(paths.run_dir("full", m) / "summary.json")
        for m in table1_methods(config, dataset)
    ]


def final_outputs():
    """Table 1 and its figures (the catalogue's main group), every format."""
    stems = asked_outputs(config, [], MAIN)
    out = [
        f"{RESULTS}/tables/{t}.{ext}" for t in stems["tables"] for ext in TABLE_FORMATS
    ]
    out += [
        f"{RESULTS}/figures/{f}.{ext}"
        for f in stems["figures"]
        for ext in FIGURE_FORMATS
    ]
    return out


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
    return without_shard_settings(
        {**keep, "datasets": {dataset: dcfg}, "experts": expert_closure(config, name)}
    )


def teacher_env(wildcards):
    return expert_env(teacher_expert(wildcards.dataset, wildcards.modality))


# -- external validation targets (rule extract) --


def fit_source(dataset):
    """The source dataset an external-validation target is embedded for (experts that learn
    from data fit on the source's training split), or None."""
    sources = [
        e["source"] for e in config.get("external") or [] if e["target"] == dataset
    ]
    return sources[0] if sources else None


def fit_manifest_input(wildcards):
    src = fit_source(wildcards.dataset)
    return [f"{RESULTS}/{src}/manifest.parquet"] if src else []


def fit_manifest_arg(wildcards, input):
    return f"--fit-manifest {input.fit[0]}" if input.fit else ""
