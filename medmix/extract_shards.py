"""Sharded extraction: how many cluster jobs embed one cache, and where their parts go.

``extraction.shards: N`` (default 1, one job per cache as before) splits every cache of the
extract rule into N jobs; ``extraction.shards_by_expert: {expert: N}`` overrides it per
expert. Part ``i`` of ``N`` (1-based) is written to
``{dataset}/embeddings/{modality}/.{expert}.part/{i}-of-{N}.parquet`` and the gather job
assembles the usual ``{expert}.parquet`` from all N parts (``python -m extractors gather``).

The split is contiguous and aligned to the cache's own resume shards
(``extraction.shard_size`` rows each, in manifest order): part ``i`` takes resume shards
``[(i-1)*S//N, i*S//N)`` of the ``S`` the manifest needs, so every batch an expert sees is the
one the unsharded run would have given it, and the gathered file is byte-identical. With more
parts than resume shards some parts are empty (still written, still gathered).

Torch- and pandas-free: the Snakefile imports it at parse time.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medmix.config import ConfigError, dataset_paths, extract_slice, is_rag_expert, section

# The settings that only say how the work is split: left out of every job's tracked config
# slice, so that turning sharding on or off reruns nothing but the jobs whose files change.
SHARD_KEYS = ("shards", "shards_by_expert")


def shard_count(cfg: dict[str, Any], expert: str) -> int:
    """How many jobs extract each cache of ``expert`` (1: a single, unsharded job)."""
    ext = section(cfg, "extraction")
    per_expert = ext.get("shards_by_expert") or {}
    return int(per_expert.get(expert, ext.get("shards", 1)))


def check_shard_settings(cfg: dict[str, Any]) -> None:
    """``shards_by_expert`` may name only experts the extract rule embeds."""
    per_expert = section(cfg, "extraction").get("shards_by_expert") or {}
    experts = cfg.get("experts") or {}
    for name in per_expert:
        if name not in experts:
            raise ConfigError(
                f"extraction.shards_by_expert: {name!r} is not an expert of the experts: section"
            )
        if is_rag_expert(cfg, name):
            raise ConfigError(
                f"extraction.shards_by_expert: {name!r} is the RAG expert, built by the rag "
                "rules in one job; it cannot be sharded"
            )


def without_shard_settings(config_slice: dict[str, Any]) -> dict[str, Any]:
    """``config_slice`` with the :data:`SHARD_KEYS` left out of its ``extraction`` section."""
    if "extraction" not in config_slice:
        return config_slice
    ext = {k: v for k, v in config_slice["extraction"].items() if k not in SHARD_KEYS}
    return {**config_slice, "extraction": ext}


def extract_job_slice(cfg: dict[str, Any], dataset: str, modality: str) -> dict[str, Any]:
    """The config an extraction job (rule extract or extract_gather) depends on; how the work
    is split is not part of it (the part files' names carry it), so switching sharding on or
    off reruns no other job."""
    return without_shard_settings(extract_slice(cfg, dataset, modality))


def shard_job_slice(cfg: dict[str, Any], dataset: str, modality: str) -> dict[str, Any]:
    """A shard job's config: :func:`extract_job_slice` without ``max_failed_fraction``, the
    gather's business (a new threshold reruns the gather only)."""
    job = extract_job_slice(cfg, dataset, modality)
    ext = {k: v for k, v in job["extraction"].items() if k != "max_failed_fraction"}
    return {**job, "extraction": ext}


def cache_parts(cfg: dict[str, Any], dataset: str, modality: str, expert: str) -> list[str]:
    """The part files the gather of one cache reads."""
    cache = dataset_paths(cfg, dataset).cache(modality, expert)
    return part_paths(cache, shard_count(cfg, expert))


def part_path(cache: str | Path, part: int | str, parts: int | str) -> str:
    """Where part ``part`` of ``parts`` of ``cache`` goes (``{part}``/``{parts}`` may be
    Snakemake wildcards, and ``cache`` a pattern)."""
    cache = str(cache)
    folder, _, name = cache.rpartition("/")
    stem = name.removesuffix(".parquet")
    return f"{folder}/.{stem}.part/{part}-of-{parts}.parquet"


def part_paths(cache: str | Path, parts: int) -> list[str]:
    """Every part of ``cache``, in order."""
    return [part_path(cache, i, parts) for i in range(1, parts + 1)]


def part_range(n_shards: int, part: int, parts: int) -> range:
    """The resume shards (indices) of part ``part`` (1-based) of ``parts``: contiguous, sizes
    differing by at most one."""
    if not 1 <= part <= parts:
        raise ValueError(f"part {part} of {parts}: needs 1 <= part <= parts")
    return range((part - 1) * n_shards // parts, part * n_shards // parts)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (argparse type of ``--shard``): part I of N, 1 <= I <= N."""
    left, sep, right = text.partition("/")
    try:
        part, parts = int(left), int(right)
    except ValueError:
        part, parts = 0, 0
    if not sep or not 1 <= part <= parts:
        raise argparse.ArgumentTypeError(
            f"must be I/N with 1 <= I <= N (part I of N, e.g. 2/4), got {text!r}"
        )
    return part, parts
