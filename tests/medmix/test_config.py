"""config.yaml validation: the shipped configs pass; a bad key or value is named."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from medmix.config import (
    PAPER_SECTIONS,
    ConfigError,
    dataset_slice,
    expert_closure,
    load_config,
    load_config_arg,
    table1_methods,
    validate_config,
)

REPO = Path(__file__).resolve().parents[2]


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
        (
            lambda c: c.update(bogus_key=1),
            r"<top level>: Additional properties are not allowed \('bogus_key'",
        ),
        (
            lambda c: c["fusion"].update(lr=-1),
            r"fusion\.lr: -1 is less than or equal to the minimum",
        ),
        (
            lambda c: c["fusion"].update(learning_rate=0.1),
            r"fusion: Additional properties .*learning_rate",
        ),
        (
            lambda c: c["datasets"]["demo-openi"].update(adapter="nope"),
            r"datasets\.demo-openi\.adapter: 'nope' is not one of",
        ),
        (
            lambda c: c["datasets"]["demo-openi"]["modalities"].update(frontal=["ghost"]),
            r"datasets\.demo-openi\.modalities\.frontal: expert 'ghost'",
        ),
        (lambda c: c.update(seeds=[]), r"seeds: \[\] should be non-empty"),
        (
            lambda c: c["extraction"].update(max_failed_fraction=2),
            r"extraction\.max_failed_fraction: 2 is greater",
        ),
        (lambda c: c.update(methods=["medmix", "magic"]), r"methods\.1: 'magic' is not one of"),
        (
            lambda c: c["fusion"].update(pos_weight="sometimes"),
            r"fusion\.pos_weight: 'sometimes' is not valid",
        ),
        (lambda c: c["fusion"].update(amp="fp8"), r"fusion\.amp: 'fp8' is not one of"),
        (
            lambda c: c.update(external=[{"source": "demo-mimic", "target": "ghost"}]),
            r"external\[0\]\.target: dataset 'ghost'",
        ),
        (
            lambda c: c["protocols"].update(methods=["medmix", "nope"]),
            r"protocols\.methods: 'nope'",
        ),
        (
            lambda c: c["protocols"].update(extra=["random-30%"]),
            r"protocols\.extra\.0: 'random-30%' does not match",
        ),
        (
            lambda c: c["protocols"].update(test_random=[1.5]),
            r"protocols\.test_random\.0: 1\.5 is greater",
        ),
        (
            lambda c: c["ablations"].update(variants=["no_router"]),
            r"ablations\.variants\.0: 'no_router' is not one of",
        ),
        (
            lambda c: c["datasets"]["demo-openi"].update(severity_column="acuity score"),
            r"datasets\.demo-openi\.severity_column: 'acuity score' does not match",
        ),
        (
            lambda c: c["datasets"]["demo-openi"].update(teachers={"ct": "radiomics"}),
            r"teachers: 'ct' is not one of the dataset's modalities",
        ),
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


def test_pos_weight_forms_validate(cfg: dict) -> None:
    for value in (None, 3.0, "auto", [1.0, 2.0], {"mortality": 4.0}):
        c = copy.deepcopy(cfg)
        c["fusion"]["pos_weight"] = value
        assert validate_config(c)["fusion"]["pos_weight"] == value


def test_slices_drop_the_paper_grid(cfg: dict) -> None:
    """Editing protocols / ablations / external / efficiency must not rerun trained runs."""
    full = validate_config(cfg)
    assert set(PAPER_SECTIONS) <= set(full)
    sliced = dataset_slice(full, "demo-mimic")
    assert not set(PAPER_SECTIONS) & set(sliced)
    edited = copy.deepcopy(full)
    edited["protocols"]["test_random"] = [0.2]
    edited["external"] = []
    assert dataset_slice(edited, "demo-mimic") == sliced
    # teachers' presets travel with the dataset (distillation and AdaCoMed read them)
    assert {"radiomics-rich", "ts-stats", "tfidf-svd"} <= set(sliced["experts"])


def test_table1_methods_expand_large_per_teacher(cfg: dict) -> None:
    full = validate_config(cfg)
    runs = table1_methods(full, "demo-mimic")
    teachers = full["datasets"]["demo-mimic"]["teachers"]
    assert [m for m in runs if m.endswith("-large")] == [f"{m}-large" for m in teachers]
    assert "large" not in runs and runs[0] == "medmix"
    assert [m for m in runs if m.startswith("medmix-only-")] == [
        f"medmix-only-{m}" for m in full["datasets"]["demo-mimic"]["modalities"]
    ]
    no_single = {**full, "single_modality": False}
    assert not any(m.startswith("medmix-only-") for m in table1_methods(no_single, "demo-mimic"))


# Every table and figure of the paper (§4, appendices E/F) -> the output file that holds it
# under config/paper.yaml (a drop-one / random-drop figure has a train-time and a test-time
# row: Figure 2 is MIMIC-IV-MM's, F1 + F3 OpenI's, F2 + F4 MMIST-ccRCC's).
PAPER_FILES = {
    "Table 1": "tables/main.md",
    "Table 2": "tables/external.md",
    "Table E1": "tables/experts.md",
    "Table E2": "tables/train_drop_one.md",
    "Table E3": "tables/test_drop_one.md",
    "Table E4": "tables/train_random.md",
    "Table E5": "tables/test_random.md",
    "Table E6": "tables/efficiency.md",
    "Table E7": "tables/ablation.md",
    "Table E8": "tables/per_task.md",
    "Figure 2": "figures/drop_one_mimic4.png",
    "Figure 3": "figures/random_drop_mimic4.png",
    "Figure 4": "figures/ablation.png",
    "Figure 5": "figures/pareto.png",
    "Figure F1": "figures/drop_one_openi.png",
    "Figure F2": "figures/drop_one_mmist-ccrcc.png",
    "Figure F3": "figures/drop_one_openi.png",
    "Figure F4": "figures/drop_one_mmist-ccrcc.png",
    "Figure F5": "figures/random_drop_openi.png",
    "Figure F6": "figures/random_drop_mmist-ccrcc.png",
    "Figure F7": "figures/random_drop_openi.png",
    "Figure F8": "figures/random_drop_mmist-ccrcc.png",
    "alpha/beta OpenI": "figures/weights_openi.png",
    "alpha/beta MIMIC-IV-MM": "figures/weights_mimic4.png",
    "alpha/beta MMIST-ccRCC": "figures/weights_mmist-ccrcc.png",
    "structured missingness": "tables/structured.md",
}


def test_paper_config_asks_for_every_paper_table_and_figure(tmp_path: Path) -> None:
    """config/paper.yaml at the paper's rates, and the workflow's default target lists every
    table and figure of the paper (a dry run: nothing is executed)."""
    import subprocess
    import sys

    from medmix.plan import paper_outputs
    from medmix.protocol_names import (
        PAPER_DROP_ONE_RATES,
        PAPER_TEST_RANDOM_RATES,
        PAPER_TRAIN_RANDOM_RATES,
    )

    cfg = load_config(REPO / "config" / "paper.yaml")
    p = cfg["protocols"]
    assert tuple(p["train_drop_one"]) == tuple(p["test_drop_one"]) == PAPER_DROP_ONE_RATES
    assert tuple(p["train_random"]) == PAPER_TRAIN_RANDOM_RATES
    assert tuple(p["test_random"]) == PAPER_TEST_RANDOM_RATES
    assert {"medmix", "adacomed"} <= set(p["methods"])  # the paper's comparison
    assert cfg["efficiency"]["device"].startswith("cuda") and cfg["ablations"]["enabled"]
    # every expert of the committee is in exactly one family (Table E1 / E7)
    fams = cfg["ablations"]["families"]
    named = [e for names in fams.values() for e in names]
    used = {e for d in cfg["datasets"].values() for names in d["modalities"].values()
            for e in names}  # fmt: skip
    assert len(named) == len(set(named)) and used == set(named)
    plan = paper_outputs(cfg)
    stems = {f"tables/{t}.md" for t in plan["tables"]} | {
        f"figures/{f}.png" for f in plan["figures"]
    }
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml",
         "--config", f"results={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MEDMIX_CONSOLE_FULL": "1"},  # rule all's whole input listing
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rule_all = proc.stdout.split("rule all:")[1].split("\n")[1]
    targets = {
        t.strip().removeprefix(f"{tmp_path}/") for t in rule_all.split("input:")[1].split(",")
    }
    missing = {k: v for k, v in PAPER_FILES.items() if v not in targets}
    assert not missing, missing
    assert {v for v in PAPER_FILES.values() if v not in ("tables/main.md",)} <= stems


def test_modalities_have_one_order_whatever_the_file_says(cfg: dict) -> None:
    """The model's modality order is by name, for a run from the config file and for the
    sorted-key slice a workflow job reads alike (else the same config gives other numbers);
    each modality's experts keep their listed order."""
    import json

    from medmix.plan import method_inputs

    declared = list(cfg["datasets"]["demo-mimic"]["modalities"])
    assert declared != sorted(declared)  # the shipped config lists them unsorted
    experts = copy.deepcopy(cfg["datasets"]["demo-mimic"]["modalities"])
    full = validate_config(copy.deepcopy(cfg))
    mods = full["datasets"]["demo-mimic"]["modalities"]
    assert list(mods) == sorted(declared) and mods == experts  # same lists, same order inside
    assert list(full["datasets"]["demo-mimic"]["teachers"]) == sorted(mods)
    sliced = load_config_arg(json.dumps(dataset_slice(full, "demo-mimic"), sort_keys=True))
    for method in ("medmix", "concat", "adacomed"):
        a, b = (
            method_inputs(full, "demo-mimic", method),
            method_inputs(sliced, "demo-mimic", method),
        )
        assert a == b and list(a.caches) == sorted(declared)
