"""Command line: ``python -m extractors extract|gather|list|doctor``.

``extract`` checks the expert's preset (and the presets it references) against the expert
class before any work (:mod:`extractors.presets`): an unknown parameter or an impossible value
is a one-line error, exit code 2.

``extract --no-progress`` hides the progress bar; ``--quiet`` also lowers logging to
warnings. Bars are drawn only when stderr is a terminal (never into a Snakemake job's log).

Sharded extraction (``extraction.shards``, docs/cluster.md): ``extract --shard I/N`` embeds
part I of N of the samples into a part file, and ``gather`` assembles the cache from all N
parts, identical to an unsharded ``extract``; the gather judges ``max_failed_fraction``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medmix.cli import (
    add_config_options,
    add_output_options,
    command_parser,
    run_cli,
    run_subcommand,
    show_progress,
)
from medmix.config import ConfigError, dataset_paths, load_config_arg
from medmix.extract_shards import parse_shard, part_path, part_paths, shard_count


def _register_presets(cfg: dict) -> None:
    from extractors.registry import register_preset

    for name, spec in cfg.get("experts", {}).items():
        register_preset(name, spec)


def cmd_extract(args: argparse.Namespace) -> int:
    from extractors.extract import TooManyFailures, extract
    from extractors.presets import check_presets
    from extractors.registry import create_expert, list_experts

    cfg = load_config_arg(args.config)
    paths = dataset_paths(cfg, args.dataset)
    if args.expert not in cfg["experts"] and args.expert not in list_experts():
        raise ConfigError(
            f"--expert {args.expert}: not a preset of the config's experts: section "
            f"({', '.join(cfg['experts'])}) nor a registered expert"
        )
    try:  # before any work: a parameter the expert cannot take is a config error
        check_presets(cfg, [args.expert])
    except ConfigError as exc:
        inline = args.config.strip().startswith("{")
        raise ConfigError(f"{'--config (inline JSON)' if inline else args.config}: {exc}") from exc
    _register_presets(cfg)
    overrides = {"device": args.device} if args.device else {}
    expert = create_expert(args.expert, **overrides)
    ext = cfg["extraction"]
    out = args.out or paths.cache(args.modality, args.expert)
    if args.shard and not args.out:
        out = part_path(out, *args.shard)
    try:
        summary = extract(
            paths.manifest,
            args.modality,
            expert,
            out,
            shard_size=ext["shard_size"],
            max_failed_fraction=ext["max_failed_fraction"],
            dtype=ext["dtype"],
            progress=show_progress(args),
            fit_manifest=args.fit_manifest,
            force=args.force,
            part=args.shard,
        )
    except TooManyFailures as exc:
        logging.getLogger("medmix.extract").error("%s", exc)
        return 3
    print(
        f"{summary.path}: {summary.ok} ok, {summary.missing} missing, {summary.failed} failed"
        + (f" ({summary.failure_reasons})" if summary.failed else "")
    )
    return 0


def cmd_gather(args: argparse.Namespace) -> int:
    from extractors.extract import TooManyFailures
    from extractors.shards import gather

    cfg = load_config_arg(args.config)
    paths = dataset_paths(cfg, args.dataset)
    out = args.out or paths.cache(args.modality, args.expert)
    parts = args.parts or part_paths(out, shard_count(cfg, args.expert))
    try:
        summary = gather(
            paths.manifest,
            parts,
            out,
            dataset=args.dataset,
            modality=args.modality,
            expert=args.expert,
            max_failed_fraction=cfg["extraction"]["max_failed_fraction"],
        )
    except TooManyFailures as exc:
        logging.getLogger("medmix.extract").error("%s", exc)
        return 3
    print(
        f"{summary.path}: {summary.ok} ok, {summary.missing} missing, {summary.failed} failed"
        f" (gathered from {len(parts)} parts)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from extractors.registry import expert_class, list_experts

    for name in list_experts(args.kind):
        cls = expert_class(name)
        print(f"{name:24s} kind={cls.kind:10s} gpu={'yes' if cls.needs_gpu else 'no'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from extractors.doctor import main as doctor_main

    return doctor_main(args.config, as_json=args.json, only=args.expert or None)


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    """The options that name one cache: config, dataset, modality, expert."""
    add_config_options(p)
    p.add_argument("--modality", required=True, help="modality of the dataset's manifest")
    p.add_argument("--expert", required=True, help="expert name from the config's experts: section")


def main(argv: list[str] | None = None) -> int:
    parser, sub = command_parser("python -m extractors", __doc__)
    p = sub.add_parser("extract", help="run one expert over one modality of a dataset")
    add_cache_arguments(p)
    p.add_argument(
        "--out",
        help="cache path (default: results/{dataset}/embeddings/{modality}/{expert}.parquet)",
    )
    p.add_argument("--device", help="override the expert's device (cpu, cuda, cuda:1)")
    p.add_argument(
        "--force",
        action="store_true",
        help="discard the shards an interrupted earlier run left and extract every sample again "
        "(without it, finished shards that still match this run are reused)",
    )
    add_output_options(p)
    p.add_argument(
        "--fit-manifest",
        help="experts that learn from data fit on this manifest's training split (external "
        "validation: the source cohort's), not on the dataset's own",
    )
    p.add_argument(
        "--shard",
        type=parse_shard,
        metavar="I/N",
        help="embed only part I of N of the samples (contiguous blocks of resume shards) into a "
        "part file for `gather` (default --out: .{expert}.part/I-of-N.parquet beside the cache)",
    )
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser(
        "gather", help="assemble a cache from the parts of a sharded extraction (extract --shard)"
    )
    add_cache_arguments(p)
    p.add_argument(
        "--parts",
        nargs="+",
        help="the part files, all N of them (default: the config's extraction.shards parts "
        "beside the cache)",
    )
    p.add_argument(
        "--out",
        help="cache path (default: results/{dataset}/embeddings/{modality}/{expert}.parquet)",
    )
    add_output_options(p, progress=False)
    p.set_defaults(func=cmd_gather)
    p = sub.add_parser("list", help="list registered experts")
    p.add_argument(
        "--kind",
        help="list only experts of this input kind: image, text, timeseries, volume, slide",
    )
    p.set_defaults(func=cmd_list)
    p = sub.add_parser(
        "doctor", help="check every configured expert's packages, weights and device (no downloads)"
    )
    p.add_argument(
        "config", nargs="?", default="config.yaml", help="config file, e.g. config/paper.yaml"
    )
    p.add_argument("--expert", action="append", help="check only this expert (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)
    return run_subcommand(parser, argv)


def user_errors() -> tuple[type[BaseException], ...]:
    """Beyond :class:`~medmix.errors.UserError`: weights missing or refused by the loading
    policy (the message says how to provide them)."""
    from extractors.loading import LoadingError

    return (LoadingError,)


if __name__ == "__main__":
    sys.exit(run_cli(main, user_errors=user_errors()))
