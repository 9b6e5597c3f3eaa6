"""The extraction pipeline (extractors.batching): DataLoader workers give the same cache as the
in-process path, batches never cross shards, failures stay per sample, collate/forward and
per-sample info, resume after an exception."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from extractors.base import SampleError
from extractors.batching import (
    LoadedBatch,
    embed_safe,
    load_one,
    plan_batches,
    reason_of,
    resolve_workers,
    safe_reason,
    summarise_info,
)
from extractors.cache import read_cache
from extractors.extract import extract
from extractors.loading import UnsafeCheckpoint
from tests.helpers import CharCountExpert, tiny_text_manifest


class CollatingExpert(CharCountExpert):
    """Letter counts through collate (in the worker) + forward, with per-sample info; fails
    the sample containing 'x' at load and any batch containing '7' at forward."""

    registry_name = "collating"

    def __init__(self, crash_after: int | None = None, **kw):
        super().__init__(**kw)
        self.crash_after = crash_after
        self.forwards = 0

    def load(self, value: str, root: Path) -> str:
        if "x" in value:
            raise SampleError("has an x")
        return super().load(value, root)

    def collate(self, items: list[str]):
        import torch

        return torch.from_numpy(CharCountExpert.embed(self, items))

    def forward(self, batch) -> np.ndarray:
        self.forwards += 1
        if self.crash_after is not None and self.forwards > self.crash_after:
            raise KeyboardInterrupt  # not a sample problem: the run stops
        return batch.numpy() * 2.0

    def embed(self, batch: list[str]) -> np.ndarray:
        if any("7" in t for t in batch):
            raise ValueError("seven")
        return CharCountExpert.embed(self, batch) * 2.0

    def item_info(self, item: str) -> dict:
        return {"n_chars": len(item)}


def _w(expert, n: int):
    expert.num_workers = n  # a run setting, not a parameter: it never changes the cache
    return expert


def test_plan_batches_never_cross_shards() -> None:
    plan = plan_batches([(0, 0, 5), (2, 10, 13)], 2)
    assert plan == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (2, 10, 12), (2, 12, 13)]


def test_workers_and_in_process_give_identical_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=30)
    a = extract(
        manifest,
        "note",
        _w(CharCountExpert(batch_size=4), 0),
        tmp_path / "a.parquet",
        shard_size=8,
        progress=False,
    )
    b = extract(
        manifest,
        "note",
        _w(CharCountExpert(batch_size=4), 2),
        tmp_path / "b.parquet",
        shard_size=8,
        progress=False,
    )
    assert a.timings["workers"] == 0 and b.timings["workers"] == 2
    assert a.path.read_bytes() == b.path.read_bytes()


def test_collate_forward_info_and_failure_isolation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=30)
    expert = _w(CollatingExpert(batch_size=4), 1)
    summary = extract(
        manifest, "note", expert, tmp_path / "c.parquet", shard_size=8, progress=False
    )
    data = read_cache(summary.path)
    ref = read_cache(
        extract(
            manifest,
            "note",
            CharCountExpert(batch_size=4),
            tmp_path / "r.parquet",
            shard_size=8,
            progress=False,
        ).path
    )
    np.testing.assert_allclose(data.embeddings[data.ok], 2 * ref.embeddings[data.ok])
    assert (data.status == ref.status).all()  # no 'x' in these notes; forward path never fails
    info = [json.loads(x) for x in data.extra[data.ok]]
    assert [d["n_chars"] for d in info] == [len(v) for v in np.asarray(_notes(manifest))[data.ok]]
    assert data.meta.extra["item_info"]["n_chars"]["n"] == int(data.ok.sum())


def _notes(manifest: Path) -> list:
    import pandas as pd

    return pd.read_parquet(manifest)["note"].tolist()


def test_a_bad_sample_fails_alone(tmp_path: Path) -> None:
    import pandas as pd

    from cohorts.manifest import ManifestMeta, write_manifest

    notes = ["alpha", "beta x", "gamma 7", "delta", None, "epsilon"]
    df = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(6)],
            "patient_id": [f"p{i}" for i in range(6)],
            "split": ["train"] * 6,
            "note": notes,
            "label_y": [0, 1] * 3,
        }
    )
    meta = ManifestMeta(
        dataset="t", task_type="binary", modalities={"note": "text"}, labels=["y"], adapter="test"
    )
    manifest = write_manifest(df, tmp_path / "m.parquet", meta)

    class BadForward(CollatingExpert):
        def forward(self, batch):
            raise ValueError("batch failed")  # the driver falls back to embed(), sample by sample

    summary = extract(
        manifest,
        "note",
        _w(BadForward(batch_size=3), 1),
        tmp_path / "c.parquet",
        shard_size=6,
        progress=False,
        max_failed_fraction=0.9,
    )
    data = read_cache(summary.path)
    assert list(data.status) == ["ok", "failed", "failed", "ok", "missing", "ok"]
    assert data.reason[1] == "has an x"  # our own SampleError message, kept
    # the model's message ("seven") is withheld: only the type, the stage and a size
    assert data.reason[2] == "ValueError in embed (input of 7 characters; message withheld)"


def test_reasons_keep_our_messages_and_withhold_others() -> None:
    """SampleError messages are ours (written without sample content) and stay; any other
    exception's message could quote the note, so only its type, stage and a size remain."""
    note = "Mrs Example, 71, chest pain"
    assert safe_reason(SampleError("empty text"), "load") == "empty text"
    assert safe_reason(SampleError("x" * 400), "load") == "x" * 300
    quoted = ValueError(f"cannot tokenise {note!r}")
    assert reason_of(quoted, "load", note) == (
        f"ValueError in load (input of {len(note)} characters; message withheld)"
    )
    assert reason_of(KeyError(note), "embed", np.zeros((3, 4))) == (
        "KeyError in embed (input of shape (3, 4); message withheld)"
    )
    assert reason_of(RuntimeError(note)) == "RuntimeError in the expert (message withheld)"
    assert safe_reason(quoted, "the RAG chain", "text of 27 characters") == (
        "ValueError in the RAG chain (text of 27 characters; message withheld)"
    )


class RefusedModelExpert(CharCountExpert):
    """Its model is refused by the loading policy: in load, or in embed."""

    def __init__(self, where: str, **kw):
        super().__init__(**kw)
        self.where = where

    def _refuse(self) -> None:
        raise UnsafeCheckpoint(f"expert {self.name!r}: refusing checkpoint /m/pytorch_model.bin")

    def load(self, value: str, root: Path) -> str:
        if self.where == "load":
            self._refuse()
        return super().load(value, root)

    def embed(self, batch: list[str]) -> np.ndarray:
        if self.where == "embed":
            self._refuse()
        return super().embed(batch)


@pytest.mark.parametrize("where", ["load", "embed"])
def test_a_refused_model_stops_the_run_not_the_sample(tmp_path: Path, where: str) -> None:
    """A LoadingError is the model's, not the sample's: no cache of 'failed' rows, the
    policy's message reaches the caller."""
    expert = RefusedModelExpert(where, batch_size=4)
    with pytest.raises(UnsafeCheckpoint, match="pytorch_model.bin"):
        if where == "load":
            load_one(expert, "a note", tmp_path)
        else:
            embed_safe(expert, ["a note", "another note"])  # not retried one by one
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=12)
    out = tmp_path / "c.parquet"
    with pytest.raises(UnsafeCheckpoint, match="char-count"):
        # load: raised in a DataLoader worker and re-raised here; embed: in this process
        workers = 1 if where == "load" else 0
        extract(manifest, "note", _w(expert, workers), out, shard_size=4, progress=False)
    assert not out.exists()


def test_resume_after_an_interrupted_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    manifest = tiny_text_manifest(tmp_path / "m.parquet", n=40)
    out = tmp_path / "c.parquet"
    with pytest.raises(KeyboardInterrupt):
        extract(
            manifest,
            "note",
            _w(CollatingExpert(batch_size=4, crash_after=5), 1),
            out,
            shard_size=8,
            progress=False,
        )
    shards = sorted((tmp_path / ".c.parquet.shards").glob("shard-*.parquet"))
    assert len(shards) == 2  # 5 batches of 4 = 20 samples -> 2 whole shards of 8
    resumed = extract(
        manifest, "note", _w(CollatingExpert(batch_size=4), 1), out, shard_size=8, progress=False
    )
    clean = extract(
        manifest,
        "note",
        _w(CollatingExpert(batch_size=4), 0),
        tmp_path / "d.parquet",
        shard_size=8,
        progress=False,
    )
    assert resumed.shards_resumed == 2
    assert out.read_bytes() == clean.path.read_bytes()


def test_resolve_workers(monkeypatch) -> None:
    e = CharCountExpert()
    monkeypatch.setenv("MEDMIX_EXTRACT_WORKERS", "3")
    assert resolve_workers(e, 10) == 3
    assert resolve_workers(e, 1) == 0  # one batch: no worker processes
    assert resolve_workers(_w(CharCountExpert(), 1), 10) == 1
    monkeypatch.delenv("MEDMIX_EXTRACT_WORKERS")
    assert resolve_workers(e, 100) == max(0, min(8, len(os.sched_getaffinity(0)) - 1))


def test_loaded_batch_pin_memory_and_info_summary() -> None:
    import torch

    lb = LoadedBatch(0, 0, ["ok"], [None], None, [0], ["a"], None)
    assert lb.pin_memory() is lb  # nothing collated: nothing to pin
    if torch.cuda.is_available():
        lb.collated = torch.zeros(2)
        assert lb.pin_memory().collated.is_pinned()
    s = summarise_info(['{"n_chunks": 1}', '{"n_chunks": 3}', None])
    assert s["n_chunks"] == {"n": 2, "mean": 2.0, "max": 3.0, "n_gt_1": 1}
