"""Failed samples: counted in the run's summary table (``extractors.status``, rule
``sample_status``) and treated as a missing expert downstream (δ = 0 in ``fusion.data``) —
never a NaN embedding, never an input to the standardisation statistics."""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cohorts.manifest import read_manifest
from extractors.cache import (
    META_KEY,
    CacheError,
    CacheMeta,
    CacheRecords,
    read_cache,
    write_cache,
)
from extractors.extract import TooManyFailures, extract
from extractors.status import cache_status, main, reason_key, status_table
from fusion.data import load_fusion_data
from fusion.protocols import apply_protocol
from fusion.registry import build_model, resolve_method
from fusion.trainer import build_spec
from medmix.hparams import FusionHParams
from medmix.plan import run_caches
from tests.helpers import CharCountExpert, tiny_text_manifest

DIM = 5
# The hand-written cache's failed rows, with the reasons a reader would give (distinct paths).
RAW_FAILED = {1: "FileNotFoundError: '/data/s001.png'", 21: "FileNotFoundError: '/data/s021.png'",
              14: "unreadable .npy (ValueError)", 25: "FileNotFoundError: '/data/s025.png'"}  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny text cohort laid out like results/: a real extraction whose empty notes failed,
    a cache from another tool whose failed rows still carry (huge, even NaN) embeddings, and
    a teacher cache with failed rows."""
    root = tmp_path_factory.mktemp("failed") / "results" / "tiny"
    manifest = tiny_text_manifest(root / "manifest.parquet", n=40)
    cc = extract(
        manifest, "note", CharCountExpert(), root / "embeddings/note/cc.parquet", progress=False
    ).path
    ids = read_manifest(manifest)[0]["sample_id"].astype(str).tolist()
    note_ok = read_cache(cc).status != "missing"
    raw = root / "embeddings/note/raw.parquet"
    _write_raw(raw, ids, note_ok)
    teacher = root / "teachers/note.parquet"
    status = ["failed" if i % 6 == 0 else "ok" for i in range(len(ids))]
    rng = np.random.default_rng(1)
    write_cache(
        teacher,
        CacheRecords(ids, rng.normal(size=(len(ids), 3)), status,
                     [None if s == "ok" else "CUDA out of memory" for s in status]),
        CacheMeta(expert="big", model_id="offline:big", dim=3, pooling="none", preprocess_hash="t"),
    )  # fmt: skip
    return {"manifest": manifest, "cc": cc, "raw": raw, "teacher": teacher, "ids": ids}


def _write_raw(path: Path, ids: list[str], present: np.ndarray) -> None:
    """A cache whose failed rows hold non-null embeddings (1e6, one NaN): only ``status`` may
    decide availability."""
    n = len(ids)
    emb = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    status = ["ok" if present[i] else "missing" for i in range(n)]
    reason: list[str | None] = [None if s == "ok" else "modality not recorded" for s in status]
    for i, why in RAW_FAILED.items():
        status[i], reason[i] = "failed", why
        emb[i] = 1e6
    emb[14, 0] = np.nan
    meta = CacheMeta(expert="raw", model_id="offline:raw", dim=DIM, pooling="none",
                     preprocess_hash="r")  # fmt: skip
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), DIM)
    table = pa.table({"sample_id": ids, "embedding": values, "status": status, "reason": reason})
    meta_json = json.dumps(meta.__dict__, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata({META_KEY: meta_json}), path)


# -- fusion.data: a failed sample is a missing expert ------------------------------------------


def test_failed_samples_get_delta_zero(cohort: dict) -> None:
    caches = {"note": {"cc": cohort["cc"], "raw": cohort["raw"]}}
    data = load_fusion_data(cohort["manifest"], caches, teachers={"note": cohort["teacher"]})
    cc, raw = read_cache(cohort["cc"]), read_cache(cohort["raw"])
    assert (cc.status == "failed").sum() >= 2 and list(data.sample_ids) == list(cc.sample_ids)
    for e, cache in enumerate((cc, raw)):
        failed = cache.status == "failed"
        delta = data.delta[:, 0, e].numpy()
        np.testing.assert_array_equal(delta, (cache.status == "ok").astype(np.float32))
        assert (delta[failed] == 0).all()
        assert (data.dense(e)[torch.from_numpy(failed)] == 0).all()  # no embedding left behind
        assert torch.isfinite(data.dense(e)).all()
    # failed in both experts: the modality is missing for that sample
    both = (cc.status != "ok") & (raw.status != "ok")
    np.testing.assert_array_equal(data.modality_mask[:, 0].numpy(), ~both)
    assert ((cc.status == "failed") & (raw.status == "failed")).any()
    # the failed rows' 1e6 / NaN never reach the train-split statistics
    train_ok = (data.split == "train") & (raw.status == "ok")
    mean = data.standardization.mean["note"]["raw"]
    np.testing.assert_allclose(mean, raw.embeddings[train_ok].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.abs(mean).max() < 10
    # teachers: a failed teacher row is unavailable for distillation
    t_status = read_cache(cohort["teacher"]).status
    np.testing.assert_array_equal(data.teacher.ok[:, 0].numpy(), t_status == "ok")
    assert (data.teacher.dense(0)[torch.from_numpy(t_status == "failed")] == 0).all()


def test_failed_samples_stay_masked_in_protocols_and_the_model(cohort: dict) -> None:
    caches = {"note": {"cc": cohort["cc"], "raw": cohort["raw"]}}
    data = load_fusion_data(cohort["manifest"], caches)
    dropped = apply_protocol(data, "test_random-0.5", seed=0)
    assert (dropped.delta <= data.delta).all()  # a protocol never revives a failed expert
    hp = FusionHParams.from_config({"d": 8, "adapter_bottleneck": 4, "dropout": 0.0})
    model = build_model(build_spec(data, resolve_method("medmix", ["note"]), hp)).eval()
    with torch.no_grad():
        out = model(data.batch(torch.arange(data.n))[0], data.delta)
    assert torch.isfinite(out.logits).all()
    failed = torch.from_numpy(read_cache(cohort["cc"]).status == "failed")
    assert (out.alpha[failed, 0, 0] == 0).all()  # the router gives a failed expert no weight
    nothing = ~data.modality_mask[:, 0]
    missing = torch.from_numpy(read_cache(cohort["cc"]).status == "missing") & nothing
    failed_all = failed & nothing
    assert failed_all.any() and missing.any()
    # a sample whose every expert failed is predicted exactly like one with no note at all
    torch.testing.assert_close(out.logits[failed_all], out.logits[missing][:1].expand_as(
        out.logits[failed_all]))  # fmt: skip


# -- the sample status table ---------------------------------------------------------------


def test_reason_key_collapses_sample_details() -> None:
    assert reason_key("FileNotFoundError: '/a/s1.png'") == reason_key("FileNotFoundError: '/b/x'")
    assert reason_key("2-D array (512, 512), expected a 3-D volume") == reason_key(
        "2-D array (64, 80), expected a 3-D volume"
    )
    assert reason_key("empty text") == "empty text"


def test_status_table_counts_failed_rows(cohort: dict, tmp_path: Path) -> None:
    md, csv = tmp_path / "sample_status.md", tmp_path / "sample_status.csv"
    html = tmp_path / "sample_status.html"
    args = ["--caches", str(cohort["cc"]), str(cohort["raw"]), "--teachers", str(cohort["teacher"])]
    assert main([*args, "--md", str(md), "--csv", str(csv), "--html", str(html)]) == 0
    table = pd.read_csv(csv, keep_default_na=False)
    # the HTML page (the report's inline view) holds the same rows and counts as the CSV
    rows = [
        [htmllib.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
        for tr in re.findall(r"<tr>(.*?)</tr>", html.read_text())
        if "<td" in tr
    ]
    assert [r[1] for r in rows] == [
        f"{m} / {e}" for m, e in zip(table.modality, table.expert, strict=True)
    ]
    assert [[int(v) for v in r[2:5]] for r in rows] == table[
        ["ok", "missing", "failed"]
    ].values.tolist()
    assert table[["dataset", "modality", "expert", "role"]].values.tolist() == [
        ["tiny", "note", "cc", "expert"],
        ["tiny", "note", "raw", "expert"],
        ["tiny", "note", "teacher (big)", "teacher"],
    ]
    caches = (cohort["cc"], cohort["raw"], cohort["teacher"])
    for row, path in zip(table.itertuples(), caches, strict=True):
        status = read_cache(path).status
        assert (row.n, row.ok, row.missing, row.failed) == (
            len(status), (status == "ok").sum(), (status == "missing").sum(),
            (status == "failed").sum(),
        )  # fmt: skip
    cc_failed = int((read_cache(cohort["cc"]).status == "failed").sum())
    assert table.loc[0, "top_reasons"] == f"empty text ({cc_failed})"
    # three FileNotFoundErrors with different paths are one reason, the most frequent first
    assert table.loc[1, "top_reasons"] == (
        "FileNotFoundError: '…' (3); unreadable .npy (ValueError) (1)"
    )
    text = md.read_text()
    assert "## tiny" in text
    assert f"| note / cc | {table.loc[0, 'ok']} | {table.loc[0, 'missing']} | {cc_failed} |" in text
    assert "| note / teacher (big) |" in text and "CUDA out of memory (7)" in text
    assert "s001" not in text and "/data/" not in text  # no sample ids or paths in the table


def test_status_table_one_section_per_dataset(cohort: dict, tmp_path: Path) -> None:
    other = tmp_path / "results" / "other" / "embeddings" / "note" / "cc.parquet"
    other.parent.mkdir(parents=True)
    other.write_bytes(Path(cohort["cc"]).read_bytes())
    frame = status_table([cohort["cc"], other], [cohort["teacher"]])
    assert frame["dataset"].tolist() == ["tiny", "tiny", "other"]  # teachers after experts
    assert cache_status(other).failed == frame.loc[0, "failed"]


def test_unknown_status_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x" / "embeddings" / "m" / "e.parquet"
    path.parent.mkdir(parents=True)
    meta = CacheMeta(expert="e", model_id="x", dim=1, pooling="none", preprocess_hash="h")
    table = pa.table({"sample_id": ["a"], "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array([0.0], pa.float32()), 1), "status": ["weird"], "reason": [None]})  # fmt: skip
    meta_json = json.dumps(meta.__dict__).encode()
    pq.write_table(table.replace_schema_metadata({META_KEY: meta_json}), path)
    with pytest.raises(CacheError, match=r"e\.parquet.*'status'.*weird"):
        cache_status(path)


def test_run_caches_lists_only_what_the_runs_read() -> None:
    cfg = {
        "results": "R",
        "methods": ["medmix", "concat"],
        "single_modality": False,
        "datasets": {
            "d": {
                "adapter": "demo",
                "modalities": {"a": ["x", "y"], "b": ["x"]},
                "teachers": {"a": "big"},
            }
        },  # fmt: skip
        "experts": {"x": {}, "y": {}, "big": {}},
        "fusion": {"lambda_kd": 0.0},
    }
    assert run_caches(cfg, "expert") == [
        "R/d/embeddings/a/x.parquet",
        "R/d/embeddings/a/y.parquet",
        "R/d/embeddings/b/x.parquet",
    ]
    assert run_caches(cfg, "teacher") == []  # no distillation, no teacher-reading method
    cfg["fusion"]["lambda_kd"] = 0.1
    assert run_caches(cfg, "teacher") == ["R/d/teachers/a.parquet"]
    cfg["fusion"]["lambda_kd"], cfg["methods"] = 0.0, ["adacomed", "large"]
    assert run_caches(cfg, "teacher") == ["R/d/teachers/a.parquet"]
    assert "R/d/teachers/a.parquet" not in run_caches(cfg, "expert")


def test_too_many_failures_leaves_no_cache_that_looks_done(tmp_path: Path) -> None:
    """Outside Snakemake nobody deletes a failed job's output: the extraction itself must not
    leave a finished-looking cache. Its rows are kept aside, and dropped by a later success."""
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet", empty_every=2)
    out = tmp_path / "embeddings" / "note" / "cc.parquet"
    with pytest.raises(TooManyFailures) as err:
        extract(manifest, "note", CharCountExpert(), out, max_failed_fraction=0.1, progress=False)
    rejected = err.value.rejected
    assert not out.exists() and rejected == out.with_name("cc.rejected.parquet")
    assert str(rejected) in str(err.value) and "empty text" in str(err.value)
    data = read_cache(rejected)
    assert (data.status == "failed").sum() == err.value.summary.failed > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["cc.rejected.parquet"]  # no shards
    extract(manifest, "note", CharCountExpert(), out, max_failed_fraction=0.9, progress=False)
    assert out.exists() and not rejected.exists()
