"""The subcommand helpers of medmix.cli: one parser shape, one set of config options, one dispatch."""

from __future__ import annotations

import argparse

import pytest

from medmix.cli import add_config_options, command_parser, run_subcommand


def test_command_parser_requires_a_subcommand_and_keeps_the_description() -> None:
    doc = "Title.\n\n    python -m x run   (indented, kept as written)\n"
    parser, sub = command_parser("python -m x", doc)
    sub.add_parser("run")
    assert parser.prog == "python -m x"
    assert "    python -m x run   (indented, kept as written)" in parser.format_help()
    assert "--version" in parser.format_help()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2
    assert parser.parse_args(["run"]).cmd == "run"


def test_command_parser_without_version() -> None:
    parser, sub = command_parser("python -m x", None, version=False)
    sub.add_parser("run")
    assert "--version" not in parser.format_help()


def test_config_options() -> None:
    parser, sub = command_parser("python -m x", None)
    add_config_options(sub.add_parser("with"))
    add_config_options(sub.add_parser("without"), dataset=False)
    args = parser.parse_args(["with", "--dataset", "d"])
    assert (args.config, args.dataset) == ("config.yaml", "d")
    with pytest.raises(SystemExit):
        parser.parse_args(["with"])  # --dataset is required
    args = parser.parse_args(["without", "--config", "c.yaml"])
    assert args.config == "c.yaml" and not hasattr(args, "dataset")


def test_run_subcommand_dispatches_to_the_chosen_func() -> None:
    seen: list[argparse.Namespace] = []

    def run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    parser, sub = command_parser("python -m x", None)
    p = sub.add_parser("run")
    p.add_argument("--n", type=int)
    p.set_defaults(func=run)
    sub.add_parser("other").set_defaults(func=lambda args: 0)
    assert run_subcommand(parser, ["run", "--n", "3"]) == 7
    assert len(seen) == 1 and seen[0].n == 3 and seen[0].cmd == "run"
    assert run_subcommand(parser, ["other"]) == 0 and len(seen) == 1
