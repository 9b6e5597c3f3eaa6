"""The embedding cache contract (docs/design.md §3.2): schema, metadata, atomicity, crash + resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from extractors.cache import CacheError, CacheMeta, CacheRecords, read_cache, read_meta, write_cache
from extractors.extract import TooManyFailures, extract
from tests.helpers import CharCountExpert, tiny_text_manifest

REPO = Path(__file__).resolve().parents[2]


def _meta(dim: int = 4) -> CacheMeta:
    return CacheMeta(
        expert="toy", model_id="offline:toy", dim=dim, pooling="none", preprocess_hash="abc"
    )


def test_roundtrip_schema_and_nulls(tmp_path: Path) -> None:
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    rec = CacheRecords(
        ["a", "b", "c"], emb, ["ok", "missing", "failed"], [None, "not recorded", "bad file"]
    )
    path = write_cache(tmp_path / "c.parquet", rec, _meta())
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.column("embedding").null_count == 2
    data = read_cache(path)
    assert list(data.sample_ids) == ["a", "b", "c"]
    np.testing.assert_array_equal(data.embeddings[0], emb[0])
    np.testing.assert_array_equal(data.embeddings[1:], 0)  # not-ok rows are zero, never NaN
    assert read_meta(path).expert == "toy"
    # any tool can read it: pandas sees None for non-ok embeddings
    df = pq.read_table(path).to_pandas()
    assert df["embedding"].isna().tolist() == [False, True, True]


def test_float16_storage(tmp_path: Path) -> None:
    meta = _meta()
    meta.dtype = "float16"
    rec = CacheRecords(["a"], np.full((1, 4), 0.5, np.float32), ["ok"], [None])
    path = write_cache(tmp_path / "h.parquet", rec, meta)
    assert pq.read_table(path).schema.field("embedding").type == pa.list_(pa.float16(), 4)
    np.testing.assert_allclose(read_cache(path).embeddings, 0.5)


def test_non_finite_ok_row_is_rejected_and_nothing_written(tmp_path: Path) -> None:
    emb = np.ones((2, 4), np.float32)
    emb[1, 2] = np.nan
    rec = CacheRecords(["a", "b"], emb, ["ok", "ok"], [None, None])
    with pytest.raises(CacheError, match="b"):
        write_cache(tmp_path / "c.parquet", rec, _meta())
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp left behind


def test_wrong_dim_and_status_rejected(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="status"):
        CacheRecords(["a"], np.zeros((1, 4)), ["weird"], [None])
    with pytest.raises(CacheError, match="shape"):
        write_cache(
            tmp_path / "c.parquet", CacheRecords(["a"], np.zeros((1, 3)), ["ok"], [None]), _meta()
        )


def test_extract_records_missing_and_failed(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    summary = extract(
        manifest,
        "note",
        CharCountExpert(batch_size=4),
        tmp_path / "out.parquet",
        shard_size=8,
        progress=False,
    )
    data = read_cache(summary.path)
    assert summary.n == 40 and summary.ok + summary.missing + summary.failed == 40
    assert summary.missing == 6 and summary.failed > 0
    failed = data.status == "failed"
    assert set(data.reason[failed]) == {"empty text"}
    assert (data.reason[data.ok] == None).all()  # noqa: E711
    assert not (tmp_path / ".out.parquet.shards").exists()


def test_too_many_failures_fails_the_job(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet", empty_every=2)
    with pytest.raises(TooManyFailures, match="max_failed_fraction"):
        extract(
            manifest,
            "note",
            CharCountExpert(),
            tmp_path / "out.parquet",
            max_failed_fraction=0.1,
            progress=False,
        )


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.helpers import CharCountExpert
    from extractors.extract import extract
    extract(sys.argv[1], "note", CharCountExpert(batch_size=4, kill_after_batches=int(sys.argv[3])),
            sys.argv[2], shard_size=8, progress=False)
    """
)


@pytest.mark.parametrize("kill_after", [1, 3, 6])
def test_crash_then_resume_gives_the_same_file(tmp_path: Path, kill_after: int) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PYTHONPATH": str(REPO)}
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    killed = tmp_path / "killed.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(manifest), str(killed), str(kill_after)],
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == -9  # SIGKILL mid-extraction
    assert not killed.exists()  # nothing that looks finished
    shards = sorted((tmp_path / ".killed.parquet.shards").glob("shard-*.parquet"))
    assert len(shards) == (kill_after * 4) // 8  # only whole shards survive

    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    try:
        resumed = extract(
            manifest, "note", CharCountExpert(batch_size=4), killed, shard_size=8, progress=False
        )
        assert resumed.shards_resumed == len(shards)
        clean = extract(
            manifest,
            "note",
            CharCountExpert(batch_size=4),
            tmp_path / "clean.parquet",
            shard_size=8,
            progress=False,
        )
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    assert killed.read_bytes() == clean.path.read_bytes()
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".")
    ] == []  # no temp files left


def test_changed_expert_config_discards_old_shards(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    out = tmp_path / "c.parquet"
    stale = tmp_path / ".c.parquet.shards"
    stale.mkdir()
    (stale / "plan.json").write_text('{"preprocess_hash": "other"}')
    (stale / "shard-000000.parquet").write_text("garbage")
    summary = extract(manifest, "note", CharCountExpert(), out, shard_size=8, progress=False)
    assert summary.shards_resumed == 0
    assert read_cache(out).ok.sum() == summary.ok


def test_extract_validates_the_manifest_before_any_work(tmp_path: Path) -> None:
    from cohorts.manifest import ManifestError

    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    table = pq.read_table(manifest)
    df = table.to_pandas()
    df.loc[1, "sample_id"] = df.loc[0, "sample_id"]  # duplicate id, written past the validator
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
            table.schema.metadata
        ),
        manifest,
    )
    expert = CharCountExpert()
    with pytest.raises(ManifestError, match="duplicate ids: s000"):
        extract(manifest, "note", expert, tmp_path / "out.parquet", progress=False)
    assert expert.batches == 0 and not (tmp_path / "out.parquet").exists()
