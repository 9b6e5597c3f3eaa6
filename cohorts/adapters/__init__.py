"""Real-cohort adapters: a dataset as its publisher distributes it -> the manifest (DESIGN §3.1).

One module per source: :mod:`.openi` (IU chest X-ray, Kaggle tables or NLM XML),
:mod:`.mimic4` (MIMIC-IV + MIMIC-CXR-JPG + MIMIC-IV-Note), :mod:`.mimic3` (MIMIC-III v1.4)
and :mod:`.table` (any CSV/Parquet with a column mapping; MMIST-ccRCC uses it). Shared parts:
:mod:`.readers` (streaming CSV readers with clear errors), :mod:`.ehr_variables` (the 46
EHR variables and their itemids), :mod:`.ehr` (hourly 48 h series), :mod:`.summary` (the
per-adapter summary table).
"""

from __future__ import annotations

import argparse


class AdapterError(ValueError):
    """Input that an adapter cannot use; the message names the file and, where it applies, the column."""


ADAPTER_MODULES = ("openi", "mimic4", "mimic3", "table")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register every adapter's subcommand (``openi``, ``mimic4``, ``mimic3``, ``table``)."""
    import importlib

    for name in ADAPTER_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_cli(subparsers)


def add_common_args(p: argparse.ArgumentParser, dataset: str, seed: int = 0) -> None:
    """``--out``, ``--dataset``, ``--seed``: the arguments every adapter takes."""
    p.add_argument(
        "--out", required=True, help="output folder: manifest.parquet, summary.csv, summary.md"
    )
    p.add_argument(
        "--dataset", default=dataset, help=f"dataset name in the manifest (default {dataset})"
    )
    p.add_argument("--seed", type=int, default=seed, help=f"split seed (default {seed})")
