"""Write or check envs/constraints.txt: the one list of pinned versions every install uses.

The README's two commands and .ci/run install with ``pip install -c envs/constraints.txt ...``,
so what the tests run with is what this file pins, whatever the package index offers on the
day. The family conda envs (envs/*.yaml, except an expert's isolated env such as moirai.yaml)
must pin the same versions; tests/medmix/test_envs.py checks all three agree.

To move a pin: in a venv made by the README's test command, ``pip install -c
envs/constraints.txt 'pkg==NEW'`` (edit the file's line for pkg first), run the tests, then
``python envs/lock.py`` to rewrite the file from that environment, and update the env yaml
pins it reports. ``python envs/lock.py --check`` only compares (exit 1 on a difference).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints.txt"
# The project itself and the installer's own tools are not pinned here.
NOT_PINNED = {"medmix", "pip"}
HEADER = """\
# Pinned versions of every distribution the README's test command installs (Python 3.11,
# Linux x86_64), used as `pip install -c envs/constraints.txt ...` by the README, .ci/run and
# docs. A constraint only applies when something asks for that package, so the CUDA libraries
# below are inert where torch comes from another index (CPU wheels, another CUDA).
# Regenerate with `python envs/lock.py` (see its docstring); tests/medmix/test_envs.py checks that
# the installed environment, this file and envs/*.yaml agree.
"""


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """normalised name -> pinned version, from ``name==version`` lines."""
    pins: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}:{lineno}: not a `name==version` pin: {raw!r}")
        pins[norm(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, tuple[str, str]]:
    """normalised name -> (name as published, version) of this environment's distributions."""
    out: dict[str, tuple[str, str]] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and norm(name) not in NOT_PINNED:
            out[norm(name)] = (name, dist.version)
    return out


def differences(pins: dict[str, str], have: dict[str, tuple[str, str]]) -> list[str]:
    """Installed distributions that the constraints do not pin at their installed version."""
    problems = []
    for key, (name, version) in sorted(have.items()):
        want = pins.get(key)
        if want is None:
            problems.append(f"{name} {version} is installed but not pinned")
        elif want != version.split("+")[0]:
            problems.append(f"{name}: pinned {want}, installed {version}")
    return problems


def render(have: dict[str, tuple[str, str]]) -> str:
    lines = [f"{name}=={version.split('+')[0]}" for name, version in have.values()]
    return HEADER + "\n".join(sorted(lines, key=str.lower)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare this environment with envs/constraints.txt; write nothing",
    )
    args = parser.parse_args(argv)
    have = installed()
    if args.check:
        problems = differences(read_constraints(), have)
        for p in problems:
            print(p)
        return 1 if problems else 0
    tmp = CONSTRAINTS.with_suffix(".tmp")
    tmp.write_text(render(have))
    tmp.replace(CONSTRAINTS)
    print(f"wrote {CONSTRAINTS} ({len(have)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
