"""config.yaml validation: the shipped configs pass; a bad key or value is named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medmix.config import ConfigError, dataset_slice, expert_closure, load_config, load_config_arg, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_filled() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert cfg["extraction"]["shard_size"] >= 1
    assert cfg["fusion"]["max_epochs"] >= 1


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda c: c.update(bogus_key=1), r"<top level>: Additional properties are not allowed \('bogus_key'"),
        (lambda c: c["fusion"].update(lr=-1), r"fusion\.lr: -1 is less than or equal to the minimum"),
        (lambda c: c["fusion"].update(learning_rate=0.1), r"fusion: Additional properties .*learning_rate"),
        (lambda c: c["datasets"]["demo-openi"].update(adapter="nope"), r"datasets\.demo-openi\.adapter: 'nope' is not one of"),
        (lambda c: c["datasets"]["demo-openi"]["modalities"].update(frontal=["ghost"]), r"datasets\.demo-openi\.modalities\.frontal: expert 'ghost'"),
        (lambda c: c.update(seeds=[]), r"seeds: \[\] should be non-empty"),
        (lambda c: c["extraction"].update(max_failed_fraction=2), r"extraction\.max_failed_fraction: 2 is greater"),
    ],
)
def test_bad_config_names_the_key(cfg: dict, mutate, pattern: str) -> None:
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(ConfigError, match=pattern):
        validate_config(bad)


def test_inline_json_config_and_slices(cfg: dict) -> None:
    full = validate_config(cfg)
    sliced = dataset_slice(full, "demo-ccrcc")
    assert list(sliced["datasets"]) == ["demo-ccrcc"]
    # the CT slicer preset pulls in the image expert it wraps
    assert {"ct-radiomics", "radiomics"} <= set(sliced["experts"])
    assert "catch22" not in sliced["experts"]
    import json

    again = load_config_arg(json.dumps(sliced))
    assert again["datasets"] == sliced["datasets"]
    assert set(expert_closure(full, "wsi-dinov2-tiny")) == {"wsi-dinov2-tiny", "dinov2-tiny"}
