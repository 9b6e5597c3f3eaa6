"""Out-of-core fusion data: memory-mapped caches, standardised per gather (fusion.feature_store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.cache import CacheMeta, CacheRecords, write_cache
from fusion import feature_store
from fusion.data import load_fusion_data
from fusion.feature_store import MEMMAP_DIR, FeatureRows, fit_stats, memmap_path
from fusion.medmix import row_stats
from fusion.protocols import ProtocolMasks, apply_masks
from fusion.seed_inputs import SeedInputs

N = 300
EXPERTS = {"a": {"a1": 12, "a2": 7}, "b": {"b1": 9}}


def _old_fit_stats(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The dense statistics fusion.data computed before the memmaps (the reference)."""
    sub = x[rows].astype(np.float64)
    mean, std = sub.mean(axis=0), sub.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def _old_dense(x: np.ndarray, ok: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu, sd = _old_fit_stats(x, ok & train)
    return np.where(ok[:, None], (x - mu) / sd, 0.0).astype(np.float32)


def _write(root: Path, dtype: str = "float32", seed: int = 0, order=None) -> dict:
    """A manifest and three caches; returns paths plus the raw embeddings and ok masks."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in range(N)]
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    df = pd.DataFrame(
        {
            "sample_id": ids,
            "patient_id": ids,
            "split": split,
            "a": "x",
            "b": "x",
            "label_y": rng.integers(0, 2, N),
        }
    )
    manifest = write_manifest(
        df,
        root / "manifest.parquet",
        ManifestMeta("fs", "binary", {"a": "text", "b": "text"}, ["y"], adapter="test"),
    )
    caches, raw, exact, oks = {}, {}, {}, {}
    for m, experts in EXPERTS.items():
        caches[m] = {}
        for e, dim in experts.items():
            emb = (rng.normal(size=(N, dim)) * 3 + rng.normal(size=dim) * 5).astype(np.float32)
            ok = rng.random(N) > 0.15
            status = np.where(ok, "ok", "missing")
            perm = np.arange(N) if order is None else order
            path = root / "emb" / m / f"{e}.parquet"
            write_cache(
                path,
                CacheRecords(
                    [ids[i] for i in perm],
                    emb[perm],
                    status[perm].tolist(),
                    [None if s == "ok" else s for s in status[perm]],
                ),
                CacheMeta(e, f"offline:{e}", dim, "none", "x", dtype=dtype, modality=m),
            )
            caches[m][e] = path
            stored = emb.astype(np.float16).astype(np.float32) if dtype == "float16" else emb
            raw[(m, e)] = np.where(ok[:, None], stored, 0.0).astype(np.float32)
            exact[(m, e)] = np.where(ok[:, None], emb, 0.0).astype(np.float32)
            oks[(m, e)] = ok
    return {
        "manifest": manifest,
        "caches": caches,
        "raw": raw,
        "exact": exact,
        "ok": oks,
        "split": split,
    }


def _masks(data, drop: np.ndarray) -> ProtocolMasks:
    before = data.modality_mask.numpy()
    return ProtocolMasks(
        "test_random", 0, data.dataset, list(data.modalities), data.sample_ids, data.split,
        drop, before, before & ~drop,
    )  # fmt: skip


def test_gather_equals_the_dense_standardised_rows_exactly(tmp_path: Path) -> None:
    # the cache rows in another order than the manifest: rows are found by sample id
    w = _write(tmp_path, order=np.random.default_rng(1).permutation(N))
    data = load_fusion_data(w["manifest"], w["caches"])
    train = w["split"] == "train"
    for k, (m, e) in enumerate(data.flat_experts):
        want = _old_dense(w["raw"][(m, e)], w["ok"][(m, e)], train)
        assert torch.equal(data.dense(k), torch.from_numpy(want))  # bit-identical
        idx = torch.tensor([5, 0, 299, 5, 17])
        assert torch.equal(data.rows(k, idx), torch.from_numpy(want[idx.numpy()]))
        mu, sd = _old_fit_stats(w["raw"][(m, e)], w["ok"][(m, e)] & train)
        assert np.array_equal(data.standardization.mean[m][e], mu)
        assert np.array_equal(data.standardization.std[m][e], sd)


def test_rows_are_memmap_backed_never_a_float32_copy(tmp_path: Path) -> None:
    w = _write(tmp_path, dtype="float16")
    data = load_fusion_data(w["manifest"], w["caches"])
    for x, (m, e) in zip(data.x, data.flat_experts, strict=True):
        assert isinstance(x, FeatureRows) and x.is_mapped
        assert x.raw.dtype == torch.float16  # the cache's own dtype, not float32
        arr = x.mapped.array
        assert arr.base is not None and not arr.flags.owndata  # a view of the file mapping
        assert x.mapped.path == memmap_path(w["caches"][m][e])
        assert x.mapped.path.parent.name == MEMMAP_DIR


def test_float16_caches_within_float16_rounding(tmp_path: Path) -> None:
    w = _write(tmp_path, dtype="float16")
    data = load_fusion_data(w["manifest"], w["caches"])
    train = w["split"] == "train"
    for k, (m, e) in enumerate(data.flat_experts):
        got = data.dense(k).numpy()
        ok = w["ok"][(m, e)]
        # exactly the float16-rounded raw values, standardised as float32 caches are
        assert np.array_equal(got, _old_dense(w["raw"][(m, e)], ok, train))
        # within float16 rounding of the unrounded embedding's standardisation: each raw
        # value moves by at most 2^-11 of itself, the column's mean and std by at most
        # 2^-11 of the column's largest value
        exact = w["exact"][(m, e)]
        want = _old_dense(exact, ok, train)
        sd = data.standardization.std[m][e]
        bound = 2 * np.abs(exact).max(axis=0) * 2.0**-11 / sd * (1 + np.abs(want))
        assert np.all(np.abs(got - want) <= bound)
        assert not np.array_equal(got, want)  # the rounding is there


def test_memmap_built_once_reused_and_rebuilt_when_the_cache_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _write(tmp_path)
    path = w["caches"]["a"]["a1"]
    decoded = []
    real = feature_store.read_cache
    monkeypatch.setattr(feature_store, "read_cache", lambda p: decoded.append(p) or real(p))
    load_fusion_data(w["manifest"], w["caches"])
    assert len(decoded) == 3  # one build per cache
    first = memmap_path(path)
    stamp = first.stat().st_mtime_ns
    load_fusion_data(w["manifest"], w["caches"])
    assert len(decoded) == 3 and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # rewrite one cache (new contents): its memmap is rebuilt under a new key, the old removed
    w2 = _write(tmp_path, seed=5)
    data = load_fusion_data(w2["manifest"], w2["caches"])
    assert len(decoded) == 6
    assert not first.exists() and memmap_path(path).exists()
    train = w2["split"] == "train"
    want = _old_dense(w2["raw"][("a", "a1")], w2["ok"][("a", "a1")], train)
    assert torch.equal(data.dense(0), torch.from_numpy(want))
    npys = sorted(p.name for p in (path.parent / MEMMAP_DIR).glob("*.npy"))
    assert len(npys) == 2  # a1 and a2, one file each


def test_a_leftover_temp_file_does_not_break_the_build(tmp_path: Path) -> None:
    w = _write(tmp_path)
    path = w["caches"]["b"]["b1"]
    target = memmap_path(path)
    target.parent.mkdir(parents=True)
    # a killed writer's temp file (atomic_path's naming), half written
    leftover = target.parent / f".{target.name}.abc123.npy"
    leftover.write_bytes(b"\x93NUMPY garbage")
    data = load_fusion_data(w["manifest"], w["caches"])
    assert target.exists() and leftover.exists()  # never read, never taken for the memmap
    want = _old_dense(w["raw"][("b", "b1")], w["ok"][("b", "b1")], w["split"] == "train")
    assert torch.equal(data.dense(2), torch.from_numpy(want))


def test_a_truncated_memmap_is_not_left_by_a_failed_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _write(tmp_path)
    target = memmap_path(w["caches"]["a"]["a1"])

    def broken(fh, arr, allow_pickle=False):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(feature_store.np, "save", broken)
    data = load_fusion_data(w["manifest"], w["caches"])  # rows kept in memory, with a warning
    assert not target.exists() and not list(target.parent.glob(".*"))
    assert not data.x[0].is_mapped
    monkeypatch.undo()
    assert load_fusion_data(w["manifest"], w["caches"]).x[0].is_mapped


def test_protocol_masks_act_through_delta_and_share_the_rows(tmp_path: Path) -> None:
    w = _write(tmp_path)
    data = load_fusion_data(w["manifest"], w["caches"])
    drop = np.zeros((N, 2), bool)
    drop[::3, 0] = True
    masked = apply_masks(data, _masks(data, drop))
    assert all(a is b for a, b in zip(masked.x, data.x, strict=True))  # nothing copied
    assert (masked.delta[torch.from_numpy(drop[:, 0]), 0] == 0).all()
    for k in (0, 1):  # modality a's experts read as zero where dropped
        got = masked.dense(k)
        assert (got[torch.from_numpy(drop[:, 0])] == 0).all()
        keep = torch.from_numpy(~drop[:, 0])
        assert torch.equal(got[keep], data.dense(k)[keep])
    assert torch.equal(masked.dense(2), data.dense(2))


def test_seed_inputs_gather_and_row_stats_match_the_dense_rows(tmp_path: Path) -> None:
    w = _write(tmp_path)
    data = load_fusion_data(w["manifest"], w["caches"])
    drop = np.zeros((N, 2), bool)
    drop[1::4, 1] = True
    masked = apply_masks(data, _masks(data, drop))
    members = [[0], [1], [2]]  # one expert per group: their dims differ
    inputs = SeedInputs([data, masked], members)
    idx = torch.tensor([[3, 1, 5, 250], [5, 9, 2, 0]])
    groups, stats = inputs.groups(idx), inputs.stats(idx)
    for s, d in enumerate([data, masked]):
        for g, ks in enumerate(members):
            for j, k in enumerate(ks):
                dense = d.dense(k)
                want = dense.index_select(0, idx[s])
                assert torch.equal(groups[g][s, j], want)
                assert torch.equal(stats[g][s, j], row_stats(dense).index_select(0, idx[s]))


def test_fit_stats_in_chunks_equals_numpy_on_the_whole_subset() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(1000, 33)) * rng.uniform(0.1, 50, 33) + 7).astype(np.float32)
    rows = np.flatnonzero(rng.random(1000) > 0.3)
    for chunk in (1, 7, 64, 5000):
        mu, sd = fit_stats(x, rows, chunk=chunk)
        want_mu, want_sd = _old_fit_stats(x, rows)
        assert np.array_equal(mu, want_mu) and np.array_equal(sd, want_sd)
    mu, sd = fit_stats(x, np.zeros(0, np.int64))
    assert (mu == 0).all() and (sd == 1).all()


def test_mapped_pages_are_handed_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = _write(tmp_path)
    data = load_fusion_data(w["manifest"], w["caches"])
    released = []
    x = data.x[0]
    monkeypatch.setattr(x.mapped, "release", lambda: released.append(1))
    assert x.release_every is None  # a small file stays mapped
    nbytes = x.raw.numel() * x.raw.element_size()
    monkeypatch.setattr(feature_store, "MAPPED_BUDGET", nbytes - 1)
    monkeypatch.setattr(feature_store, "FAULT_BYTES", (nbytes - 1) // 3)
    assert x.release_every == 3
    idx = torch.tensor([9, 4, 250, 7, 7, 0, 31])
    got = data.rows(0, idx)
    assert len(released) == 2  # after rows 3 and 6; row 7 counts towards the next
    data.rows(0, idx[:2])
    assert len(released) == 3
    monkeypatch.undo()
    assert torch.equal(got, data.dense(0).index_select(0, idx))  # the same rows as one gather
