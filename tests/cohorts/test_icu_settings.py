"""The settings both ICU adapters take (cohorts.adapters.icu.IcuSettings) and their options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cohorts.adapters import AdapterError, add_common_args, mimic3, mimic4
from cohorts.adapters.icu import IcuSettings, add_icu_args, cli_settings

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_defaults_and_checks() -> None:
    s = IcuSettings(dataset="d")
    assert s.as_kwargs() == {
        "dataset": "d",
        "seed": 0,
        "hours": 48,
        "min_icu_hours": None,
        "long_stay_basis": "icu",
        "split_file": None,
        "split_missing": "drop",
    }
    s.check()
    with pytest.raises(AdapterError, match="--long-stay-basis"):
        IcuSettings(dataset="d", long_stay_basis="ward").check()


def test_cli_settings_are_the_run_keywords() -> None:
    p = argparse.ArgumentParser()
    add_icu_args(p)
    add_common_args(p, "mimic3")
    args = p.parse_args(["--out", "o", "--hours", "24", "--ehr-dir", "e", "--seed", "3"])
    kw = cli_settings(args)
    assert kw == {**IcuSettings(dataset="mimic3", seed=3, hours=24).as_kwargs(), "ehr_dir": "e"}


@pytest.mark.parametrize("adapter", [mimic3, mimic4])
def test_an_unknown_setting_is_refused_before_any_work(adapter, tmp_path: Path) -> None:
    root = FIX / "mimic3" if adapter is mimic3 else FIX / "mimic4" / "mimic-iv"
    with pytest.raises(TypeError, match="hourz"):
        adapter.build(root, tmp_path / "out", hourz=24)
    assert not (tmp_path / "out").exists()
