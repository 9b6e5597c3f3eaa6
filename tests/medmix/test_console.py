"""medmix.console: the workflow's console lines stay under 300 characters; commands stay whole
and pasteable, the run's full log keeps every file."""

from __future__ import annotations

import logging
import subprocess
from types import SimpleNamespace

from medmix.console import LIMIT, ShortLines, install, shorten, wrap_command

CMD = (
    "python -m extractors.rag embed --config results/.medmix/config/0d26316fb3125c2d.yaml"
    " --dataset demo-mimic-shift --modality lateral --bridge results/x/bridge/lateral.parquet"
    ' --header "$(cat results/.medmix/args/aa.txt --not-a-break)" --index-dir results/kb'
    " --projection results/kb/projection.safetensors --out results/x/embeddings/lateral/rag.parquet"
    " --provenance results/x/embeddings/lateral/rag.provenance.parquet"
    " > results/logs/x/rag/lateral.log 2>&1"
)


def test_a_long_listing_keeps_its_first_items_and_counts_the_rest() -> None:
    files = [f"results/demo/embeddings/m{i}/expert{i}.parquet" for i in range(40)]
    line = "    input: " + ", ".join(files)
    short = shorten(line)
    assert len(short) <= LIMIT and short.startswith("    input: " + files[0] + ", " + files[1])
    kept = short.split(": ", 1)[1].split(", ")[:-1]
    assert kept == files[: len(kept)]
    assert short.endswith(f"(+{40 - len(kept)} more in .snakemake/log/)")
    assert shorten("short line") == "short line"
    assert shorten("x" * 500) == "x" * (LIMIT - 3) + "..."


def test_a_long_command_is_wrapped_into_the_same_shell_command() -> None:
    for limit in (80, 120, 200):
        wrapped = wrap_command(CMD, limit)
        lines = wrapped.split("\n")
        assert len(lines) > 1 and all(len(x) <= limit for x in lines), lines
        assert wrapped.replace(" \\\n    ", " ") == CMD  # the same words
        assert "--not-a-break)" in wrapped and "$(cat results/.medmix/args/aa.txt --not" in wrapped
    # bash reads the wrapped form as the original (echo the words instead of running them)
    echo = [
        "bash",
        "-c",
        'f() { printf "%s\\n" "$@"; }; f '
        + wrap_command(CMD, 120).replace(" > ", " \\> ").replace("2>&1", "2\\>\\&1"),
    ]
    plain = [
        "bash",
        "-c",
        'f() { printf "%s\\n" "$@"; }; f '
        + CMD.replace(" > ", " \\> ").replace("2>&1", "2\\>\\&1"),
    ]
    run = [
        subprocess.run(c, capture_output=True, text=True, check=True).stdout for c in (echo, plain)
    ]
    assert run[0] == run[1] and "--provenance" in run[0]
    assert wrap_command("echo short") == "echo short"


def test_formatter_wraps_commands_and_shortens_listings() -> None:
    class Inner(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return record.getMessage()

    fmt = ShortLines(Inner(), limit=120)
    shell = logging.LogRecord("snakemake.logging", logging.INFO, "", 0, CMD, None, None)
    shell.event = SimpleNamespace(value="shellcmd")
    out = fmt.format(shell)
    assert out.replace(" \\\n    ", " ") == CMD and max(map(len, out.split("\n"))) <= 120
    info = (
        "rule x:\n    input: "
        + ", ".join(f"f{i}.parquet" for i in range(60))
        + "\nShell command: "
        + CMD
    )
    rec = logging.LogRecord("snakemake.logging", logging.INFO, "", 0, info, None, None)
    lines = fmt.format(rec).split("\n")
    assert lines[0] == "rule x:" and "more in .snakemake/log/" in lines[1]
    assert lines[2].startswith("Shell command: python -m extractors.rag embed")
    assert max(map(len, lines)) <= 120


def test_install_wraps_console_handlers_only(tmp_path) -> None:
    logger = logging.getLogger("medmix-test-console")
    stream, file = logging.StreamHandler(), logging.FileHandler(tmp_path / "full.log")
    for h in (stream, file):
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    try:
        assert install(logger) == 1 and install(logger) == 1  # idempotent
        assert isinstance(stream.formatter, ShortLines)
        assert not isinstance(stream.formatter.inner, ShortLines)
        assert not isinstance(file.formatter, ShortLines)  # the full log keeps every file
    finally:
        for h in (stream, file):
            logger.removeHandler(h)
            h.close()


def test_full_lines_on_request(monkeypatch) -> None:
    logger = logging.getLogger("medmix-test-console-full")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        monkeypatch.setenv("MEDMIX_CONSOLE_FULL", "1")
        assert install(logger) == 0 and not isinstance(handler.formatter, ShortLines)
    finally:
        logger.removeHandler(handler)
