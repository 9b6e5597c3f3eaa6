"""config/iu-openi-note.yaml: the real-data OpenI run (report modality only, docs/real-openi.md).

The config validates, and its adapter ``args:`` (as the workflow passes them: key -> --key
value) produce a manifest on the real IU reports with the 15 finding labels and the report.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cohorts.__main__ import main as cohorts_main
from cohorts.adapters.openi_labels import LABELS
from cohorts.manifest import read_manifest
from medmix.config import validate_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "iu-openi-note.yaml"
DATASET = "iu-openi-note"


def _load() -> dict:
    return validate_config(yaml.safe_load(CONFIG.read_text()))


def _cli_args(args: dict) -> list[str]:
    """The dataset's ``args:`` as adapter options (key -> --key value; true -> --key; false/null
    -> nothing), the rule of workflow/rules/common.smk ``adapter_args``."""
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:  # keeps 0 (``0 in (False, None)`` is True)
            out += [flag, str(value)]
    return out


def test_config_validates() -> None:
    cfg = _load()
    ds = cfg["datasets"][DATASET]
    assert ds["adapter"] == "openi"
    assert list(ds["modalities"]) == ["report"]  # no images in the real data at hand
    assert ds["modalities"]["report"] == ["minilm", "tfidf-svd", "tfidf-svd-256"]
    assert cfg["experts"]["tfidf-svd-256"] == {"type": "tfidf-svd", "n_components": 256}
    assert cfg["methods"] == ["medmix", "medmix-sum", "concat", "linear-probe"]
    assert cfg["single_modality"] is False
    assert cfg["seeds"] == [0, 1, 2, 3, 4]
    assert cfg["results"] != "results"  # never writes into the demo's results/
    assert "rag" not in cfg  # no RAG expert: nothing to build
    # the teacher is a defined preset (checked by validate_config); the run the doc reports
    assert ds["teachers"] == {"report": "tfidf-svd"} and cfg["fusion"]["lambda_kd"] == 0.1


def test_adapter_on_real_reports(realdata: Path, tmp_path: Path) -> None:
    cfg = _load()
    args = dict(cfg["datasets"][DATASET]["args"])
    iu = realdata / "iu_xray"
    # the config names the shared copy; follow MEDMIX_REALDATA where the data lives elsewhere
    args.update(
        reports=iu / "indiana_reports.csv",
        projections=iu / "indiana_projections.csv",
        root=iu,
    )
    out = tmp_path / DATASET
    assert cohorts_main(["openi", "--dataset", DATASET, *_cli_args(args), "--out", str(out)]) == 0
    df, meta = read_manifest(out / "manifest.parquet")
    assert meta.dataset == DATASET and meta.task_type == "multilabel"
    assert meta.labels == LABELS and len(LABELS) == 15
    label_cols = [c for c in df.columns if c.startswith("label_")]
    assert label_cols == [f"label_{k}" for k in LABELS]
    assert len(df) == 3759  # 3,851 reports less 92 never indexed ("No Indexing")
    assert df["report"].notna().sum() == 3734
    assert set(df["split"]) == {"train", "val", "test"}
    test = df[df["split"] == "test"]
    assert (test[label_cols].sum() > 0).all()  # every finding has test positives
    assert (out / "summary.md").is_file()
