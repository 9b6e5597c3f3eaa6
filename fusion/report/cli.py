"""``python -m fusion.render tables|figures|paper|outputs``: the report's command line."""

from __future__ import annotations

import argparse
import json

from fusion.report.paper import render_main_figures, render_main_tables, render_paper
from fusion.report.registry import MAIN, PAPER, figure_patterns, table_stems
from medmix.cli import add_version_argument
from medmix.config import load_config_arg
from medmix.plan import paper_outputs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fusion.render")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, what in (
        ("tables", "Table 1 (main)"),
        ("figures", "the main AUROC and fusion-weight figures"),
    ):
        writes = table_stems(MAIN) if name == "tables" else figure_patterns(MAIN)
        p = sub.add_parser(name, help=f"render {what} from metrics tables",
                           description=f"Writes: {', '.join(writes)}.")  # fmt: skip
        p.add_argument(
            "--metrics", nargs="+", required=True, help="metrics.parquet file(s) of the datasets"
        )
        p.add_argument("--out-dir", required=True, help="folder to write into")
        p.add_argument(
            "--header", default="", help="header line describing the runs (default: none)"
        )
        if name == "figures":
            p.add_argument(
                "--predictions", nargs="*", default=[], help="MedMIX predictions.parquet files"
            )
    p = sub.add_parser(
        "paper", help="every configured paper table and figure beyond Table 1",
        description=f"Tables: {', '.join(sorted(table_stems(PAPER)))}. "
        f"Figures: {', '.join(sorted(figure_patterns(PAPER)))}. Which of them a config asks for: "
        "the `outputs` command.",
    )  # fmt: skip
    p.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    p.add_argument("--tables-dir", required=True, help="folder for the tables")
    p.add_argument("--figures-dir", required=True, help="folder for the figures")
    p = sub.add_parser("outputs", help="list the stems `paper` writes for a config")
    p.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "outputs":
        print(json.dumps(paper_outputs(load_config_arg(args.config)), indent=1))
        return 0
    if args.cmd == "paper":
        written = render_paper(load_config_arg(args.config), args.tables_dir, args.figures_dir)
    elif args.cmd == "tables":
        written = render_main_tables(args.metrics, args.out_dir, args.header)
    else:
        written = render_main_figures(args.metrics, args.predictions, args.out_dir, args.header)
    for path in written:
        print(path)
    return 0
