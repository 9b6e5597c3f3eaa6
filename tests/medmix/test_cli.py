"""The command lines: help text on every option, ``--version``, ``--quiet`` vs ``--no-progress``,
and progress bars only on a terminal (never tqdm frames in a Snakemake job's log)."""

from __future__ import annotations

import argparse
import fcntl
import importlib
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from medmix.progress import progress, progress_enabled
from medmix.version import git_commit, medmix_version, version_string

REPO = Path(__file__).resolve().parents[2]
# every ``python -m`` entry point whose parser is checked (module holding ``main(argv)``)
CLIS = [
    "cohorts.__main__",
    "extractors.__main__",
    "extractors.rag.__main__",
    "extractors.status",
    "fusion.__main__",
    "fusion.render",
    "fusion.efficiency",
]
# the ones that also carry ``--version``
VERSIONED = [m for m in CLIS if m != "extractors.status"]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a CLI's ``main`` builds (caught at ``parse_args``; nothing runs)."""

    def catch(self: argparse.ArgumentParser, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    main = importlib.import_module(module).main
    with pytest.raises(_Parsed) as got:
        main([])
    return got.value.parser


def walk(parser: argparse.ArgumentParser, path: str):
    """(command path, action) for every action of the parser and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the subcommands' own help
                yield f"{path} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, action


@pytest.mark.parametrize("module", CLIS)
def test_every_option_has_help(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = parser_of(module, monkeypatch)
    missing = [
        f"{path}: {'/'.join(a.option_strings) or a.dest}"
        for path, a in walk(parser, parser.prog)
        if not isinstance(a, argparse._HelpAction)
        and (not a.help or a.help == argparse.SUPPRESS or not str(a.help).strip())
    ]
    assert not missing, "options without help text:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("module", VERSIONED)
def test_version_option(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out.strip()
    assert out == version_string()
    assert out.startswith(f"medmix {medmix_version()}")


def test_version_string_names_the_commit_in_a_checkout() -> None:
    version = medmix_version()
    assert version and version != "unknown"
    commit = git_commit()
    if (REPO / ".git").exists():
        assert commit, "a git checkout should report its commit"
        assert f"(git {commit})" in version_string()
    else:
        assert commit is None and version_string() == f"medmix {version}"


def test_version_from_another_folder(tmp_path: Path) -> None:
    """``python -m fusion --version`` as a process, started outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "fusion", "--version"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == version_string()


# -- progress bars --------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDMIX_PROGRESS", raising=False)
    assert not progress_enabled(stream=io.StringIO())  # a log file
    assert progress_enabled(stream=_Tty())
    assert not progress_enabled(False, stream=_Tty())  # --no-progress / --quiet
    log, tty = io.StringIO(), _Tty()
    assert list(progress(range(3), file=log)) == [0, 1, 2]
    assert log.getvalue() == ""
    list(progress(range(3), file=tty, desc="x"))
    assert "%|" in tty.getvalue()
    monkeypatch.setenv("MEDMIX_PROGRESS", "always")
    assert progress_enabled(stream=io.StringIO())
    assert not progress_enabled(False, stream=io.StringIO())
    monkeypatch.setenv("MEDMIX_PROGRESS", "never")
    assert not progress_enabled(stream=_Tty())


def _child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDMIX_EXTRACT_WORKERS": "0"}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "80"})
    for key in ("MEDMIX_PROGRESS", "TQDM_DISABLE", "MEDMIX_LOG_LEVEL"):
        env.pop(key, None)
    return env


def _demo_argv(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cohorts", "demo", "--kind", "openi", "--dataset", "demo-openi",
            "--n-patients", "6", "--seed", "3", "--out", str(out), *extra]  # fmt: skip


def _run_on_pty(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (stdout to a pipe); returns (rc, stderr text)."""
    master, slave = pty.openpty()
    # a new pty is 0 columns wide, where tqdm draws an empty bar: size it like a terminal
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=_child_env(), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    proc.stdout.close()  # type: ignore[union-attr]
    rc = proc.wait(timeout=60)
    return rc, b"".join(chunks).decode(errors="replace")


def test_demo_cli_draws_a_bar_only_on_a_terminal(tmp_path: Path) -> None:
    # stderr redirected to a file, as a Snakemake rule's ``> {log} 2>&1``: no tqdm frames
    log = tmp_path / "demo.log"
    with open(log, "w") as fh:
        proc = subprocess.run(_demo_argv(tmp_path / "a"), cwd=tmp_path, env=_child_env(),
                              stdout=fh, stderr=subprocess.STDOUT, timeout=300)  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "wrote" in text
    assert "\r" not in text and "%|" not in text, text

    # on a terminal the bar is drawn, unless --no-progress or --quiet
    rc, err = _run_on_pty(_demo_argv(tmp_path / "b"), tmp_path)
    assert rc == 0, err
    assert "%|" in err, err
    for flag in ("--no-progress", "--quiet"):
        rc, err = _run_on_pty(_demo_argv(tmp_path / flag.strip("-"), flag), tmp_path)
        assert rc == 0, err
        assert "%|" not in err and "\r" not in err, (flag, err)


@pytest.fixture(scope="module")
def ehr_cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from cohorts.demo import generate_cohort

    results = tmp_path_factory.mktemp("results")
    generate_cohort("mimic", results / "dm", 24, 5, "dm", progress=False)
    cfg = {
        "results": str(results),
        "datasets": {
            "dm": {
                "adapter": "demo",
                "demo": {"kind": "mimic", "n_patients": 24, "seed": 5},
                "modalities": {"ehr": ["ts-stats"]},
            }
        },
        "experts": {"ts-stats": {"type": "ts-stats"}},
        "extraction": {"shard_size": 8, "max_failed_fraction": 0.5},
    }
    return {"json": json.dumps(cfg), "results": results}


def _extract(cohort: dict, tmp_path: Path, name: str, *extra: str) -> tuple[str, str]:
    """``python -m extractors extract`` with stdout and stderr redirected to files."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.log"
    argv = [sys.executable, "-m", "extractors", "extract", "--config", cohort["json"],
            "--dataset", "dm", "--modality", "ehr", "--expert", "ts-stats",
            "--out", str(tmp_path / f"{name}.parquet"), *extra]  # fmt: skip
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.run(argv, cwd=REPO, env=_child_env(), stdout=fo, stderr=fe, timeout=300)
    assert proc.returncode == 0, err.read_text()
    return out.read_text(), err.read_text()


def test_extract_cli_quiet_and_no_progress_differ(ehr_cohort: dict, tmp_path: Path) -> None:
    # default, stderr to a file: log lines but no tqdm frames
    out, log = _extract(ehr_cohort, tmp_path, "default")
    assert "ok" in out
    assert " INFO " in log
    assert "\r" not in log and "%|" not in log, log
    # --no-progress: bars off, logging unchanged
    out, log = _extract(ehr_cohort, tmp_path, "noprogress", "--no-progress")
    assert "ok" in out and " INFO " in log
    # --quiet: warnings and errors only (the result line on stdout stays)
    out, log = _extract(ehr_cohort, tmp_path, "quiet", "--quiet")
    assert "ok" in out
    assert " INFO " not in log, log
    assert "\r" not in log and "%|" not in log


@pytest.mark.parametrize("cli", [["cohorts", "demo"], ["extractors", "extract"]])
def test_help_documents_quiet_and_no_progress(cli: list[str]) -> None:
    module = importlib.import_module(f"{cli[0]}.__main__")
    buf = io.StringIO()
    sys_stdout = sys.stdout
    try:
        sys.stdout = buf
        with pytest.raises(SystemExit):
            module.main([cli[1], "--help"])
    finally:
        sys.stdout = sys_stdout
    text = " ".join(buf.getvalue().split())
    assert "--quiet" in text and "--no-progress" in text
    assert "warnings" in text  # --quiet: logging
    assert "hide progress bars (logging unchanged)" in text
