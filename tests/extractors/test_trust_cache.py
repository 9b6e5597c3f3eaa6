"""The cache contract (docs/design.md §3.2) enforced where caches are written and read, and
interrupted extractions that always resume. Read side: ``read_cache``, ``load_fusion_data``
and ``fusion.predict`` refuse, with a one-line ``CacheError`` / ``FusionDataError`` naming the
file, a cache that breaks the status vocabulary, status/embedding consistency, the Parquet
format or the metadata the run expects. Write side (the real ``extract()``): an all-zero,
constant or non-finite (as stored) ``ok`` embedding becomes a failed sample with its reason.
Resume: shards of another dtype, damaged shards, ``force``, a second writer (the lock).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohorts.manifest import ManifestError, ManifestMeta, read_manifest, write_manifest
from extractors.cache import (
    META_KEY,
    CacheError,
    CacheMeta,
    CacheRecords,
    read_cache,
    write_cache,
)
from extractors.cache_lock import CacheLock, CacheLockedError, lock_path
from extractors.extract import TooManyFailures, extract, rejected_path
from extractors.registry import create_expert
from fusion.data import FusionDataError, load_fusion_data
from fusion.predict import predict
from fusion.train import run_training
from medmix.config import cache_paths, dataset_paths
from medmix.methods import TEACHER_EXPERT
from tests.fusion.test_fusion_train import DATASET, FUSION, make_config, write_synthetic
from tests.helpers import CharCountExpert, tiny_text_manifest
from tests.proc_helpers import fork_main, timed_run, wait_child

REPO = Path(__file__).resolve().parents[2]
EPOCH = "1700000000"
CHILD_ENV = {"SOURCE_DATE_EPOCH": EPOCH, "MEDMIX_EXTRACT_WORKERS": "0", "OMP_NUM_THREADS": "1"}


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# -- read side: a synthetic cohort and caches broken one way each ---------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The synthetic cohort of test_fusion_train (dataset ``synth``, modalities a, b), its
    caches stamped with dataset and modality like extracted ones, and a small trained model."""
    cfg = make_config(tmp_path_factory.mktemp("results"), FUSION | {"max_epochs": 2})
    write_synthetic(cfg, n=120)
    caches = cache_paths(cfg, DATASET)
    for m, ev in caches.items():
        for e, path in ev.items():
            _rewrite(path, path, meta={"dataset": DATASET, "modality": m, "expert": e})
    out = dataset_paths(cfg, DATASET).run_dir("full", "medmix")
    run_training(cfg, DATASET, "medmix", "full", out, seeds=[0], threads=1)
    return {"cfg": cfg, "caches": caches, "manifest": dataset_paths(cfg, DATASET).manifest,
            "model": out / "seed0"}  # fmt: skip


def _rewrite(src: Path, dst: Path, meta: dict | None = None, table_fn=None) -> Path:
    """Copy a cache, editing its metadata and/or its table (written past the writer)."""
    table = pq.read_table(src)
    raw = json.loads(table.schema.metadata[META_KEY])
    raw.update(meta or {})
    if table_fn is not None:
        table = table_fn(table)
    dst.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(raw).encode()}), dst)
    return dst


def _set_column(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))


def _with_embeddings(table: pa.Table, fn) -> pa.Table:
    """Edit the embeddings densely: ``fn(full (N, D), valid (N,))`` edits ``full`` in place
    and returns the rows that keep a (non-null) vector."""
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    valid = ~np.asarray(col.is_null().to_pylist())
    full = np.zeros((len(col), dim), np.float32)
    full[valid] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    keep = fn(full, valid)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim, mask=pa.array(~keep))
    return table.set_column(1, "embedding", arr)


def _edit_status(first: str, to: str):
    """Change the status of the first row whose status is ``first`` to ``to``."""

    def fn(table: pa.Table) -> pa.Table:
        status = table.column("status").to_pylist()
        status[status.index(first)] = to
        return _set_column(table, "status", status)

    return fn


def _first_id(path: Path, status: str) -> str:
    t = pq.read_table(path)
    return t.column("sample_id")[t.column("status").to_pylist().index(status)].as_py()


def _broken(synth: dict, tmp_path: Path, **kw) -> tuple[dict, Path]:
    """The synth caches with a1 replaced by a broken copy; (caches, broken path)."""
    bad = _rewrite(synth["caches"]["a"]["a1"], tmp_path / "embeddings" / "a" / "a1.parquet", **kw)
    caches = {m: dict(ev) for m, ev in synth["caches"].items()}
    caches["a"]["a1"] = bad
    return caches, bad


@pytest.mark.parametrize("to", ["OK", "pending", None])
def test_status_outside_the_vocabulary_is_refused_not_read_as_missing(
    synth: dict, tmp_path: Path, to: str | None
) -> None:
    caches, bad = _broken(synth, tmp_path, table_fn=_edit_status("ok", to))
    sid = _first_id(synth["caches"]["a"]["a1"], "ok")
    for call in (lambda: read_cache(bad), lambda: load_fusion_data(synth["manifest"], caches)):
        with pytest.raises(CacheError) as exc:
            call()
        msg = _one_line(exc, bad)
        assert f"column 'status' has unknown value(s) [{to!r}]" in msg and sid in msg
        assert "allowed: ok, missing, failed" in msg


def test_missing_row_relabelled_ok_without_embedding_is_refused(
    synth: dict, tmp_path: Path
) -> None:
    caches, bad = _broken(synth, tmp_path, table_fn=_edit_status("missing", "ok"))
    sid = _first_id(synth["caches"]["a"]["a1"], "missing")
    with pytest.raises(CacheError) as exc:
        load_fusion_data(synth["manifest"], caches)
    assert f"1 'ok' row(s) without an embedding (e.g. ['{sid}'])" in _one_line(exc, bad)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_ok_embedding_is_refused_not_masked(
    synth: dict, tmp_path: Path, value: float
) -> None:
    def poison(table: pa.Table) -> pa.Table:
        def fn(full: np.ndarray, valid: np.ndarray) -> np.ndarray:
            full[np.flatnonzero(valid)[0], 3] = value  # inside the first ok row
            return valid

        return _with_embeddings(table, fn)

    caches, bad = _broken(synth, tmp_path, table_fn=poison)
    sid = _first_id(synth["caches"]["a"]["a1"], "ok")
    with pytest.raises(CacheError) as exc:
        load_fusion_data(synth["manifest"], caches)
    assert f"non-finite embedding in 1 'ok' row(s) (e.g. ['{sid}'])" in _one_line(exc, bad)


@pytest.mark.parametrize(
    ("field", "value", "want"),
    [
        ("dataset", "other-cohort", "cache of dataset 'other-cohort', expected 'synth'"),
        ("modality", "b", "cache of modality 'b', expected 'a'"),
    ],
)
def test_cache_of_another_dataset_or_modality_is_refused(
    synth: dict, tmp_path: Path, field: str, value: str, want: str
) -> None:
    caches, bad = _broken(synth, tmp_path, meta={field: value})
    with pytest.raises(CacheError) as exc:
        load_fusion_data(synth["manifest"], caches)
    assert want in _one_line(exc, bad)


def test_teacher_cache_of_another_dataset_is_refused(synth: dict, tmp_path: Path) -> None:
    teacher = _rewrite(synth["caches"]["a"]["a2"], tmp_path / "teachers" / "a.parquet",
                       meta={"dataset": "elsewhere", "expert": "big"})  # fmt: skip
    with pytest.raises(CacheError) as exc:
        load_fusion_data(synth["manifest"], synth["caches"], teachers={"a": teacher})
    assert "cache of dataset 'elsewhere', expected 'synth'" in _one_line(exc, teacher)


def test_cache_of_another_expert_under_this_key_is_refused(synth: dict, tmp_path: Path) -> None:
    caches, bad = _broken(synth, tmp_path, meta={"expert": "a2"})
    with pytest.raises(FusionDataError) as exc:
        load_fusion_data(synth["manifest"], caches)
    assert "cache of expert 'a2' given as expert 'a1' of 'a'" in _one_line(exc, bad)
    # a teacher cache used as a model input (AdaCoMed's large branch) may be one of the
    # modality's own experts: the same file under the teacher key is not a mix-up
    as_teacher = {m: dict(ev) for m, ev in synth["caches"].items()}
    as_teacher["a"][TEACHER_EXPERT] = synth["caches"]["a"]["a2"]
    data = load_fusion_data(synth["manifest"], as_teacher)
    assert data.experts["a"] == [*synth["caches"]["a"], TEACHER_EXPERT]


def _null_id(table: pa.Table) -> pa.Table:
    ids = table.column("sample_id").to_pylist()
    ids[4] = None
    return _set_column(table, "sample_id", ids)


@pytest.mark.parametrize(
    ("edit", "kw", "want"),
    [
        ({}, {"dim": 13}, "cache of dim 12, expected 13"),
        ({"meta": {"dim": 11}}, {}, "expected fixed_size_list<float32>[11] (the metadata's dim"),
        ({"table_fn": lambda t: t.drop_columns(["status"])}, {},
         "lacks the 'status' column (has ['sample_id', 'embedding', 'reason'])"),
        ({"table_fn": _null_id}, {}, "null sample_id in row(s) [4]"),
    ],
    ids=["expected-dim", "meta-dim-vs-column", "no-status-column", "null-sample-id"],
)  # fmt: skip
def test_malformed_cache_is_refused(
    synth: dict, tmp_path: Path, edit: dict, kw: dict, want: str
) -> None:
    _, bad = _broken(synth, tmp_path, **edit)
    with pytest.raises(CacheError) as exc:
        read_cache(bad, **kw)
    assert want in _one_line(exc, bad)


@pytest.mark.parametrize("kind", ["text", "truncated", "directory"])
def test_file_that_is_not_parquet_is_a_one_line_cache_error(
    synth: dict, tmp_path: Path, kind: str
) -> None:
    bad = tmp_path / "embeddings" / "a" / "a1.parquet"
    bad.parent.mkdir(parents=True)
    if kind == "text":
        bad.write_text("sample_id,embedding,status\ns1,,ok\n")
    elif kind == "truncated":
        blob = synth["caches"]["a"]["a1"].read_bytes()
        bad.write_bytes(blob[: len(blob) // 2])
    else:
        bad.mkdir()
    caches = {m: dict(ev) for m, ev in synth["caches"].items()}
    caches["a"]["a1"] = bad
    for call in (lambda: read_cache(bad), lambda: load_fusion_data(synth["manifest"], caches)):
        with pytest.raises(CacheError) as exc:
            call()
        assert f"{bad}: not a readable Parquet file (" in _one_line(exc, bad)


def test_row_not_ok_with_a_vector_is_ignored_never_data(
    synth: dict, tmp_path: Path, caplog
) -> None:
    """Only ``status`` decides: a vector left in a failed row is dropped (zero), with a
    warning naming the file; the ok rows read exactly as before."""

    def fill(table: pa.Table) -> pa.Table:
        def fn(full: np.ndarray, valid: np.ndarray) -> np.ndarray:
            full[~valid] = 1e6
            return np.ones_like(valid)  # every row carries a vector

        return _with_embeddings(table, fn)

    _, bad = _broken(synth, tmp_path, table_fn=fill)
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        got = read_cache(bad)
    want = read_cache(synth["caches"]["a"]["a1"])
    np.testing.assert_array_equal(got.embeddings, want.embeddings)
    assert (got.embeddings[~got.ok] == 0).all()
    assert f"{bad}: {int((~want.ok).sum())} row(s) not 'ok' carry an embedding" in caplog.text


def test_predict_refuses_caches_of_two_cohorts_a_broken_one_and_a_mixup(
    synth: dict, tmp_path: Path
) -> None:
    a1, a2, b1 = synth["caches"]["a"]["a1"], synth["caches"]["a"]["a2"], synth["caches"]["b"]["b1"]
    other = _rewrite(b1, tmp_path / "o" / "b1.parquet", meta={"dataset": "other-cohort"})
    with pytest.raises(CacheError) as exc:
        predict(synth["model"], {"a": {"a1": a1}, "b": {"b1": other}})
    msg = _one_line(exc, other)
    assert "cache of dataset 'other-cohort'" in msg and "is of dataset 'synth'" in msg
    res = predict(synth["model"], {"a": {"a1": a1}, "b": {"b1": b1}})  # one cohort: fine
    assert np.isfinite(res.probs).all() and len(res.sample_ids) == 120
    bad = _rewrite(a1, tmp_path / "p" / "a1.parquet", table_fn=_edit_status("ok", "OK"))
    with pytest.raises(CacheError) as exc:
        predict(synth["model"], {"a": {"a1": bad}})
    assert "column 'status' has unknown value(s) ['OK']" in _one_line(exc, bad)
    with pytest.raises(CacheError) as exc:  # a2's cache given as a1
        predict(synth["model"], {"a": {"a1": a2}})
    assert "cache of expert 'a2' given as expert 'a1'" in _one_line(exc, a2)


def test_valid_caches_read_exactly_as_stored(synth: dict) -> None:
    """The checks change nothing for a valid cache: ok rows as stored, zero rows elsewhere."""
    for ev in synth["caches"].values():
        for path in ev.values():
            table = pq.read_table(path)
            data = read_cache(path)
            ok = np.array([s == "ok" for s in table.column("status").to_pylist()])
            stored = np.array([v for v in table.column("embedding").to_pylist() if v is not None])
            np.testing.assert_array_equal(data.embeddings[ok], stored.astype(np.float32))
            assert (data.embeddings[~ok] == 0).all()
            assert data.sample_ids.tolist() == table.column("sample_id").to_pylist()


# -- write side: the real extract() -------------------------------------------------------


class Flat(CharCountExpert):
    """Letter counts, except notes containing 'constant' (all components 0.5) or 'nothing'
    (all zero) — an expert that returns vectors without information."""

    registry_name = "flat"

    def embed(self, batch: list[str]) -> np.ndarray:
        out = super().embed(batch)
        for i, text in enumerate(batch):
            if "constant" in text:
                out[i] = 0.5
            elif "nothing" in text:
                out[i] = 0.0
        return out


def _notes_manifest(path: Path, notes: list[str | None], splits: list[str] | None = None) -> Path:
    cols = ["sample_id", "patient_id", "split", "note", "label_y"]
    splits = splits or [("train", "val", "test")[i % 3] for i in range(len(notes))]
    rows = [(f"n{i:02d}", f"p{i:02d}", splits[i], v, i % 2) for i, v in enumerate(notes)]
    frame = pd.DataFrame(rows, columns=cols).astype({c: object for c in cols[:4]})
    meta = ManifestMeta("notes", "binary", {"note": "text"}, ["y"], adapter="test")
    return write_manifest(frame, path, meta)


def test_constant_and_all_zero_embeddings_become_failed_samples(tmp_path: Path) -> None:
    notes = [f"an ordinary note {i}" for i in range(10)]
    notes[2], notes[5], notes[7] = "constant pressure", "nothing here", "1234 5678"
    manifest = _notes_manifest(tmp_path / "m.parquet", notes)
    summary = extract(manifest, "note", Flat(batch_size=4), tmp_path / "c.parquet",
                      shard_size=4, progress=False)  # fmt: skip
    data = read_cache(summary.path)
    reasons = dict(zip(data.sample_ids, data.reason, strict=True))
    assert data.status.tolist().count("failed") == 3 and summary.failed == 3
    assert reasons["n02"] == "constant embedding (all components equal; carries no information)"
    assert reasons["n05"] == "all-zero embedding (carries no information)"
    assert reasons["n07"] == "all-zero embedding (carries no information)"  # no letters
    assert (data.embeddings[~data.ok] == 0).all()
    assert pq.read_table(summary.path).column("embedding").null_count == 3


def _ehr_manifest(tmp_path: Path, big: float) -> Path:
    root = tmp_path / "ehr"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        frame = pd.DataFrame({"hour": np.arange(10), "hr": rng.normal(80, 5, 10),
                              "sbp": rng.normal(120, 9, 10)})  # fmt: skip
        if i == 3:
            frame.loc[4, "hr"] = big
        frame.to_csv(root / f"s{i}.csv", index=False)
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i}",
                     "split": ("train", "val", "test")[i % 3], "ehr": f"s{i}.csv", "label_y": i % 2})  # fmt: skip
    meta = ManifestMeta(dataset="ehr", task_type="binary", modalities={"ehr": "timeseries"},
                        labels=["y"], adapter="test", root=str(root))  # fmt: skip
    return write_manifest(pd.DataFrame(rows), tmp_path / "m.parquet", meta)


def test_float16_overflow_is_checked_on_the_stored_value(tmp_path: Path) -> None:
    manifest = _ehr_manifest(tmp_path, 2e5)
    out = tmp_path / "c" / "ts.parquet"
    summary = extract(manifest, "ehr", create_expert("ts-stats"), out, dtype="float16",
                      progress=False)  # fmt: skip
    data = read_cache(out)
    assert data.status.tolist() == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert data.reason[3] == "non-finite embedding after the cast to float16 (out of its range)"
    assert np.isfinite(data.embeddings).all() and summary.ok == 5
    assert pq.read_table(out).schema.field("embedding").type.value_type == pa.float16()
    # in float32 the same value is storable: the sample is ok
    ok32 = extract(manifest, "ehr", create_expert("ts-stats"), tmp_path / "c" / "ts32.parquet",
                   progress=False)  # fmt: skip
    assert ok32.ok == 6 and ok32.failed == 0


def test_write_cache_refuses_values_that_overflow_the_storage_dtype(tmp_path: Path) -> None:
    meta = CacheMeta(expert="x", model_id="offline:x", dim=3, pooling="none",
                     preprocess_hash="h", dtype="float16")  # fmt: skip
    rec = CacheRecords(["a", "b"], np.array([[1, 2, 3], [1, 2e5, 3]], np.float32),
                       ["ok", "ok"], [None, None])  # fmt: skip
    with pytest.raises(
        CacheError, match=r"non-finite embedding \(as float16\) for sample\(s\) \['b'\]"
    ):
        write_cache(tmp_path / "c.parquet", rec, meta)
    assert list(tmp_path.iterdir()) == []


def test_tfidf_fitted_on_one_note_fails_the_job_not_an_all_zero_cache(tmp_path: Path) -> None:
    notes = [f"note number {i} with words" for i in range(6)]
    splits = ["train"] + ["test"] * 5
    manifest = _notes_manifest(tmp_path / "m.parquet", notes, splits)
    out = tmp_path / "c" / "tfidf-svd.parquet"
    with pytest.raises(TooManyFailures) as exc:
        extract(manifest, "note", create_expert("tfidf-svd", n_components=8), out,
                progress=False)  # fmt: skip
    msg = str(exc.value)
    assert "6 of 6 present samples failed (> max_failed_fraction=0.5)" in msg
    assert "all-zero embedding (carries no information)" in msg
    assert not out.exists()
    rejected = read_cache(rejected_path(out))
    assert set(rejected.status) == {"failed"}
    assert set(rejected.reason) == {"all-zero embedding (carries no information)"}
    assert [p.name for p in out.parent.iterdir()] == ["tfidf-svd.rejected.parquet"]


def test_zero_row_manifest_is_a_clear_error(tmp_path: Path) -> None:
    manifest = _notes_manifest(tmp_path / "m.parquet", [])
    out = tmp_path / "c" / "x.parquet"
    with pytest.raises(ManifestError) as exc:
        extract(manifest, "note", CharCountExpert(), out, progress=False)
    assert str(exc.value) == f"{manifest}: no samples to extract (the manifest has no rows)"
    assert not out.parent.exists()


# -- resume ---------------------------------------------------------------------------------


def _shards(out: Path) -> Path:
    return out.parent / f".{out.name}.shards"


def _kill_after(manifest: Path, out: Path, batches: int, dtype: str = "float32") -> list[Path]:
    """Run extract in a forked child that SIGKILLs itself after ``batches`` batches."""

    def run() -> None:
        extract(manifest, "note", CharCountExpert(batch_size=4, kill_after_batches=batches), out,
                shard_size=8, dtype=dtype, progress=False)  # fmt: skip

    rc, _ = timed_run(run, out.parent / "kill.log", CHILD_ENV)
    assert rc == -signal.SIGKILL
    assert not out.exists()
    shards = sorted(_shards(out).glob("shard-*.parquet"))
    assert shards
    return shards


def _clean(manifest: Path, out: Path, dtype: str = "float32", **kw):
    return extract(manifest, "note", CharCountExpert(batch_size=4), out, shard_size=8,
                   dtype=dtype, progress=False, **kw)  # fmt: skip


def _no_leftovers(out: Path) -> None:
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def resume_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    manifest = tiny_text_manifest(tmp_path / "manifest.parquet")
    out = tmp_path / "c" / "out.parquet"
    out.parent.mkdir()
    return {"manifest": manifest, "out": out, "ref": tmp_path / "ref"}


@pytest.mark.parametrize(("first", "second"), [("float32", "float16"), ("float16", "float32")])
def test_rerun_with_another_dtype_after_a_kill_discards_the_shards(
    resume_case: dict, first: str, second: str, caplog
) -> None:
    manifest, out = resume_case["manifest"], resume_case["out"]
    _kill_after(manifest, out, 5, dtype=first)
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        summary = _clean(manifest, out, dtype=second)
    assert summary.shards_resumed == 0
    assert "discarding" in caplog.text and "dtype" in caplog.text
    ref = _clean(manifest, resume_case["ref"] / "out.parquet", dtype=second)
    assert out.read_bytes() == ref.path.read_bytes()
    _no_leftovers(out)


def _swap(shards: list[Path]) -> None:
    a, b = shards[0].read_bytes(), shards[1].read_bytes()
    shards[0].write_bytes(b)
    shards[1].write_bytes(a)


def _as_float16(shards: list[Path]) -> None:  # the same rows, stored as float16
    table = pq.read_table(shards[1])
    emb = table.column("embedding").cast(pa.list_(pa.float16(), 26))
    pq.write_table(table.set_column(1, "embedding", emb), shards[1])


DAMAGE = {  # how shard 1 is damaged, the warning's reason, shards resumed
    "truncated": (lambda s: s[1].write_bytes(s[1].read_bytes()[:200]), "not a readable Parquet", 2),
    "empty": (lambda s: s[1].write_bytes(b""), "not a readable Parquet file", 2),
    "swapped": (_swap, "its sample ids are not this shard's", 1),  # shards 0 and 1 both wrong
    "foreign-schema": (_as_float16, "differs from the expected", 2),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shard_is_discarded_and_extracted_again(
    resume_case: dict, damage: str, caplog
) -> None:
    manifest, out = resume_case["manifest"], resume_case["out"]
    shards = _kill_after(manifest, out, 7)  # 28 samples -> shards 0..2 whole
    assert len(shards) == 3
    damage_fn, why, resumed = DAMAGE[damage]
    damage_fn(shards)
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        summary = _clean(manifest, out)
    assert summary.shards_resumed == resumed
    assert f"{out}: discarding shard 1 of an earlier run (" in caplog.text and why in caplog.text
    ref = _clean(manifest, resume_case["ref"] / "out.parquet")
    assert out.read_bytes() == ref.path.read_bytes()
    _no_leftovers(out)


def test_force_starts_clean(resume_case: dict) -> None:
    manifest, out = resume_case["manifest"], resume_case["out"]
    shards = _kill_after(manifest, out, 5)
    summary = _clean(manifest, out, force=True)
    assert summary.shards_resumed == 0 and len(shards) == 2
    ref = _clean(manifest, resume_case["ref"] / "out.parquet")
    assert out.read_bytes() == ref.path.read_bytes()
    _no_leftovers(out)


def _hold_lock(out: Path) -> int:
    """A forked child that takes the cache's lock and sleeps; returns its pid once locked."""

    def hold() -> None:
        lock = CacheLock(out).acquire()  # kept referenced: a dropped lock is released
        time.sleep(120)
        lock.release()

    pid = fork_main(hold, out.parent.parent / "hold.log", CHILD_ENV)
    deadline = time.monotonic() + 30
    while not (lock_path(out).exists() and lock_path(out).read_text().startswith("pid")):
        assert time.monotonic() < deadline, "the child never took the lock"
        time.sleep(0.005)
    return pid


def test_second_writer_stops_at_once_and_a_dead_holder_never_blocks(resume_case: dict) -> None:
    manifest, out = resume_case["manifest"], resume_case["out"]
    pid = _hold_lock(out)
    try:
        expert = CharCountExpert(batch_size=4)
        t0 = time.monotonic()
        with pytest.raises(CacheLockedError) as exc:
            extract(manifest, "note", expert, out, shard_size=8, progress=False)
        assert time.monotonic() - t0 < 5  # stops at once, does not wait
        want = f"another extraction is writing this cache (lock {lock_path(out)} held by pid {pid}"
        assert want in _one_line(exc, out)
        assert expert.batches == 0 and not _shards(out).exists() and not out.exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        assert wait_child(pid) == -signal.SIGKILL
    assert lock_path(out).exists()  # the killed holder's file is left behind ...
    summary = _clean(manifest, out)  # ... and never blocks
    ids = read_manifest(manifest)[0]["sample_id"].tolist()
    assert summary.n == 40 and read_cache(out).sample_ids.tolist() == ids
    _no_leftovers(out)


class Interrupted(CharCountExpert):
    def embed(self, batch: list[str]) -> np.ndarray:
        raise KeyboardInterrupt  # not a sample's fault: the run stops


def test_lock_is_released_when_the_extraction_fails(resume_case: dict) -> None:
    manifest, out = resume_case["manifest"], resume_case["out"]
    with pytest.raises(KeyboardInterrupt):
        extract(manifest, "note", Interrupted(), out, shard_size=8, progress=False)
    assert not lock_path(out).exists()
    assert _clean(manifest, out).ok > 0  # the same process can extract into it again


class Slow(CharCountExpert):
    """CharCountExpert that takes its time, so that a second writer arrives mid-run."""

    def embed(self, batch: list[str]) -> np.ndarray:
        time.sleep(0.05)
        return super().embed(batch)


def test_two_concurrent_extractions_one_finishes_the_other_stops(resume_case: dict) -> None:
    manifest, out = resume_case["manifest"], resume_case["out"]

    def first() -> None:
        extract(manifest, "note", Slow(batch_size=4), out, shard_size=8, progress=False)

    pid = fork_main(first, out.parent / "first.log", CHILD_ENV)
    deadline = time.monotonic() + 60
    while not _shards(out).exists():
        assert time.monotonic() < deadline, "the first extraction never started"
        time.sleep(0.005)
    with pytest.raises(CacheLockedError) as exc:
        _clean(manifest, out)
    assert f"(lock {lock_path(out)} held by pid {pid} on " in _one_line(exc, out)
    assert wait_child(pid) == 0, (out.parent / "first.log").read_text()[-2000:]
    ref = _clean(manifest, resume_case["ref"] / "out.parquet")
    assert out.read_bytes() == ref.path.read_bytes()  # the first run's cache, untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["first.log", "out.parquet"]
