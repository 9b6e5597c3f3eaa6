"""Time-series FM experts (Chronos, MOIRAI) on tiny random-init models: shape, determinism,
padding invariance, windows instead of truncation, and loading saved weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.base import SampleError
from extractors.registry import create_expert
from tests.fm_helpers import TINY_MOIRAI, TINY_T5, assert_padding_invariant, need


@pytest.fixture(scope="module")
def ts_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ts")
    rng = np.random.default_rng(0)
    for name, n in (("a", 48), ("b", 20), ("long", 600)):
        df = pd.DataFrame(
            {
                "hour": np.arange(n),
                "heart_rate": 80 + rng.normal(0, 5, n),
                "sbp": 120 + rng.normal(0, 10, n),
                "lactate": np.where(rng.random(n) < 0.2, rng.random(n) * 3, np.nan),
            }
        )
        df.to_csv(root / f"{name}.csv", index=False)
    pd.DataFrame({"hour": [0, 1], "heart_rate": [np.nan, np.nan]}).to_csv(
        root / "empty.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def chronos():
    need("chronos")
    return create_expert("chronos", random_init=True, config=TINY_T5, batch_size=4, window=256)


def test_chronos_shape_determinism_padding(chronos, ts_root: Path) -> None:
    a, b, long = (chronos.load(f"{n}.csv", ts_root) for n in ("a", "b", "long"))
    assert a.n_vars == 3 and len(a.series) == 3
    vec = assert_padding_invariant(chronos, a, [b, long])  # left-padded with NaN in the batch
    assert vec.shape == (32,) and np.isfinite(vec).all()
    again = create_expert("chronos", random_init=True, config=TINY_T5, window=256)
    np.testing.assert_allclose(again.embed([a])[0], vec, atol=1e-6)


def test_chronos_long_series_are_windowed_not_truncated(chronos, ts_root: Path) -> None:
    long = chronos.load("long.csv", ts_root)
    assert chronos.item_info(long) == {"n_variables": 3, "n_windows": 9}  # 3 windows of 256 x 3
    assert sum(len(s) for s in long.series) == 3 * 600
    with pytest.raises(SampleError, match="all values missing"):
        chronos.load("empty.csv", ts_root)
    only_hr = create_expert("chronos", random_init=True, config=TINY_T5, variables=["heart_rate"])
    assert only_hr.load("a.csv", ts_root).n_vars == 1
    absent = create_expert("chronos", random_init=True, config=TINY_T5, variables=["glucose"])
    with pytest.raises(SampleError, match="no variable"):
        absent.load("a.csv", ts_root)


def test_chronos_loads_saved_weights_through_the_policy(
    chronos, ts_root: Path, tmp_path: Path
) -> None:
    model = chronos.get_model()
    model.config.chronos_config = dict(chronos.params["chronos_config"])
    model.save_pretrained(tmp_path / "chronos")
    local = create_expert("chronos", local_dir=str(tmp_path / "chronos"), window=256)
    a = chronos.load("a.csv", ts_root)
    np.testing.assert_allclose(local.embed([a])[0], chronos.embed([a])[0], atol=1e-5)
    assert local.dim == 32 and local.weights_status()[0] == "ok"


@pytest.fixture(scope="module")
def moirai():
    need("uni2ts", "jaxtyping", "einops", "hydra")
    return create_expert("moirai", random_init=True, config=TINY_MOIRAI, patch_size=8, batch_size=2)


def test_moirai_shape_determinism_padding(moirai, ts_root: Path) -> None:
    a, b, long = (moirai.load(f"{n}.csv", ts_root) for n in ("a", "b", "long"))
    assert a.n_windows == 1 and a.n_vars == 3
    vec = assert_padding_invariant(moirai, a, [b, long])  # packed, padded with sample_id 0
    assert vec.shape == (64,) and np.isfinite(vec).all()
    again = create_expert("moirai", random_init=True, config=TINY_MOIRAI, patch_size=8)
    np.testing.assert_allclose(again.embed([a])[0], vec, atol=1e-6)
    small = create_expert(
        "moirai", random_init=True, config=TINY_MOIRAI, patch_size=8, max_tokens=30
    )
    windows = small.load("long.csv", ts_root)  # 30 tokens / 3 variables = 10 patches of 8 steps
    assert windows.n_windows == 8 and small.item_info(windows)["n_windows"] == 8
    assert np.isfinite(small.embed([windows])).all()


def test_moirai_loads_saved_weights(moirai, ts_root: Path, tmp_path: Path) -> None:
    moirai.get_model().save_pretrained(tmp_path / "moirai")  # PyTorchModelHubMixin: safetensors
    local = create_expert("moirai", local_dir=str(tmp_path / "moirai"), patch_size=8)
    a = moirai.load("a.csv", ts_root)
    np.testing.assert_allclose(local.embed([a])[0], moirai.embed([a])[0], atol=1e-5)
