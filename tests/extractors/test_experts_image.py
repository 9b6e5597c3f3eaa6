"""Image readers, the radiomics expert, the DINOv2 expert and one end-to-end extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.base import SampleError
from extractors.cache import read_cache
from extractors.experts.image import Dinov2Expert
from extractors.experts.texture import RadiomicsExpert, _glcm, radiomics_feature_names
from extractors.extract import extract
from extractors.loading import WeightsNotFound
from extractors.readers.images import read_image
from extractors.registry import create_expert

IU_PNGS = [
    "CXR7_IM-2263-1001.png",
    "CXR7_IM-2263-2001.png",
    "CXR1900_IM-0584-1001.png",
    "CXR1900_IM-0584-2001.png",
]


def _gradient(h: int = 40, w: int = 50) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x + 2 * y) / (w + 2 * h)).astype(np.float32)


# -- readers ------------------------------------------------------------------------------


def test_read_8bit_gray_and_rgb(tmp_path: Path) -> None:
    g8 = (_gradient() * 255).astype(np.uint8)
    Image.fromarray(g8).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 50) and out.dtype == np.float32
    np.testing.assert_allclose(out, g8 / 255.0, atol=1e-6)
    # a grayscale X-ray saved as RGB collapses to (H, W); a colour image stays (H, W, 3)
    Image.fromarray(np.stack([g8] * 3, -1)).save(tmp_path / "rgb_gray.png")
    assert read_image(tmp_path / "rgb_gray.png").shape == (40, 50)
    col = np.stack([g8, 255 - g8, g8 // 2], -1)
    Image.fromarray(col).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), col / 255.0, atol=1e-6)
    # RGBA: alpha dropped; palette: expanded; JPEG: decoded
    Image.fromarray(np.concatenate([col, np.full((40, 50, 1), 7, np.uint8)], -1)).save(
        tmp_path / "rgba.png"
    )
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), col / 255.0, atol=1e-6)
    Image.fromarray(col).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (40, 50, 3)
    Image.fromarray(g8).save(tmp_path / "g.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "g.jpg") - g8 / 255.0).mean() < 0.02


def test_read_16bit_png(tmp_path: Path) -> None:
    raw = (np.arange(40 * 50).reshape(40, 50) % 4096).astype(
        np.uint16
    ) + 100  # 12-bit data in 16 bits
    Image.fromarray(raw).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")  # default: the image's own range -> [0, 1]
    np.testing.assert_allclose(out, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    absolute = read_image(tmp_path / "g16.png", high_bit="dtype")
    np.testing.assert_allclose(absolute, raw / 65535.0, atol=1e-6)


def test_read_dicom_image(realdata: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(realdata / "dicom" / "CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = read_image(realdata / "dicom" / "CT_small.dcm")  # no VOI window in this file: min..max
    np.testing.assert_allclose(out, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    assert RadiomicsExpert().load("dicom/CT_small.dcm", realdata).gray.shape == (128, 128)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is not an image at all", "not a recognised image format")],
)
def test_bad_image_files(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    expert = RadiomicsExpert()
    with pytest.raises(SampleError, match=reason):
        expert.load("bad.png", tmp_path)


def test_truncated_png_and_missing_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match="truncated or corrupt image"):
        RadiomicsExpert().load("cut.png", tmp_path)
    with pytest.raises(SampleError, match="file not found"):
        RadiomicsExpert().load("nope.png", tmp_path)


# -- radiomics ----------------------------------------------------------------------------


def test_glcm_matches_hand_computed_example() -> None:
    # The 4x4, 4-level example of Haralick / scikit-image's graycomatrix documentation.
    img = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]])
    counts = np.array(
        [[2, 2, 1, 0], [0, 2, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]], dtype=float
    )  # d=1, 0 deg
    p = counts + counts.T
    p /= p.sum()
    i, j = np.indices(p.shape)
    feats = _glcm(img[None], levels=4, distances=(1,))  # columns: prop-major, then angle
    n_ang = 4
    contrast = feats[0, 0 * n_ang + 0] * 9  # stored / (L-1)^2
    homogeneity = feats[0, 2 * n_ang + 0]
    energy = feats[0, 3 * n_ang + 0]
    assert contrast == pytest.approx((p * (i - j) ** 2).sum())
    assert homogeneity == pytest.approx((p / (1 + (i - j) ** 2)).sum())
    assert energy == pytest.approx(np.sqrt((p**2).sum()))


def test_radiomics_dim_determinism_and_batch_invariance(tmp_path: Path) -> None:
    a, b = RadiomicsExpert(), create_expert("image-radiomics")
    assert a.dim == len(radiomics_feature_names()) == len(a.feature_names) == 181
    rng = np.random.default_rng(1)
    imgs = [
        rng.random((70, 90)).astype(np.float32),
        _gradient(),
        np.full((30, 30), 0.3, np.float32),
    ]
    items = [a.prepare_array(x) for x in imgs]
    out = a.embed(items)
    assert out.shape == (3, a.dim) and out.dtype == np.float32
    assert np.isfinite(out).all()  # a constant image too
    np.testing.assert_array_equal(out, b.embed([b.prepare_array(x) for x in imgs]))
    np.testing.assert_allclose(a.embed(items[1:2])[0], out[1], atol=1e-6)
    names = a.feature_names
    assert out[2, names.index("mean")] == pytest.approx(0.3, abs=1e-5)
    assert out[2, names.index("std")] == pytest.approx(0.0, abs=1e-6)
    assert out[0, names.index("log_aspect")] == pytest.approx(np.log(70 / 90), abs=1e-6)
    # load == read + prepare_array
    Image.fromarray((_gradient() * 255).astype(np.uint8)).save(tmp_path / "g.png")
    via_load = a.embed([a.load("g.png", tmp_path)])
    via_arr = a.embed([a.prepare_array(read_image(tmp_path / "g.png"))])
    np.testing.assert_array_equal(via_load, via_arr)


def test_radiomics_and_dinov2_on_real_pngs(realdata: Path, tiny_dinov2_spec: dict) -> None:
    root = realdata / "iu_xray" / "images"
    rad = RadiomicsExpert()
    x = rad.embed([rad.load(f, root) for f in IU_PNGS])
    assert x.shape == (4, 181) and np.isfinite(x).all()
    names = rad.feature_names
    assert x[:, names.index("mean")].min() > 0.2 and x[:, names.index("mean")].max() < 0.8
    assert len({tuple(r) for r in np.round(x, 5)}) == 4  # four different images, four vectors
    spec = dict(tiny_dinov2_spec)
    spec.pop("type")
    d1, d2 = Dinov2Expert(**spec), create_expert("dinov2", **spec)
    e1 = d1.embed([d1.load(f, root) for f in IU_PNGS])
    e2 = d2.embed([d2.load(f, root) for f in IU_PNGS])
    assert e1.shape == (4, 64) and np.isfinite(e1).all()
    np.testing.assert_array_equal(e1, e2)  # seeded random init: identical instances
    assert not np.allclose(e1[0], e1[1])


# -- dinov2 -------------------------------------------------------------------------------


def test_dinov2_batch_invariance_and_metadata(tiny_dinov2_spec: dict) -> None:
    spec = dict(tiny_dinov2_spec)
    spec.pop("type")
    d = Dinov2Expert(batch_size=4, **spec)
    rng = np.random.default_rng(2)
    items = [d.prepare_array(rng.random((50 + 7 * i, 60, 3)).astype(np.float32)) for i in range(6)]
    assert items[0].shape == (3, 112, 112)
    batch = d.embed(items)
    assert batch.shape == (6, 64)
    for i in (0, 5):
        np.testing.assert_allclose(d.embed([items[i]])[0], batch[i], atol=1e-5)
    assert d.model_id.startswith("offline:dinov2-random-init(") and "hidden=64" in d.model_id
    assert d.pooling == "cls"
    assert Dinov2Expert(seed=1, **spec).model_id != d.model_id
    other = Dinov2Expert(seed=1, **spec)
    assert not np.allclose(other.embed(items[:1]), batch[:1])
    meta = d.cache_meta()
    assert meta.dim == 64 and "transformers" in meta.packages
    # grayscale and replicated RGB give the same vector
    g = rng.random((40, 40)).astype(np.float32)
    np.testing.assert_allclose(
        d.embed([d.prepare_array(g)]), d.embed([d.prepare_array(np.stack([g] * 3, -1))]), atol=1e-6
    )


def test_dinov2_missing_weights_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    d = Dinov2Expert(local_dir=str(tmp_path / "no-weights-here"))
    with pytest.raises(
        WeightsNotFound, match=r"(?s)'dinov2'.*local_dir.*does not exist.*random_init: true"
    ):
        _ = d.dim
    d = create_expert("dinov2", model_id="facebook/dinov2-nonexistent-test")
    with pytest.raises(
        WeightsNotFound, match=r"(?s)dinov2-nonexistent-test.*HF_HUB_OFFLINE=1.*local_dir"
    ):
        d.embed([np.zeros((3, 224, 224), np.float32)])


# -- end to end ---------------------------------------------------------------------------


def test_extract_end_to_end_radiomics(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / f"ok{i}.png")
    (root / "zero.png").write_bytes(b"")
    good = (root / "ok0.png").read_bytes()
    (root / "cut.png").write_bytes(good[: len(good) // 3])
    df = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(6)],
            "patient_id": [f"p{i}" for i in range(6)],
            "split": ["train", "train", "val", "test", "test", "test"],
            "frontal": ["ok0.png", "ok1.png", None, "zero.png", "cut.png", "ok2.png"],
            "label_y": [0, 1, 0, 1, 0, 1],
        }
    )
    meta = ManifestMeta("tiny", "binary", {"frontal": "image"}, ["y"], "test", root=str(root))
    manifest = write_manifest(df, tmp_path / "manifest.parquet", meta)
    expert = create_expert("image-radiomics", batch_size=2)
    summary = extract(
        manifest, "frontal", expert, tmp_path / "out.parquet", shard_size=4, progress=False
    )
    assert (summary.ok, summary.missing, summary.failed) == (3, 1, 2)
    cache = read_cache(tmp_path / "out.parquet")
    status = dict(zip(cache.sample_ids, cache.status, strict=True))
    reason = dict(zip(cache.sample_ids, cache.reason, strict=True))
    assert status == {
        "s0": "ok",
        "s1": "ok",
        "s2": "missing",
        "s3": "failed",
        "s4": "failed",
        "s5": "ok",
    }
    assert "empty file" in reason["s3"] and "truncated or corrupt image" in reason["s4"]
    assert cache.meta.dim == 181 and cache.meta.expert == "image-radiomics"
    ok_rows = cache.embeddings[cache.ok]
    direct = expert.embed([expert.load(f, root) for f in ("ok0.png", "ok1.png", "ok2.png")])
    np.testing.assert_allclose(ok_rows, direct, atol=1e-6)


@pytest.mark.parametrize(
    ("expert_type", "params"),
    [
        ("dinov2", {}),
        ("dinov3", {}),
        ("hf-vision", {}),
        ("hf-vision", {"resize": "shortest-center-crop"}),
    ],
)
def test_grayscale_preprocessing_equals_its_rgb_replica(expert_type: str, params: dict) -> None:
    """A radiograph is resized as one channel and then replicated (a third of the work): the
    result must equal resizing the replicated RGB image, for squash and centre-crop resizes."""
    from extractors.registry import create_expert

    expert = create_expert(expert_type, random_init=True, **params)
    rng = np.random.default_rng(0)
    gray = rng.random((301, 257)).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    a, b = expert.prepare_array(gray), expert.prepare_array(rgb)
    assert a.shape == (3, expert.input_size, expert.input_size)
    np.testing.assert_array_equal(a, b)
