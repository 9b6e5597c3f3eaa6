"""Cohort command line: ``python -m cohorts <adapter> ...`` (one subcommand per adapter).

    python -m cohorts demo --kind openi --dataset demo-openi --n-patients 400 --seed 11 \\
        [--shift 0.0] [--evidence additive] --out results/demo-openi [--no-progress | --quiet]

``--evidence`` picks how the modalities share the label signal (additive, redundant,
dominant, informative-missingness; cohorts.demo's docstring, "Evidence settings").

``--no-progress`` hides the progress bar; ``--quiet`` also lowers logging to warnings. Bars
are drawn only when stderr is a terminal (never into a Snakemake job's log).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medmix.cli import (
    add_output_options,
    add_version_argument,
    non_negative_int,
    positive_int,
    run_cli,
    setup_cli_logging,
    show_progress,
)


def _demo(args: argparse.Namespace) -> int:
    from cohorts.demo import generate_cohort
    from cohorts.manifest import read_manifest

    t0 = time.perf_counter()
    path = generate_cohort(
        args.kind,
        Path(args.out),
        args.n_patients,
        args.seed,
        args.dataset,
        args.shift,
        progress=show_progress(args),
        evidence=args.evidence,
    )
    df, meta = read_manifest(path)
    missing = meta.extra.get("missing_fraction", {})
    any_missing = float(df[list(meta.modalities)].isna().any(axis=1).mean())
    prevalence = {name: round(float(df[f"label_{name}"].mean()), 3) for name in meta.labels}
    print(
        f"wrote {path}: {len(df)} samples, {df['patient_id'].nunique()} patients, "
        f"splits {df['split'].value_counts().to_dict()}, missing per modality {missing}, "
        f"any missing {any_missing:.2f}, label prevalence {prevalence}, "
        f"evidence {args.evidence} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cohorts.demo import DEFAULT_EVIDENCE, EVIDENCE, KINDS

    parser = argparse.ArgumentParser(
        prog="python -m cohorts", description="Build a cohort manifest."
    )
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="adapter", required=True, metavar="ADAPTER")
    demo = sub.add_parser("demo", help="generate a synthetic demo cohort (raw files + manifest)")
    demo.add_argument(
        "--kind", required=True, choices=sorted(KINDS), help="which benchmark to imitate"
    )
    demo.add_argument("--dataset", required=True, help="dataset name written into the manifest")
    demo.add_argument("--n-patients", type=positive_int, required=True, help="number of patients")
    demo.add_argument(
        "--seed",
        type=non_negative_int,
        required=True,
        help="generator seed (output is deterministic)",
    )
    demo.add_argument(
        "--shift", type=float, default=0.0, help="cohort shift for external validation (0 = none)"
    )
    demo.add_argument(
        "--evidence",
        default=DEFAULT_EVIDENCE,
        choices=EVIDENCE,
        help=f"how the modalities share the label signal (default {DEFAULT_EVIDENCE})",
    )
    demo.add_argument(
        "--out", required=True, help="output folder: raw/ and manifest.parquet go here"
    )
    add_output_options(demo)
    demo.set_defaults(func=_demo)

    from cohorts.adapters import add_cli as add_adapter_cli

    add_adapter_cli(sub)  # openi, mimic4, mimic3, table
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
