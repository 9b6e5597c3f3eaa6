"""Time-series experts (catch22, ts-stats): cleaning rules, dims, robustness, one extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.base import SampleError
from extractors.cache import read_cache
from extractors.experts.timeseries import Catch22Expert, TsStatsExpert
from extractors.extract import extract
from extractors.readers.timeseries import read_series
from extractors.registry import create_expert


def _frame(seed: int = 0, n: int = 48) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hour = np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "hour": hour,
            "hr": 80 + 10 * np.sin(hour / 4) + rng.normal(0, 2, n),
            "sbp": np.where(rng.random(n) < 0.6, np.nan, 120 + rng.normal(0, 8, n)),
            "lactate": np.where(hour == 5, 2.1, np.nan),  # one observation
        }
    )


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def test_dims_variables_and_determinism(tmp_path: Path) -> None:
    _write(_frame(0), tmp_path / "a.csv")
    c = create_expert("catch22", variables=["sbp", "hr", "lactate", "glucose"])
    assert not c.requires_fit and c.variables == ["glucose", "hr", "lactate", "sbp"]
    assert c.dim == 4 * 23 and len(c.feature_names) == c.dim
    s = TsStatsExpert(variables=["hr", "sbp"])
    assert s.dim == 2 * 7
    out = c.embed([c.load("a.csv", tmp_path)])
    assert out.shape == (1, 92) and np.isfinite(out).all()
    np.testing.assert_array_equal(
        out,
        Catch22Expert(variables=["hr", "sbp", "lactate", "glucose"]).embed(
            [c.load("a.csv", tmp_path)]
        ),
    )
    f = dict(zip(c.feature_names, out[0], strict=True))
    assert f["glucose:observed_fraction"] == 0 and all(
        v == 0 for k, v in f.items() if k.startswith("glucose:")
    )
    assert f["lactate:observed_fraction"] == pytest.approx(1 / 48)
    assert all(
        v == 0 for k, v in f.items() if k.startswith("lactate:") and "observed" not in k
    )  # < 3 obs
    assert f["hr:observed_fraction"] == 1.0
    assert any(v != 0 for k, v in f.items() if k.startswith("hr:") and "observed" not in k)


def test_fit_learns_sorted_variable_union(tmp_path: Path) -> None:
    a = _frame(0)
    b = _frame(1).drop(columns=["lactate"]).assign(temp=37.0)
    _write(a, tmp_path / "a.csv")
    _write(b, tmp_path / "b.csv")
    for expert in (create_expert("catch22"), create_expert("ts-stats")):
        assert expert.requires_fit
        with pytest.raises(RuntimeError, match="not known yet"):
            _ = expert.dim
        expert.fit([expert.load(f, tmp_path) for f in ("a.csv", "b.csv")])
        assert expert.variables == ["hr", "lactate", "sbp", "temp"]
        assert expert.preprocess_config()["variables"] == expert.variables
        assert expert.embed([expert.load("b.csv", tmp_path)]).shape == (1, expert.dim)
    # without fit: the first file embedded fixes the variables
    lazy = Catch22Expert()
    lazy.embed([lazy.load("a.csv", tmp_path)])
    assert lazy.variables == ["hr", "lactate", "sbp"]


def test_cleaning_sort_duplicates_inf_and_gaps(tmp_path: Path) -> None:
    df = _frame(2)
    _write(df, tmp_path / "clean.csv")
    shuffled = df.sample(frac=1.0, random_state=0)
    _write(shuffled, tmp_path / "shuffled.csv")
    dup = pd.concat([df, df.iloc[[10, 20]]]).sample(
        frac=1.0, random_state=1
    )  # same values repeated
    _write(dup, tmp_path / "dup.csv")
    c, s = (
        Catch22Expert(variables=["hr", "sbp", "lactate"]),
        TsStatsExpert(variables=["hr", "sbp", "lactate"]),
    )
    for e in (c, s):
        ref = e.embed([e.load("clean.csv", tmp_path)])
        np.testing.assert_allclose(e.embed([e.load("shuffled.csv", tmp_path)]), ref, rtol=1e-6)
        np.testing.assert_allclose(e.embed([e.load("dup.csv", tmp_path)]), ref, rtol=1e-6)
    # repeated timestamps with different values are merged by their mean
    rep = pd.DataFrame({"hour": [0, 1, 1, 2], "x": [1.0, 2.0, 4.0, 5.0]})
    series = read_series(_write(rep, tmp_path / "rep.csv"))
    np.testing.assert_array_equal(series.times, [0, 1, 2])
    np.testing.assert_array_equal(series.values["x"], [1.0, 3.0, 5.0])
    # inf counts as missing; output stays finite
    bad = df.copy()
    bad.loc[3, "hr"] = np.inf
    bad.loc[4, "sbp"] = -np.inf
    out = c.embed([c.load(_write(bad, tmp_path / "inf.csv").name, tmp_path)])
    assert np.isfinite(out).all()
    assert (
        read_series(tmp_path / "inf.csv").values["hr"][3]
        != read_series(tmp_path / "inf.csv").values["hr"][3]
    )
    # a linear trend with gaps is interpolated back exactly: same catch22 as the full series
    full = pd.DataFrame({"hour": np.arange(30.0), "x": 3.0 * np.arange(30.0) + 1})
    gappy = full.copy()
    gappy.loc[[4, 5, 6, 17, 18], "x"] = np.nan
    cx = Catch22Expert(variables=["x"])
    a = cx.embed([cx.load(_write(full, tmp_path / "full.csv").name, tmp_path)])[0]
    b = cx.embed([cx.load(_write(gappy, tmp_path / "gappy.csv").name, tmp_path)])[0]
    np.testing.assert_allclose(a[:-1], b[:-1], rtol=1e-6, atol=1e-9)
    assert b[-1] == pytest.approx(25 / 30)


def test_ts_stats_values(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"hour": [0.0, 1.0, 2.0, 4.0], "x": [1.0, 3.0, np.nan, 9.0], "y": [np.nan] * 4}
    )
    s = TsStatsExpert(variables=["x", "y"])
    out = s.embed([s.load(_write(df, tmp_path / "s.csv").name, tmp_path)])[0]
    x = dict(zip(s.per_var_names, out[:7], strict=True))
    assert x["mean"] == pytest.approx(13 / 3) and x["min"] == 1 and x["max"] == 9 and x["last"] == 9
    assert x["slope"] == pytest.approx(2.0)  # 1, 3, 9 at hours 0, 1, 4: least squares slope 2
    assert x["observed_fraction"] == pytest.approx(3 / 4)
    np.testing.assert_array_equal(out[7:], 0.0)


def test_formats_long_and_parquet(tmp_path: Path) -> None:
    df = _frame(3)
    _write(df, tmp_path / "wide.csv")
    df.to_parquet(tmp_path / "wide.parquet")
    long = df.melt(id_vars="hour", var_name="variable", value_name="value").dropna()
    long.to_csv(tmp_path / "long.csv.gz", index=False)
    s = TsStatsExpert(variables=["hr", "sbp", "lactate"])
    ref = s.embed([s.load("wide.csv", tmp_path)])
    for f in ("wide.parquet", "long.csv.gz"):
        np.testing.assert_allclose(s.embed([s.load(f, tmp_path)]), ref, rtol=1e-6)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hour,hr,sbp\n0,,\n1,nan,\n2,inf,-inf\n", "all values missing"),
        (b"time,hr\n0,1\n", "no time column 'hour'"),
        (b"hour,hr\n", "no rows with a time"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "bad.csv").write_bytes(content)
    for name in ("catch22", "ts-stats"):
        with pytest.raises(SampleError, match=reason):
            create_expert(name).load("bad.csv", tmp_path)


def test_extract_end_to_end_catch22_fits_on_train(tmp_path: Path) -> None:
    root = tmp_path / "ehr"
    root.mkdir()
    _write(_frame(0), root / "p0.csv")
    _write(_frame(1).assign(temp=37.0), root / "p1.csv")
    _write(
        _frame(2).assign(glucose=100.0), root / "p2.csv"
    )  # test split: glucose never seen in train
    (root / "p3.csv").write_bytes(b"hour,hr\n0,\n1,\n")
    df = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d", "e"],
            "patient_id": ["1", "2", "3", "4", "5"],
            "split": ["train", "train", "test", "test", "val"],
            "ehr": ["p0.csv", "p1.csv", "p2.csv", "p3.csv", None],
            "label_m": [0, 1, 0, 1, 0],
        }
    )
    meta = ManifestMeta("tiny", "binary", {"ehr": "timeseries"}, ["m"], "test", root=str(root))
    manifest = write_manifest(df, tmp_path / "manifest.parquet", meta)
    expert = create_expert("catch22")
    summary = extract(manifest, "ehr", expert, tmp_path / "c22.parquet", progress=False)
    assert (summary.ok, summary.missing, summary.failed) == (3, 1, 1)
    cache = read_cache(tmp_path / "c22.parquet")
    assert expert.variables == ["hr", "lactate", "sbp", "temp"]  # train files only
    assert cache.meta.dim == 4 * 23
    assert list(cache.status) == ["ok", "ok", "ok", "failed", "missing"]
    assert cache.reason[3] == "all values missing"
    assert np.isfinite(cache.embeddings).all()
