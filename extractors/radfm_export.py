"""``python -m extractors.radfm_export SRC DST``: RadFM's vision encoder from its full
``pytorch_model.bin`` (SRC) into a safetensors file (DST) that the ``radfm`` expert loads with
``weights_only`` safety and without the language model.

A module of its own: run as ``__main__``, a module that registers experts (such as
:mod:`extractors.experts.fm_volume`) would register them a second time.
"""

from __future__ import annotations

import argparse
import sys

from extractors.experts.radfm_vit import radfm_export
from extractors.loading import LoadingError
from medmix.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extractors.radfm_export", description=__doc__)
    parser.add_argument("src", help="RadFM's pytorch_model.bin")
    parser.add_argument("dst", help="the safetensors file to write")
    args = parser.parse_args(argv)
    print(radfm_export(args.src, args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, user_errors=(LoadingError,)))
