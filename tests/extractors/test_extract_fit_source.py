"""External validation: a target cohort is embedded in its source cohort's fitted space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import read_cache, read_meta
from extractors.extract import extract
from extractors.registry import create_expert


def _manifest(path: Path, dataset: str, words: list[str], n: int = 30) -> Path:
    rows = [
        {
            "sample_id": f"{dataset}-{i:03d}",
            "patient_id": f"{dataset}-p{i:03d}",
            "split": ("train", "val", "test")[i % 3],
            "note": f"{words[i % len(words)]} {words[(i * 7) % len(words)]} finding {i % 4}",
            "label_y": i % 2,
        }
        for i in range(n)
    ]
    meta = ManifestMeta(dataset=dataset, task_type="binary", modalities={"note": "text"},
                        labels=["y"], adapter="test")  # fmt: skip
    return write_manifest(pd.DataFrame(rows), path, meta)


def test_target_fitted_on_the_source_shares_its_space(tmp_path: Path) -> None:
    src = _manifest(tmp_path / "src.parquet", "src", ["effusion", "edema", "nodule", "normal"])
    tgt = _manifest(tmp_path / "tgt.parquet", "tgt", ["pneumonia", "edema", "mass", "clear"])
    kw = {"progress": False, "shard_size": 8}

    def tfidf():
        return create_expert("tfidf-svd", n_components=4)

    extract(src, "note", tfidf(), tmp_path / "src.tfidf.parquet", **kw)
    extract(tgt, "note", tfidf(), tmp_path / "own.tfidf.parquet", **kw)
    extract(tgt, "note", tfidf(), tmp_path / "aligned.tfidf.parquet", fit_manifest=src, **kw)
    s, own, aligned = (
        read_meta(tmp_path / f"{k}.tfidf.parquet") for k in ("src", "own", "aligned")
    )
    # the preprocess hash covers the fit: own fit differs, the source's fit matches
    assert own.preprocess_hash != s.preprocess_hash
    assert aligned.preprocess_hash == s.preprocess_hash
    assert aligned.extra.get("fit_source") == "src" and "fit_source" not in own.extra
    assert aligned.dataset == "tgt"
    # same text in both cohorts -> the same vector only in the shared space
    probe = _manifest(tmp_path / "probe.parquet", "tgt", ["effusion", "edema", "nodule", "normal"])
    extract(probe, "note", tfidf(), tmp_path / "probe.tfidf.parquet", fit_manifest=src, **kw)
    a, b = read_cache(tmp_path / "src.tfidf.parquet"), read_cache(tmp_path / "probe.tfidf.parquet")
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
