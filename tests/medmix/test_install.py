"""A regular (non-editable) install works: the wheel carries every data file the packages read
at run time (the config schema), and the installed packages find it from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# what a wheel build reads from the checkout
SOURCES = ["pyproject.toml", "README.md", "medmix", "cohorts", "extractors", "fusion", "workflow"]
# data files the packages read at run time -> where the wheel must carry them
RUNTIME_DATA = {"medmix/schemas/config.schema.yaml": "workflow/schemas/config.schema.yaml"}

pytestmark = pytest.mark.slow


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``pip wheel . --no-deps`` of a copy of the checkout (the build leaves build/ and
    *.egg-info/ behind: not in the working tree), then ``pip install --target``."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".snakemake")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    wheels = tmp_path_factory.mktemp("wheels")
    # no build isolation: the build backend (setuptools) comes from this environment, so the
    # test runs offline
    build = _pip("wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(wheels), cwd=src)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("medmix-*.whl")
    target = tmp_path_factory.mktemp("target")
    inst = _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=src)
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    return {"wheel": wheel, "target": target}


def test_wheel_carries_the_runtime_data(installed: dict) -> None:
    with zipfile.ZipFile(installed["wheel"]) as zf:
        names = set(zf.namelist())
        for inside, source in RUNTIME_DATA.items():
            assert inside in names, f"{inside} missing from the wheel"
            assert zf.read(inside) == (REPO / source).read_bytes(), f"{inside} differs"
    for pkg in ("medmix", "cohorts", "extractors", "fusion"):
        assert f"{pkg}/__init__.py" in names


def _run_installed(installed: dict, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed["target"])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_installed_config_loader_validates_the_demo_config(installed: dict, tmp_path: Path) -> None:
    """From a folder outside the checkout, the installed ``medmix.config`` (not the source
    tree's) finds its schema and validates config.yaml."""
    code = f"""
import json, medmix, medmix.config as c
cfg = c.load_config({str(REPO / "config.yaml")!r})
print(json.dumps({{"medmix": medmix.__file__, "schema": str(c.SCHEMA_PATH),
                  "datasets": sorted(cfg["datasets"])}}))
"""
    proc = _run_installed(installed, code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    target = str(installed["target"])
    assert got["medmix"].startswith(target), got  # the installed copy ran
    assert got["schema"].startswith(target), got  # with its own schema
    assert got["datasets"]

    # an invalid config is still rejected by the installed schema
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {}\nunknown_key: 1\n")
    code = f"""
import medmix.config as c
try:
    c.load_config({str(bad)!r})
except c.ConfigError as exc:
    print("rejected", exc)
"""
    proc = _run_installed(installed, code, tmp_path)
    assert proc.returncode == 0 and "rejected" in proc.stdout, proc.stdout + proc.stderr


def test_installed_clis_start_outside_the_checkout(installed: dict, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed["target"])}
    for module in ("cohorts", "extractors", "fusion"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        # the version from the installed metadata; no commit outside a checkout
        assert proc.stdout.strip() == "medmix " + _project_version(), proc.stdout


def _project_version() -> str:
    from medmix.version import _pyproject_version

    version = _pyproject_version(REPO)
    assert version
    return version
