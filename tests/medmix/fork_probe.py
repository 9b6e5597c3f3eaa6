"""A command line for tests/medmix/test_fork_server.py: reports the process it runs in."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from medmix.cli import run_cli
from medmix.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--pid-file")
    ap.add_argument("--code", type=int, default=0)
    ap.add_argument("--user-error", action="store_true")
    args = ap.parse_args(argv)
    if args.pid_file:
        with open(args.pid_file, "w") as fh:
            fh.write(str(os.getpid()))
    if args.user_error:
        raise UserError("probe: a user error")
    print(json.dumps({
        "pid": os.getpid(),
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "probe_var": os.environ.get("PROBE_VAR"),
        "torch_loaded": "torch" in sys.modules,
    }))  # fmt: skip
    sys.stdout.flush()
    time.sleep(args.sleep)
    return args.code


if __name__ == "__main__":
    sys.exit(run_cli(main))
