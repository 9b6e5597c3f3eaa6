"""Command line: ``python -m fusion.protocols list|test``.

``list`` prints the settings the config's ``protocols:`` section expands to; ``test``
evaluates a dataset's ``full`` run under test-only settings
(:func:`fusion.evaluate.run_test_protocols`). ``--help`` shows the protocols' description
(:mod:`fusion.protocols`).
"""

from __future__ import annotations

import json

import fusion.protocols
from medmix.cli import add_config_options, command_parser, positive_int, run_cli
from medmix.config import dataset_paths, load_config_arg
from medmix.io import write_text_atomic
from medmix.logs import setup_logging
from medmix.protocol_names import expand_settings


def main(argv: list[str] | None = None) -> int:
    parser, sub = command_parser(
        "python -m fusion.protocols", fusion.protocols.__doc__, version=False
    )
    add_config_options(
        sub.add_parser("list", help="the settings the config's protocols: section expands to")
    )
    p = sub.add_parser("test", help="evaluate a full run under test-only settings")
    add_config_options(p)
    p.add_argument("--method", required=True)
    p.add_argument("--settings", nargs="+", required=True)
    p.add_argument("--source", help="the full run folder (default runs/full/{method})")
    p.add_argument("--done", help="write this JSON marker (the settings written) at the end")
    p.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config_arg(args.config)
    dataset_paths(cfg, args.dataset)  # an unknown --dataset: one line naming it
    if args.cmd == "list":
        mods = list(cfg["datasets"][args.dataset]["modalities"])
        for s in expand_settings(cfg.get("protocols"), mods):
            print(s)
        return 0
    # imported here: the command line itself stays torch-free, so that a local workflow's
    # fork server (medmix.fork_server) can run the job with torch already imported
    from fusion.evaluate import run_test_protocols

    written = run_test_protocols(
        cfg, args.dataset, args.method, args.settings, source=args.source, threads=args.threads
    )
    if args.done:
        write_text_atomic(
            args.done,
            json.dumps({"dataset": args.dataset, "method": args.method,
                        "settings": args.settings, "runs": [str(p) for p in written]}, indent=1),
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
