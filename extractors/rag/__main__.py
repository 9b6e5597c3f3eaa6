"""Command line of the RAG expert: ``python -m extractors.rag kb|index|project|bridge|embed|show``.

    kb       parse MedlinePlus XML (bulk mplus_topics_*.xml or MedQuAD) into docs.parquet
    index    encode the knowledge base with the article encoder into a faiss index (once)
    project  fit the label-free MedCPT -> Qwen2 input-space projection on the knowledge base
    bridge   turn one modality of a dataset into text (bridge/{modality}.parquet)
    embed    retrieve + soft-prompt Qwen2 -> embeddings/{modality}/rag.parquet (+ provenance)
    show     print what was retrieved for one sample

``--config`` is a config file (its ``rag:`` section is used) or an inline JSON slice
``{"results": …, "rag": {…}, "datasets": {…}}`` as the Snakemake rules pass it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from medmix.cli import (
    add_config_options,
    add_dataset_option,
    add_output_options,
    command_parser,
    positive_int,
    run_cli,
    run_subcommand,
)
from medmix.config import ConfigError
from medmix.errors import InputError

log = logging.getLogger("medmix.rag")


def _load(arg: str) -> dict[str, Any]:
    """``--config``: a file or an inline slice (read, not validated: a slice is partial)."""
    text = arg.strip()
    where = "--config (inline)" if text.startswith("{") else f"config file {arg}"
    try:
        if not text.startswith("{"):
            path = Path(arg)
            if not path.is_file():
                raise ConfigError(f"{where} not found" + (" (a folder)" if path.is_dir() else ""))
            text = path.read_text(encoding="utf-8")
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: the config must be a mapping (key: value)")
    return cfg


def _setup(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from medmix.rag_settings import rag_config

    cfg = _load(args.config)
    rag = rag_config(cfg.get("rag"))
    if getattr(args, "device", None):
        rag["device"] = args.device
    return cfg, rag


def _results(cfg: dict[str, Any]) -> Path:
    return Path(cfg.get("results", "results"))


def _manifest_meta(cfg: dict[str, Any], dataset: str, manifest: str | None) -> tuple[Path, Any]:
    from cohorts.manifest import read_manifest

    path = Path(manifest) if manifest else _results(cfg) / dataset / "manifest.parquet"
    _, meta = read_manifest(path)
    return path, meta


def default_image_expert(cfg: dict[str, Any], dataset: str, modality: str) -> str:
    """The first non-RAG expert configured for the modality (the nearest-report bridge's input)."""
    experts = cfg.get("datasets", {}).get(dataset, {}).get("modalities", {}).get(modality, [])
    for name in experts:
        if name != "rag":
            return name
    raise ConfigError(
        f"nearest-report bridge for {dataset}/{modality}: set image_expert (no other expert configured)"
    )


def cmd_kb(args: argparse.Namespace) -> int:
    from extractors.rag.knowledge import build_docs, write_docs

    topics = None
    if args.topics:
        topics = [ln.split("#")[0].strip() for ln in Path(args.topics).read_text().splitlines()]
        topics = [t for t in topics if t]
    docs = build_docs(args.source, max_words=args.max_words, topic_ids=topics)
    meta = {
        "source": Path(args.source).name,
        "max_words": args.max_words,
        "n_topics": docs["topic_id"].nunique(),
    }
    write_docs(docs, args.out, metadata=meta)
    print(f"{args.out}: {len(docs)} docs from {docs['topic_id'].nunique()} topics")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from extractors.rag.expert import knowledge_paths, run_index

    cfg, rag = _setup(args)
    out = Path(args.out_dir) if args.out_dir else knowledge_paths(_results(cfg), rag).root
    run_index(rag, out, threads=args.threads)
    print(f"{out}: index.faiss, docs.parquet, index.json")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from extractors.rag.expert import knowledge_paths, run_projection

    cfg, rag = _setup(args)
    kp = knowledge_paths(_results(cfg), rag)
    index_dir = Path(args.index_dir) if args.index_dir else kp.root
    out = Path(args.out) if args.out else index_dir / "projection.safetensors"
    run_projection(rag, index_dir, out)
    print(f"{out}")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from extractors.rag.bridge import bridge_config, run_bridge, write_bridge

    cfg, rag = _setup(args)
    manifest, mmeta = _manifest_meta(cfg, args.dataset, args.manifest)
    if args.modality not in mmeta.modalities:
        raise InputError(
            f"--modality {args.modality}: {manifest} has no such modality; has {list(mmeta.modalities)}"
        )
    spec = bridge_config(rag, args.modality, mmeta.modalities[args.modality])
    image_cache = args.image_cache
    if spec["type"] == "nearest-report" and not image_cache:
        expert = spec.get("image_expert") or default_image_expert(cfg, args.dataset, args.modality)
        image_cache = (
            _results(cfg) / args.dataset / "embeddings" / args.modality / f"{expert}.parquet"
        )
    if spec["type"] == "nearest-report" and not Path(image_cache).exists():
        raise InputError(
            f"nearest-report bridge for {args.dataset}/{args.modality}: image-expert cache {image_cache} not found; "
            f"extract it first (list the expert under datasets.{args.dataset}.modalities.{args.modality}) "
            f"or set rag.bridges.{args.modality}.image_expert"
        )
    frame, meta = run_bridge(
        manifest,
        args.modality,
        spec,
        image_cache=image_cache,
        device=rag.get("device", "cpu"),
        fit_manifest=args.fit_manifest,
        fit_image_cache=args.fit_image_cache,
    )
    out = (
        Path(args.out)
        if args.out
        else _results(cfg) / args.dataset / "bridge" / f"{args.modality}.parquet"
    )
    write_bridge(frame, out, meta)
    counts = frame["status"].value_counts().to_dict()
    print(
        f"{out}: {counts.get('ok', 0)} ok, {counts.get('missing', 0)} missing, {counts.get('failed', 0)} failed ({spec['type']})"
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from extractors.rag.expert import knowledge_paths, run_embed

    cfg, rag = _setup(args)
    kp = knowledge_paths(_results(cfg), rag)
    base = _results(cfg) / args.dataset
    summary = run_embed(
        rag,
        bridge_path=args.bridge or base / "bridge" / f"{args.modality}.parquet",
        index_dir=args.index_dir or kp.root,
        projection=args.projection or kp.projection,
        out=args.out or base / "embeddings" / args.modality / "rag.parquet",
        provenance=args.provenance,
        dataset=args.dataset,
        modality=args.modality,
        dtype=cfg.get("extraction", {}).get("dtype", "float32"),
    )
    print(
        f"{summary.path}: {summary.ok} ok, {summary.missing} missing, {summary.failed} failed; provenance {summary.provenance}"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from extractors.rag.expert import read_provenance

    prov = read_provenance(args.provenance)
    rows = prov[prov["sample_id"] == args.sample_id]
    if rows.empty:
        raise InputError(f"--sample-id {args.sample_id}: no such sample in {args.provenance}")
    row = rows.iloc[0]
    source = row["bridge_source"] if isinstance(row["bridge_source"], str) else None
    print(json.dumps({"sample_id": row["sample_id"], "bridge_source": source}))
    if row["doc_ids"] is None:
        print("  (nothing retrieved: modality missing or failed)")
        return 0
    for doc, title, score in zip(row["doc_ids"], row["titles"], row["scores"], strict=True):
        print(f"  {score:.3f}  {doc}  {title}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = command_parser("python -m extractors.rag", __doc__)

    p = sub.add_parser("kb", help="parse MedlinePlus XML into docs.parquet")
    p.add_argument(
        "--source", required=True, help="mplus_topics_*.xml, a MedQuAD XML, or a folder of them"
    )
    p.add_argument("--out", required=True, help="the knowledge base to write (docs.parquet)")
    p.add_argument("--topics", help="file with one topic id per line (a subset, in that order)")
    p.add_argument(
        "--max-words", type=positive_int, default=150, help="words per document chunk (default 150)"
    )
    add_output_options(p, progress=False)
    p.set_defaults(func=cmd_kb)

    def common(p: argparse.ArgumentParser, modality: str | None = None) -> None:
        """--config, --device, --quiet; with ``modality`` (its help), --dataset and --modality."""
        add_config_options(p, dataset=False)
        p.add_argument("--device", help="override rag.device (cpu, cuda, cuda:1)")
        add_output_options(p, progress=False)
        if modality is not None:
            add_dataset_option(p)
            p.add_argument("--modality", required=True, help=modality)

    p = sub.add_parser("index", help="build the knowledge index (once, shared by all datasets)")
    common(p)
    p.add_argument("--out-dir", help="default: {results}/knowledge/{kb}")
    p.add_argument("--threads", type=positive_int, help="CPU threads for encoding and faiss")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("project", help="fit the label-free projection on the knowledge base")
    common(p)
    p.add_argument(
        "--index-dir", help="the knowledge index folder (default: {results}/knowledge/{kb})"
    )
    p.add_argument("--out", help="default: {index-dir}/projection.safetensors")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("bridge", help="bridge one modality of a dataset to text")
    common(p, modality="modality of the dataset to bridge")
    p.add_argument("--manifest", help="default: {results}/{dataset}/manifest.parquet")
    p.add_argument("--image-cache", help="the image expert's cache (nearest-report bridge)")
    p.add_argument("--fit-manifest",
                   help="nearest-report: hand out the training reports of this (source) cohort "
                   "instead of this one's (external-validation targets)")  # fmt: skip
    p.add_argument(
        "--fit-image-cache", help="the source cohort's image-expert cache (with --fit-manifest)"
    )
    p.add_argument("--out", help="default: {results}/{dataset}/bridge/{modality}.parquet")
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("embed", help="retrieve + encode one bridged modality into the rag cache")
    common(p, modality="the bridged modality to embed")
    p.add_argument("--bridge", help="default: {results}/{dataset}/bridge/{modality}.parquet")
    p.add_argument(
        "--index-dir", help="the knowledge index folder (default: {results}/knowledge/{kb})"
    )
    p.add_argument("--projection", help="default: {index-dir}/projection.safetensors")
    p.add_argument("--out", help="default: {results}/{dataset}/embeddings/{modality}/rag.parquet")
    p.add_argument(
        "--provenance", help="retrieval provenance (default: beside --out, .provenance.parquet)"
    )
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("show", help="what was retrieved for one sample")
    p.add_argument("--provenance", required=True, help="a rag cache's .provenance.parquet")
    p.add_argument("--sample-id", required=True, help="the sample to show")
    p.set_defaults(func=cmd_show)
    return run_subcommand(parser, argv)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors of the RAG chain that are the user's to fix, beyond :class:`UserError`: missing
    or refused weights, a knowledge index that does not match."""
    from extractors.loading import LoadingError
    from extractors.rag.index import IndexError_

    return (LoadingError, IndexError_)


if __name__ == "__main__":
    sys.exit(run_cli(main, user_errors=user_errors()))
