"""Cache provenance: pipeline version and commit, manifest fingerprint, device and precision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cohorts.manifest import read_manifest, write_manifest
from extractors.cache import META_KEY, CacheMeta, CacheRecords, read_cache, read_meta, write_cache
from extractors.extract import extract, manifest_fingerprint
from medmix.version import git_commit, medmix_version
from tests.helpers import CharCountExpert, tiny_text_manifest


def _fingerprint(manifest: Path) -> str:
    df, _ = read_manifest(manifest)
    return manifest_fingerprint(
        df["sample_id"].astype(str).tolist(), df["split"].astype(str).tolist(), df["note"].tolist()
    )


def test_extracted_cache_records_version_manifest_device_and_precision(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=20)
    out = tmp_path / "cache.parquet"
    extract(manifest, "note", CharCountExpert(batch_size=4), out, shard_size=8, progress=False)

    meta = read_meta(out)
    assert meta.medmix_version == medmix_version() and meta.medmix_version != "unknown"
    assert meta.medmix_commit == (git_commit() or "")
    if meta.medmix_commit:
        assert re.fullmatch(r"[0-9a-f]{40,64}(-dirty)?", meta.medmix_commit)
    assert re.fullmatch(r"[0-9a-f]{64}", meta.manifest_sha256)
    assert meta.manifest_sha256 == _fingerprint(manifest)
    # what ran, next to what was asked for: a CPU expert runs fp32 (no autocast off the GPU)
    assert (meta.device, meta.device_name, meta.precision) == ("cpu", "", "fp32")
    assert (meta.device_requested, meta.precision_requested) == ("cpu", "auto")

    # the keys are plain JSON in the Parquet key-value metadata, readable without medmix
    raw = json.loads(pq.read_schema(out).metadata[META_KEY])
    for key in ("medmix_version", "medmix_commit", "manifest_sha256", "device", "precision"):
        assert key in raw

    # the embeddings are the expert's, unchanged: re-embedding the ok notes gives the same rows
    data = read_cache(out)
    df, _ = read_manifest(manifest)
    notes = dict(zip(df["sample_id"], df["note"], strict=True))
    ok_ids = [s for s, ok in zip(data.sample_ids, data.ok, strict=True) if ok]
    expected = CharCountExpert().embed([notes[s] for s in ok_ids])
    np.testing.assert_array_equal(data.embeddings[data.ok], expected)


def test_auto_device_records_the_device_it_resolved_to(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=10)
    out = tmp_path / "cache.parquet"
    extract(manifest, "note", CharCountExpert(device="auto"), out, shard_size=8, progress=False)
    meta = read_meta(out)
    assert meta.device_requested == "auto"
    assert meta.device == "cpu" or meta.device.startswith("cuda:")
    assert meta.device != "auto"


def test_manifest_fingerprint_follows_the_rows_not_the_location(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=12)
    df, mmeta = read_manifest(manifest)
    base = _fingerprint(manifest)

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    mmeta.root = str(moved)
    write_manifest(df, moved / "m.parquet", mmeta)
    assert _fingerprint(moved / "m.parquet") == base  # another data root, same rows

    edited = df.copy()
    edited.loc[0, "note"] = "an edited note"
    write_manifest(edited, tmp_path / "edited.parquet", mmeta)
    assert _fingerprint(tmp_path / "edited.parquet") != base

    resplit = df.copy()
    first = resplit["patient_id"] == resplit.loc[0, "patient_id"]  # a patient stays in one split
    resplit.loc[first, "split"] = "test" if resplit.loc[0, "split"] != "test" else "train"
    write_manifest(resplit, tmp_path / "resplit.parquet", mmeta)
    assert _fingerprint(tmp_path / "resplit.parquet") != base


def test_write_cache_stamps_the_version_and_old_caches_still_read(tmp_path: Path) -> None:
    meta = CacheMeta(expert="toy", model_id="offline:toy", dim=2, pooling="none",
                     preprocess_hash="0" * 16)  # fmt: skip
    records = CacheRecords(["a"], np.ones((1, 2), np.float32), ["ok"], [None])
    path = write_cache(tmp_path / "c.parquet", records, meta)
    assert read_meta(path).medmix_version == medmix_version()

    # a cache written before the provenance keys existed reads back with them empty
    old = {k: v for k, v in json.loads(pq.read_schema(path).metadata[META_KEY]).items()
           if k not in ("medmix_version", "medmix_commit", "manifest_sha256", "device",
                        "device_name", "precision", "device_requested",
                        "precision_requested")}  # fmt: skip
    table = pq.read_table(path).replace_schema_metadata({META_KEY: json.dumps(old).encode()})
    pq.write_table(table, tmp_path / "old.parquet")
    got = read_meta(tmp_path / "old.parquet")
    assert got.expert == "toy" and got.medmix_version == "" and got.device == ""
    assert read_cache(tmp_path / "old.parquet").ok.all()


def test_cuda_run_records_the_gpu_and_the_autocast_precision(monkeypatch) -> None:
    """On a GPU (faked here: the CPU-only CI has none): ``cuda`` resolves to the index and name
    of the device used, and ``precision: auto`` to the autocast dtype the GPU supports."""
    import torch

    import extractors.extract as ex

    monkeypatch.setattr(ex, "expert_device", lambda expert: "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    for bf16, want in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        meta = CacheMeta(expert="x", model_id="x", dim=1, pooling="none", preprocess_hash="0")
        ex._record_run_device(meta, CharCountExpert(device="cuda"), "cuda")
        assert (meta.device, meta.device_name, meta.precision) == ("cuda:0", "Fake GPU", want)
        assert (meta.device_requested, meta.precision_requested) == ("cuda", "auto")
