"""Command line: ``python -m fusion train|select|evaluate|predict|ablation|external|methods``.

    python -m fusion train --config config.yaml --dataset demo-openi --method medmix \
        --protocol full --out results/demo-openi/runs/full/medmix [--seeds 0 1 2] [--threads 1] \
        [--selection results/demo-openi/selection/medmix.json]
    python -m fusion select --config config.yaml --dataset demo-openi --method medmix \
        [--out results/demo-openi/selection/medmix.json]
    python -m fusion evaluate --config config.yaml --dataset demo-openi \
        --out results/demo-openi/metrics.parquet
    python -m fusion predict --model results/demo-openi/runs/full/medmix/seed0 \
        --input frontal/radiomics=results/demo-openi/embeddings/frontal/radiomics.parquet \
        [--input report/minilm=...] --out predictions.parquet
    python -m fusion ablation train --config config.yaml --dataset demo-openi --variant no_rag \
        --out results/demo-openi/runs/ablation/no_rag
    python -m fusion external --config config.yaml --source demo-mimic \
        --target demo-mimic-shift --method medmix

``train`` of a method that cannot run here (OneLLM without its weights) writes a run marked
``"status": "unavailable"`` and exits 0, so the workflow goes on and the tables mark the row.
``select`` trains the grid of the config's ``fusion.select`` on the train and val rows of the
full data and writes the values chosen on val; ``train --selection`` uses them.
``ablation`` (:mod:`fusion.ablations`) and ``external`` (:mod:`fusion.external.cli`) parse
their own arguments. Each command imports its heavy modules (torch) only when it runs, so the
command line starts light: a local workflow's fork server (:mod:`medmix.fork_server`) can then
run it with those imports already done.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fusion.registry import list_methods
from medmix.cli import (
    add_config_options,
    add_output_options,
    command_parser,
    non_negative_int,
    positive_int,
    run_cli,
    run_subcommand,
)
from medmix.config import dataset_paths, load_config_arg, select_methods

log = logging.getLogger("medmix.fusion")


def cmd_train(args: argparse.Namespace) -> int:
    from fusion.train import run_training

    cfg = load_config_arg(args.config)
    out = args.out or dataset_paths(cfg, args.dataset).run_dir(args.protocol, args.method)
    if args.selection is None and args.method in select_methods(cfg, args.dataset):
        log.warning(
            "fusion.select is on for %s but no --selection is given: the config's fixed values "
            "are used (run `python -m fusion select` and pass its JSON)",
            args.method,
        )
    run_training(
        cfg,
        args.dataset,
        args.method,
        args.protocol,
        out,
        seeds=args.seeds,
        threads=args.threads,
        device=args.device,
        selection=args.selection,
    )
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from fusion.select import run_selection

    cfg = load_config_arg(args.config)
    record = run_selection(
        cfg,
        args.dataset,
        args.method,
        args.out,
        seeds=args.seeds,
        threads=args.threads,
        device=args.device,
    )
    print(json.dumps({"chosen": record["chosen"], "seconds": record["seconds"]}, sort_keys=True))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fusion.evaluate import write_metrics_table

    cfg = load_config_arg(args.config)
    paths = dataset_paths(cfg, args.dataset)
    out = args.out or paths.metrics
    df = write_metrics_table(paths.root / "runs", args.dataset, out)
    runs = df[["protocol", "method", "seed"]].drop_duplicates() if len(df) else df
    log.info("%s: %d rows from %d run seed(s) -> %s", args.dataset, len(df), len(runs), out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fusion.predict import PredictInputError, predict

    inputs: dict[str, dict[str, str]] = {}
    for item in args.input:
        key, sep, path = item.partition("=")
        modality, slash, expert = key.partition("/")
        if not sep or not slash or not modality or not expert or not path:
            raise PredictInputError(f"--input {item!r}: expected MODALITY/EXPERT=CACHE.parquet")
        inputs.setdefault(modality, {})[expert] = path
    res = predict(args.model, inputs, device=args.device)
    frame = res.to_frame()
    frame.to_parquet(args.out, index=False)
    log.info("%d samples (%d without any modality) -> %s", len(frame), res.n_no_modality, args.out)
    return 0


def cmd_ablation(rest: list[str]) -> int:
    from fusion.ablations import main as ablation_main

    return ablation_main(rest)


def cmd_external(rest: list[str]) -> int:
    from fusion.external.cli import main as external_main

    return external_main(rest)


# Commands that parse their own arguments (`python -m fusion ablation --help`).
FORWARDED = {"ablation": cmd_ablation, "external": cmd_external}


def cmd_methods(args: argparse.Namespace) -> int:
    for name in list_methods():
        print(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = command_parser("python -m fusion", __doc__)
    p = sub.add_parser("train", help="train all seeds of one (dataset, method, protocol)")
    add_config_options(p)
    p.add_argument(
        "--method",
        required=True,
        help="medmix, meanavg, concat, linear-probe, max, attention, m3care, adacomed, onellm, "
        "<base>-only-<modality>, <modality>-large",
    )
    p.add_argument(
        "--protocol",
        default="full",
        help="missing-modality protocol setting: full, train_drop_one-{modality}-{r}, "
        "test_random-{p}, mnar-label-{p}, replay-{p}, ... (default: full)",
    )
    p.add_argument("--out", help="run folder (default: results/{dataset}/runs/{protocol}/{method})")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", help="default: the config's seeds")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (bf16 autocast on cuda)")
    p.add_argument(
        "--selection",
        help="values chosen on val for this (dataset, method) by `select` (its JSON); "
        "default: the config's fusion values",
    )
    add_output_options(p, progress=False)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "select", help="choose the fusion.select grid's values on val for one (dataset, method)"
    )
    add_config_options(p)
    p.add_argument("--method", required=True, help="a neural fusion method (see train)")
    p.add_argument("--out", help="default: results/{dataset}/selection/{method}.json")
    p.add_argument(
        "--seeds", type=non_negative_int, nargs="+", help="the run's seeds (default: the "
        "config's); the first fusion.select.seeds of them are trained",
    )  # fmt: skip
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (bf16 autocast on cuda)")
    add_output_options(p, progress=False)
    p.set_defaults(func=cmd_select)
    p = sub.add_parser("evaluate", help="collect every run's metrics.json into one long table")
    add_config_options(p)
    p.add_argument("--out", help="default: results/{dataset}/metrics.parquet")
    add_output_options(p, progress=False)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="score caches with a saved model (any subset of experts)")
    p.add_argument("--model", required=True, help="a seed folder: model.safetensors + config.json")
    p.add_argument("--input", action="append", required=True, help="MODALITY/EXPERT=CACHE.parquet")
    p.add_argument("--out", required=True, help="predictions (Parquet): prob_*, alpha_*, beta_*")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: cpu)")
    add_output_options(p, progress=False)
    p.set_defaults(func=cmd_predict)
    # listed for --help; main() hands their arguments to their own parsers (FORWARDED)
    sub.add_parser("ablation", add_help=False, help="list or train the structural ablations")
    sub.add_parser("external", add_help=False, help="evaluate saved runs on another cohort")
    p = sub.add_parser("methods", help="list registered fusion methods")
    p.set_defaults(func=cmd_methods)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:
        return FORWARDED[argv[0]](argv[1:])
    return run_subcommand(parser, argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
