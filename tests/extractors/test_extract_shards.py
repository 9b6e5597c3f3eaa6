"""Sharded extraction: the split, the gather (identical to an unsharded run), bad parts."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from cohorts.demo import generate_cohort
from cohorts.manifest import read_manifest, write_manifest
from extractors.__main__ import main as extractors_main
from extractors.cache import read_cache, read_meta
from extractors.cache_checks import CacheError
from extractors.extract import TooManyFailures, extract, rejected_path
from extractors.registry import create_expert, register_preset
from extractors.shards import gather
from medmix.cli import run_cli
from medmix.config import ConfigError
from medmix.extract_shards import (
    check_shard_settings,
    parse_shard,
    part_path,
    part_paths,
    part_range,
    shard_count,
    without_shard_settings,
)
from tests.helpers import CharCountExpert, tiny_text_manifest

DATASET = "dm"
SHARD_SIZE = 4  # 25 samples -> 7 resume shards
EXPERTS = {
    "tfidf-svd": {"type": "tfidf-svd", "n_components": 8},
    "radiomics": {"type": "texture-glcm-lbp"},
    "ts-stats": {"type": "ts-stats"},
}


@pytest.fixture(autouse=True)
def _pinned_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # created_at of both runs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo-mimic cohort (images, notes, EHR series; some modalities missing)."""
    results = tmp_path_factory.mktemp("results")
    generate_cohort("mimic", results / DATASET, 20, 5, DATASET, progress=False)
    for name, spec in EXPERTS.items():
        register_preset(name, spec)
    return results


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sharded(manifest: Path, modality: str, make: Any, out: Path, n: int, **kw: Any) -> Path:
    """Every part of ``out`` extracted (each by a fresh expert, as separate jobs would), then
    gathered."""
    parts = part_paths(out, n)
    for i, part in enumerate(parts, 1):
        extract(manifest, modality, make(), part, part=(i, n), progress=False, **kw)
    gather(manifest, parts, out, dataset=read_meta(parts[0]).dataset, modality=modality,
           expert=make().name, max_failed_fraction=kw.get("max_failed_fraction", 0.5))  # fmt: skip
    return out


# --- the split -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_shards", [1, 5, 6, 97])
@pytest.mark.parametrize("parts", [1, 2, 4, 8])
def test_parts_are_contiguous_balanced_and_complete(n_shards: int, parts: int) -> None:
    ranges = [part_range(n_shards, i, parts) for i in range(1, parts + 1)]
    assert [s for r in ranges for s in r] == list(range(n_shards))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert ranges == [part_range(n_shards, i, parts) for i in range(1, parts + 1)]  # stable


def test_shard_option_and_part_names() -> None:
    assert parse_shard("2/4") == (2, 4) and parse_shard("1/1") == (1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "2/0", "-1/4"):
        with pytest.raises(argparse.ArgumentTypeError, match="I/N"):
            parse_shard(bad)
    cache = "results/d/embeddings/frontal/dinov2.parquet"
    assert part_path(cache, 2, 4) == "results/d/embeddings/frontal/.dinov2.part/2-of-4.parquet"
    assert part_paths(cache, 2)[0].endswith(".dinov2.part/1-of-2.parquet")
    with pytest.raises(ValueError, match="part 5 of 4"):
        part_range(10, 5, 4)


def test_shard_settings() -> None:
    cfg = {
        "experts": {"a": {"type": "tfidf-svd"}, "b": {"type": "minilm"}, "rag": {"type": "rag"}},
        "extraction": {"shard_size": 8, "shards": 4, "shards_by_expert": {"b": 1}},
    }
    assert shard_count(cfg, "a") == 4 and shard_count(cfg, "b") == 1
    assert shard_count({"extraction": {}}, "a") == 1  # default: unsharded
    check_shard_settings(cfg)
    assert without_shard_settings({"results": "r", "extraction": cfg["extraction"]}) == {
        "results": "r",
        "extraction": {"shard_size": 8},
    }
    for name, msg in (("zz", "not an expert"), ("rag", "RAG expert")):
        bad = {**cfg, "extraction": {"shards_by_expert": {name: 2}}}
        with pytest.raises(ConfigError, match=f"shards_by_expert: '{name}'.*{msg}"):
            check_shard_settings(bad)


# --- gathered == unsharded -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "expert"),
    [("note", "tfidf-svd"), ("frontal", "radiomics"), ("ehr", "ts-stats")],
)
def test_gathered_cache_is_byte_identical_to_unsharded(
    cohort: Path, tmp_path: Path, modality: str, expert: str
) -> None:
    """Fitted (TF-IDF+SVD fits on the whole training split in every part), image and series
    experts; 4 parts (uneven) and 8 parts (more parts than resume shards: one is empty)."""
    manifest = cohort / DATASET / "manifest.parquet"
    kw = {"shard_size": SHARD_SIZE}
    plain = tmp_path / "plain" / f"{expert}.parquet"
    extract(manifest, modality, create_expert(expert), plain, progress=False, **kw)
    for n in (4, 8):
        out = _sharded(manifest, modality, lambda: create_expert(expert),
                       tmp_path / f"n{n}" / f"{expert}.parquet", n, **kw)  # fmt: skip
        assert _sha(out) == _sha(plain), f"{n} parts: the gathered cache differs"
        rows = [read_meta(q).extra["part"]["rows"] for q in part_paths(out, n)]
        assert [hi - lo for lo, hi in rows].count(0) == (n == 8), rows
    a, b = read_cache(plain), read_cache(out)
    assert (a.status == "ok").sum() > 0 and (a.status == "missing").sum() > 0
    assert "part" not in b.meta.extra


class InfoExpert(CharCountExpert):
    """CharCountExpert with per-sample facts (the ``extra`` column and ``item_info``)."""

    registry_name = "char-count-info"

    def item_info(self, item: str) -> dict[str, int]:
        return {"n_chars": len(item)}


def test_gather_recomputes_item_info_and_keeps_failures(tmp_path: Path) -> None:
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=40)
    kw = {"shard_size": 3}
    plain = extract(manifest, "note", InfoExpert(), tmp_path / "plain.parquet",
                    progress=False, **kw).path  # fmt: skip
    out = _sharded(manifest, "note", InfoExpert, tmp_path / "sharded.parquet", 5, **kw)
    assert _sha(out) == _sha(plain)
    meta = read_meta(out)
    assert meta.extra["item_info"]["n_chars"]["n"] == (read_cache(out).status == "ok").sum()
    assert (read_cache(out).status == "failed").sum() > 0  # empty notes, as unsharded


# --- max_failed_fraction is judged on the whole --------------------------------------------


def _failing_manifest(path: Path, bad: range, n: int = 24) -> Path:
    """tiny_text_manifest with empty notes (-> failed) exactly at rows ``bad``."""
    src = tiny_text_manifest(path, n=n, missing_every=10**6, empty_every=10**6)
    df, meta = read_manifest(src)
    df.loc[list(bad), "note"] = "  "
    return write_manifest(df, path, meta)


def test_failures_are_judged_on_the_gathered_whole(tmp_path: Path) -> None:
    # rows 0-7 fail: part 1 of 3 (rows 0-7) fails entirely, the whole 8/24 < 0.5
    manifest = _failing_manifest(tmp_path / "m.parquet", range(8))
    kw = {"shard_size": 4, "max_failed_fraction": 0.5}
    out = _sharded(manifest, "note", CharCountExpert, tmp_path / "ok.parquet", 3, **kw)
    assert (read_cache(out).status == "failed").sum() == 8
    # the same parts over a stricter threshold: rejected like an unsharded run
    parts = part_paths(out, 3)
    out2 = tmp_path / "strict.parquet"
    with pytest.raises(TooManyFailures, match=r"8 of 24 present samples failed"):
        gather(manifest, parts, out2, dataset="tiny", modality="note", expert="char-count",
               max_failed_fraction=0.25)  # fmt: skip
    assert not out2.exists() and rejected_path(out2).exists()
    with pytest.raises(TooManyFailures):
        extract(manifest, "note", CharCountExpert(), tmp_path / "plain.parquet",
                progress=False, shard_size=4, max_failed_fraction=0.25)  # fmt: skip


# --- bad parts are refused with a one-line error naming the part ----------------------------


@pytest.fixture
def four_parts(tmp_path: Path) -> dict[str, Any]:
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=40)
    out = tmp_path / "c.parquet"
    parts = part_paths(out, 4)
    for i, part in enumerate(parts, 1):
        extract(manifest, "note", CharCountExpert(), part, part=(i, 4), progress=False,
                shard_size=4)  # fmt: skip
    return {"manifest": manifest, "out": out, "parts": parts}


def _gather(p: dict[str, Any], parts: list, manifest: Path | None = None) -> None:
    gather(manifest or p["manifest"], parts, p["out"], dataset="tiny", modality="note",
           expert="char-count")  # fmt: skip


def test_missing_part_is_named(four_parts: dict) -> None:
    p = four_parts
    with pytest.raises(CacheError, match=r"2-of-4\.parquet: part 2 of 4 is missing"):
        _gather(p, [p["parts"][0], *p["parts"][2:]])
    Path(p["parts"][3]).unlink()
    with pytest.raises(CacheError, match=r"4-of-4\.parquet: part not found"):
        _gather(p, p["parts"])
    assert not p["out"].exists()


def test_duplicate_and_foreign_parts_are_refused(four_parts: dict, tmp_path: Path) -> None:
    p = four_parts
    with pytest.raises(CacheError, match=r"1-of-4\.parquet: part 1 of 4 given twice"):
        _gather(p, [p["parts"][0], *p["parts"]])
    whole = extract(p["manifest"], "note", CharCountExpert(), tmp_path / "whole.parquet",
                    progress=False, shard_size=4).path  # fmt: skip
    with pytest.raises(CacheError, match=r"whole\.parquet: not a part of a sharded extraction"):
        _gather(p, [whole, *p["parts"][1:]])
    # a part written with another resume-shard size: another plan
    other = tmp_path / "other" / "c.parquet"
    odd = part_path(other, 2, 4)
    extract(p["manifest"], "note", CharCountExpert(), odd, part=(2, 4), progress=False,
            shard_size=5)  # fmt: skip
    with pytest.raises(
        CacheError, match=r"2-of-4\.parquet: written under another plan.*shard_size"
    ):
        _gather(p, [p["parts"][0], odd, *p["parts"][2:]])
    with pytest.raises(CacheError, match=r"a part of tiny/note/char-count, not of tiny/note/x"):
        gather(p["manifest"], p["parts"], p["out"], dataset="tiny", modality="note", expert="x")
    assert not p["out"].exists()


def test_parts_of_an_older_manifest_are_refused(four_parts: dict, tmp_path: Path) -> None:
    p = four_parts
    df, meta = read_manifest(p["manifest"])
    df.loc[5, "note"] = "an edited note"
    edited = write_manifest(df, tmp_path / "edited.parquet", meta)
    with pytest.raises(CacheError, match=r"1-of-4\.parquet: extracted from another version"):
        _gather(p, p["parts"], manifest=edited)


def test_part_with_rows_of_another_part_is_refused(four_parts: dict) -> None:
    p = four_parts
    shutil.copy(p["parts"][0], p["parts"][1])  # part 1's file where part 2 should be
    with pytest.raises(CacheError, match=r"part 1 of 4 given twice"):
        _gather(p, p["parts"])


# --- the command line ------------------------------------------------------------------------


def test_cli_shard_and_gather(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``extract --shard I/N`` writes the part beside the cache by default; ``gather`` finds
    the config's parts by default and writes the cache an unsharded ``extract`` writes."""
    cfg = {
        "results": str(cohort),
        "datasets": {DATASET: {"adapter": "demo",
                               "demo": {"kind": "mimic", "n_patients": 20, "seed": 5},
                               "modalities": {"note": ["tfidf-svd"]}}},
        "experts": {"tfidf-svd": EXPERTS["tfidf-svd"]},
        "extraction": {"shard_size": SHARD_SIZE, "shards": 3},
        "methods": ["medmix"],
    }  # fmt: skip
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    common = ["--config", str(conf), "--dataset", DATASET, "--modality", "note",
              "--expert", "tfidf-svd", "--quiet"]  # fmt: skip
    cache = cohort / DATASET / "embeddings" / "note" / "tfidf-svd.parquet"
    plain = tmp_path / "plain.parquet"
    assert extractors_main(["extract", *common, "--no-progress", "--out", str(plain)]) == 0
    for i in (1, 2, 3):
        assert extractors_main(["extract", *common, "--no-progress", "--shard", f"{i}/3"]) == 0
    assert all(Path(q).exists() for q in part_paths(cache, 3))
    assert extractors_main(["gather", *common]) == 0
    assert "gathered from 3 parts" in capsys.readouterr().out
    assert _sha(cache) == _sha(plain)
    meta = json.loads(pq.read_schema(cache).metadata[b"medmix.cache"])
    assert meta["manifest_sha256"] and "part" not in meta["extra"]
    # a missing part: one line naming it, exit code 2
    Path(part_paths(cache, 3)[1]).unlink()
    assert run_cli(extractors_main, ["gather", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(
        "2-of-3.parquet: part not found (its shard job has not finished: rerun it)"
    ), err
    with pytest.raises(SystemExit) as exc:
        extractors_main(["extract", *common, "--shard", "4/3"])
    assert exc.value.code == 2
    assert "--shard: must be I/N" in capsys.readouterr().err


def _edit_meta(path: str, **changes: str) -> None:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"medmix.cache"])
    meta.update(changes)
    pq.write_table(table.replace_schema_metadata({b"medmix.cache": json.dumps(meta)}), path)


def test_run_metadata_of_the_parts_is_merged(four_parts: dict) -> None:
    """Shard jobs on other hardware, or from a checkout edited meanwhile, still gather: the
    devices are listed, created_at is the earliest, the version is the gathering code's."""
    p = four_parts
    _edit_meta(p["parts"][2], device="cuda:0", device_name="GPU X", precision="bf16",
               created_at="2000-01-01T00:00:00Z", medmix_commit="0" * 40)  # fmt: skip
    _gather(p, p["parts"])
    meta, first = read_meta(p["out"]), read_meta(p["parts"][0])
    assert (meta.device, meta.device_name, meta.precision) == (
        "cpu; cuda:0",
        "GPU X",
        "fp32; bf16",
    )
    assert meta.created_at == "2000-01-01T00:00:00Z"
    assert meta.medmix_commit == first.medmix_commit
    # work metadata must agree: another preprocessing is another plan
    _edit_meta(p["parts"][1], preprocess_hash="different")
    with pytest.raises(
        CacheError, match=r"2-of-4\.parquet: written under another plan.*preprocess"
    ):
        _gather(p, p["parts"])
