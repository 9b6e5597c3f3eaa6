"""The manifest validator (docs/design.md §3.1): every fatal problem names file, column and ids."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cohorts.manifest import (
    ManifestError,
    ManifestMeta,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "patient_id": ["p1", "p1", "p2", "p3"],
            "split": ["train", "train", "val", "test"],
            "xray": ["img/a.png", None, "img/c.png", "img/d.png"],
            "note": ["text a", "text b", None, "text d"],
            "label_y": [0, 1, 1, 0],
        }
    )


META = ManifestMeta(
    dataset="t",
    task_type="binary",
    modalities={"xray": "image", "note": "text"},
    labels=["y"],
    adapter="test",
    root=".",
)


def test_roundtrip_keeps_metadata(tmp_path: Path) -> None:
    path = write_manifest(_frame(), tmp_path / "m.parquet", META)
    df, meta = read_manifest(path)
    assert meta == META
    assert df["xray"].isna().sum() == 1


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.drop(columns=["label_y"]), r"missing column\(s\) \['label_y'\]"),
        (
            lambda d: d.assign(sample_id=["a", "a", "c", "d"]),
            r"'sample_id' has duplicate ids: a, a",
        ),
        (
            lambda d: d.assign(split=["train", "val", "val", "test"]),
            r"more than one split .*p1.*ids a, b",
        ),
        (
            lambda d: d.assign(split=["train", "train", "holdout", "test"]),
            r"'split' has values outside .* ids c",
        ),
        (
            lambda d: d.assign(label_y=[0, 2, 1, 0]),
            r"'label_y' has values outside \{0, 1\} for ids b",
        ),
        (
            lambda d: d.assign(label_y=["0", "x", "1", "0"]),
            r"'label_y' has non-numeric values for ids b",
        ),
        (
            lambda d: d.assign(xray=["img/a.png", "../../etc/passwd", None, None]),
            r"'xray' has paths outside .* ids b",
        ),
        (
            lambda d: d.assign(xray=["/abs/a.png", None, None, None]),
            r"'xray' has paths outside .* ids a",
        ),
        (
            lambda d: d.assign(patient_id=["p1", None, "p2", "p3"]),
            r"'patient_id' is null for ids b",
        ),
    ],
)
def test_fatal_problems_are_named(tmp_path: Path, mutate, pattern: str) -> None:
    with pytest.raises(ManifestError, match=pattern):
        write_manifest(mutate(_frame()), tmp_path / "bad.parquet", META)
    assert not (tmp_path / "bad.parquet").exists()


def test_missing_files_checked_on_request(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for name in ("a", "c"):
        (tmp_path / "img" / f"{name}.png").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"do not exist for ids d"):
        validate_manifest(_frame(), META, root=tmp_path, check_files=True)


def test_multiclass_range(tmp_path: Path) -> None:
    meta = ManifestMeta(
        dataset="t",
        task_type="multiclass",
        modalities={"note": "text"},
        labels=["y"],
        adapter="t",
        extra={"n_classes": 3},
    )
    ok = _frame().assign(label_y=[0, 1, 2, 2])
    validate_manifest(ok, meta)
    with pytest.raises(ManifestError, match=r"outside \[0, 3\) for ids d"):
        validate_manifest(ok.assign(label_y=[0, 1, 2, 3]), meta)


def test_unreadable_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(ManifestError, match="no MedMIX manifest metadata"):
        read_manifest(tmp_path / "plain.parquet")
