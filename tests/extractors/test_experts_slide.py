"""Slide reading, resolution, tissue mask, tile grid and the slide-tiles expert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from extractors.base import SampleError
from extractors.experts.slide import SlideTilesExpert
from extractors.readers.slides import otsu_threshold, slide_mpp, tile_grid, tissue_mask
from extractors.registry import create_expert

SVS = "wsi/cmu-1-small-region.svs"


def _he_image(h: int = 1024, w: int = 1536, seed: int = 0) -> np.ndarray:
    """Glass-white background with one pink/purple 'tissue' ellipse (textured)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 238, np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h * 0.45) / (h * 0.3)) ** 2 + ((xx - w * 0.35) / (w * 0.2)) ** 2 < 1
    tissue = np.stack(
        [
            rng.integers(150, 220, (h, w)),
            rng.integers(60, 140, (h, w)),
            rng.integers(140, 200, (h, w)),
        ],
        -1,
    )
    img[blob] = tissue[blob].astype(np.uint8)
    return img


class _FakeSlide:
    def __init__(self, props: dict[str, str]) -> None:
        self.properties = props


def test_slide_mpp_sources(tmp_path: Path) -> None:
    assert slide_mpp(_FakeSlide({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}), "x") == (
        0.25,
        "openslide.mpp",
    )
    cm = {"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}
    assert slide_mpp(_FakeSlide(cm), "x") == (pytest.approx(0.5), "tiff.resolution")
    inch = {"tiff.XResolution": "12700", "tiff.ResolutionUnit": "inch"}
    assert slide_mpp(_FakeSlide(inch), "x") == (pytest.approx(2.0), "tiff.resolution")
    placeholder = {
        "tiff.XResolution": "72",
        "tiff.ResolutionUnit": "inch",
    }  # 352 µm/px: not a microscope
    assert slide_mpp(_FakeSlide(placeholder), "x", default_mpp=0.5) == (0.5, "default_mpp")
    with pytest.raises(SampleError, match="resolution unknown"):
        slide_mpp(_FakeSlide({}), "x")


def test_otsu_and_tissue_mask() -> None:
    vals = np.concatenate([np.full(500, 0.1), np.full(500, 0.7)])
    assert 0.1 < otsu_threshold(vals) < 0.7
    img = _he_image(256, 384)
    mask = tissue_mask(img)
    yy, xx = np.mgrid[0:256, 0:384]
    truth = ((yy - 256 * 0.45) / (256 * 0.3)) ** 2 + ((xx - 384 * 0.35) / (384 * 0.2)) ** 2 < 1
    assert (mask == truth).mean() > 0.97
    assert not tissue_mask(np.full((64, 64, 3), 240, np.uint8)).any()  # blank glass
    dark = np.full((64, 64, 3), 230, np.uint8)
    dark[10:40, 10:40] = 60
    assert tissue_mask(dark, method="darkness")[20:30, 20:30].all()


def test_tile_grid_cap_is_even_and_deterministic() -> None:
    mask = np.ones((50, 50), bool)
    full = tile_grid((1000, 1000), 100.0, mask, max_tiles=None)
    assert len(full.coords) == 100 and full.n_candidates == 100
    capped = tile_grid((1000, 1000), 100.0, mask, max_tiles=7)
    assert len(capped.coords) == 7 and capped.n_candidates == 100
    assert tuple(capped.coords[0]) == (0, 0) and tuple(capped.coords[-1]) == (900, 900)
    np.testing.assert_array_equal(
        capped.coords, tile_grid((1000, 1000), 100.0, mask, max_tiles=7).coords
    )
    half = np.zeros((50, 50), bool)
    half[:, :25] = True  # left half of the slide is tissue
    g = tile_grid((1000, 1000), 100.0, half, min_tissue=0.5)
    assert len(g.coords) == 50 and g.coords[:, 0].max() == 400


def test_real_svs(realdata: Path, tiny_dinov2_spec: dict) -> None:
    e = SlideTilesExpert(target_mpp=2.0, tile_px=112, max_tiles=64)
    item = e.load(SVS, realdata)
    assert item.mpp == pytest.approx(0.499) and item.mpp_source == "openslide.mpp"
    assert item.dims == (2220, 2967)
    assert item.tile_size0 == pytest.approx(112 * 2.0 / 0.499)
    assert 0.05 < item.mask.mean() < 0.95  # tissue found, background too
    n = len(item.tiles)
    assert n >= 4 and item.coords.shape == (n, 2) and len(item.tissue) == n
    assert np.all(item.tissue >= 0.5)
    # every kept tile's level-0 box lies inside the slide and mostly on the tissue mask
    sx, sy = item.dims[0] / item.mask.shape[1], item.dims[1] / item.mask.shape[0]
    for x, y in item.coords:
        assert (
            x >= 0
            and x + item.tile_size0 <= item.dims[0] + 1
            and y >= 0
            and y + item.tile_size0 <= item.dims[1] + 1
        )
        box = item.mask[
            int(y / sy) : int((y + item.tile_size0) / sy),
            int(x / sx) : int((x + item.tile_size0) / sx),
        ]
        assert box.mean() >= 0.4
    out = e.embed([item])
    assert out.shape == (1, 181) and np.isfinite(out).all()
    # tissue tiles are H&E-coloured, not glass: mean intensity well below white
    assert out[0, e.inner.feature_names.index("mean")] < 0.85
    # through the tiny DINOv2 tile encoder, deterministic across instances
    d1 = create_expert(
        "slide-tiles", tile_expert=dict(tiny_dinov2_spec), target_mpp=2.0, tile_px=112, max_tiles=6
    )
    d2 = SlideTilesExpert(
        tile_expert=dict(tiny_dinov2_spec), target_mpp=2.0, tile_px=112, max_tiles=6
    )
    a = d1.embed([d1.load(SVS, realdata)])
    assert a.shape == (1, 64) and np.isfinite(a).all()
    np.testing.assert_allclose(a, d2.embed([d2.load(SVS, realdata)]), atol=1e-6)
    cfg = d1.preprocess_config()
    assert (
        cfg["tile_expert"]["type"] == "dinov2"
        and cfg["target_mpp"] == 2.0
        and cfg["max_tiles"] == 6
    )


def test_tiled_tiff_and_plain_image(tmp_path: Path) -> None:
    img = _he_image()
    tifffile.imwrite(
        tmp_path / "s.tif",
        img,
        tile=(256, 256),
        photometric="rgb",
        resolution=(10000.0, 10000.0),
        resolutionunit="CENTIMETER",
    )  # 1 µm/px
    e = SlideTilesExpert(target_mpp=2.0, tile_px=64, max_tiles=None, min_tissue=0.5)
    item = e.load("s.tif", tmp_path)
    assert item.mpp == pytest.approx(1.0)
    assert item.tile_size0 == pytest.approx(128.0)
    # kept tiles sit on the ellipse
    cx = item.coords[:, 0] + 64
    cy = item.coords[:, 1] + 64
    inside = ((cy - 1024 * 0.45) / (1024 * 0.3)) ** 2 + (
        (cx - 1536 * 0.35) / (1536 * 0.2)
    ) ** 2 < 1.2
    assert len(item.coords) >= 10 and inside.all()
    assert item.tiles[0].gray.shape == (128, 128)
    capped = SlideTilesExpert(target_mpp=2.0, tile_px=64, max_tiles=5).load("s.tif", tmp_path)
    assert len(capped.tiles) == 5 and capped.n_candidates == len(item.tiles)
    # the same picture as a PNG: no resolution stored -> error unless default_mpp (or DPI)
    Image.fromarray(img).save(tmp_path / "s.png")
    with pytest.raises(SampleError, match="resolution unknown"):
        e.load("s.png", tmp_path)
    png = SlideTilesExpert(target_mpp=2.0, tile_px=64, max_tiles=None, default_mpp=1.0).load(
        "s.png", tmp_path
    )
    assert png.mpp_source == "default_mpp"
    np.testing.assert_array_equal(png.coords, item.coords)
    Image.fromarray(img).save(tmp_path / "dpi.png", dpi=(25400.0, 25400.0))
    assert e.load("dpi.png", tmp_path).mpp_source == "image.dpi"


def test_bad_slides(tmp_path: Path) -> None:
    e = SlideTilesExpert(target_mpp=2.0, tile_px=64, default_mpp=1.0)
    (tmp_path / "zero.svs").write_bytes(b"")
    with pytest.raises(SampleError, match="empty file"):
        e.load("zero.svs", tmp_path)
    (tmp_path / "junk.svs").write_bytes(b"not a slide" * 50)
    with pytest.raises(SampleError, match="unreadable slide"):
        e.load("junk.svs", tmp_path)
    Image.fromarray(np.full((512, 512, 3), 242, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(SampleError, match="no tissue found"):
        e.load("blank.png", tmp_path)
    Image.fromarray(_he_image(60, 60)).save(tmp_path / "tiny.png")
    with pytest.raises(SampleError, match="smaller than one tile"):
        e.load("tiny.png", tmp_path)
