"""Whole-slide images: opening, resolution, tissue mask and the tile grid.

``openslide.open_slide`` reads vendor formats (Aperio SVS, Hamamatsu, MIRAX, …), generic tiled
TIFF, and — through its Pillow fallback — plain images (PNG, JPEG, untiled TIFF). All
coordinates here are level-0 pixels.

Resolution (µm per level-0 pixel), first found: ``openslide.mpp-x``/``-y``; the TIFF resolution
tags (``tiff.XResolution`` with ``tiff.ResolutionUnit`` centimetre or inch); a plain image's
DPI; the ``default_mpp`` given by the caller. Values outside [0.05, 50] µm are ignored (a 72-dpi
placeholder tag is not a microscope resolution).

Tissue mask (on a thumbnail with ``mask_px_per_tile`` pixels per tile side): Otsu threshold on
HSV saturation (H&E tissue is coloured, glass is grey-white) or on grayscale darkness (for
unstained / grayscale slides), never below a fixed floor (``min_saturation`` / above
``max_gray``) so a blank slide yields no tissue; then a 3x3 closing and opening, holes filled,
and components smaller than a quarter tile removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from extractors.base import SampleError

MPP_RANGE = (0.05, 50.0)
TISSUE_METHODS = ("saturation", "darkness")


def open_slide(path: str | Path) -> Any:
    import openslide

    try:
        return openslide.open_slide(str(path))
    except Exception as exc:  # OpenSlideError, UnidentifiedImageError, OSError, …
        raise SampleError(f"unreadable slide ({type(exc).__name__}: {exc})"[:200]) from exc


def _plausible(mpp: float) -> bool:
    return math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _pil_mpp(path: Path) -> float | None:
    try:
        with Image.open(path) as im:
            dpi = im.info.get("dpi")
            if dpi and float(dpi[0]) > 0:
                return 25400.0 / float(dpi[0])
            res, unit = im.info.get("resolution"), im.info.get("resolution_unit")
            if res and float(res[0]) > 0 and unit in (3, "cm"):
                return 10000.0 / float(res[0])
    except Exception:
        return None
    return None


def slide_mpp(slide: Any, path: str | Path, default_mpp: float | None = None) -> tuple[float, str]:
    """(µm per level-0 pixel, where it came from). Raises SampleError when unknown."""
    props = dict(slide.properties)
    try:
        mx = float(props.get("openslide.mpp-x", "nan"))
        my = float(props.get("openslide.mpp-y", mx))
        mpp = (mx + my) / 2 if math.isfinite(my) else mx
        if _plausible(mpp):
            return mpp, "openslide.mpp"
    except ValueError:
        pass
    try:
        xres = float(props.get("tiff.XResolution", "nan"))
        unit = str(props.get("tiff.ResolutionUnit", "")).lower()
        if xres > 0 and unit in ("centimeter", "centimetre", "cm"):
            mpp = 10000.0 / xres
        elif xres > 0 and unit == "inch":
            mpp = 25400.0 / xres
        else:
            mpp = float("nan")
        if _plausible(mpp):
            return mpp, "tiff.resolution"
    except ValueError:
        pass
    if type(slide).__name__ == "ImageSlide":
        mpp = _pil_mpp(Path(path))
        if mpp is not None and _plausible(mpp):
            return mpp, "image.dpi"
    if default_mpp is not None:
        return float(default_mpp), "default_mpp"
    raise SampleError(
        "slide resolution unknown (no openslide.mpp-x, TIFF resolution or image DPI); set default_mpp"
    )


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: values ``> t`` form the upper class.

    ``t`` is the upper edge of the last lower-class bin that maximises the between-class variance
    (the middle of the maximising plateau when several splits tie, e.g. two separated spikes)."""
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0)
    hist = np.bincount(np.minimum((v * bins).astype(np.int64), bins - 1), minlength=bins).astype(
        np.float64
    )
    p = hist / max(hist.sum(), 1.0)
    centres = (np.arange(bins) + 0.5) / bins
    if np.count_nonzero(hist) < 2:
        return float(v.max()) if v.size else 1.0  # one level: nothing above it
    omega = np.cumsum(p)
    mu = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    k = int(best[len(best) // 2])
    return float((k + 1) / bins)


def tissue_mask(
    rgb: np.ndarray,
    method: str = "saturation",
    min_saturation: float = 0.07,
    max_gray: float = 0.85,
    min_object_px: int = 16,
) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 thumbnail (see the module docstring)."""
    from scipy import ndimage

    x = np.asarray(rgb, dtype=np.float32)[..., :3] / 255.0
    if method == "saturation":
        mx, mn = x.max(axis=-1), x.min(axis=-1)
        sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
        mask = sat > max(otsu_threshold(sat), min_saturation)
    elif method == "darkness":
        gray = x @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        mask = gray < min(otsu_threshold(gray), max_gray)
    else:
        raise ValueError(f"tissue method must be one of {TISSUE_METHODS}, got {method!r}")
    st = np.ones((3, 3), dtype=bool)
    mask = ndimage.binary_closing(mask, structure=st, border_value=0)
    mask = ndimage.binary_opening(mask, structure=st, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_object_px
        keep[0] = False
        mask = keep[labels]
    return mask.astype(bool)


@dataclass
class TileGrid:
    coords: (
        np.ndarray
    )  # (N, 2) int64 level-0 (x, y) of the kept tiles' top-left corners, raster order
    size0: float  # tile side in level-0 pixels
    tissue: np.ndarray  # (N,) tissue fraction of each kept tile
    n_candidates: int  # tiles in the grid with enough tissue, before the max_tiles cap


def tile_grid(
    dims: tuple[int, int],
    size0: float,
    mask: np.ndarray,
    min_tissue: float = 0.5,
    max_tiles: int | None = None,
) -> TileGrid:
    """Non-overlapping grid of ``size0``-pixel tiles over a level-0 ``dims`` = (W, H) slide.

    A tile's tissue fraction is the mask's mean over the tile's footprint on the thumbnail
    (summed-area table, all tiles at once). Tiles with fraction >= ``min_tissue`` are kept; more
    than ``max_tiles`` are thinned by evenly spaced indices in raster order (deterministic).
    """
    w0, h0 = dims
    nx, ny = int(w0 // size0), int(h0 // size0)
    if nx < 1 or ny < 1:
        raise SampleError(f"slide ({w0}x{h0} px) is smaller than one tile ({size0:.0f} px)")
    mh, mw = mask.shape
    sx, sy = w0 / mw, h0 / mh
    sat = np.zeros((mh + 1, mw + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))  # raster order: rows of tiles
    x0 = (gx.ravel() * size0).round().astype(np.int64)
    y0 = (gy.ravel() * size0).round().astype(np.int64)
    c0 = np.clip(np.floor(x0 / sx).astype(np.int64), 0, mw - 1)
    r0 = np.clip(np.floor(y0 / sy).astype(np.int64), 0, mh - 1)
    c1 = np.clip(np.ceil((x0 + size0) / sx).astype(np.int64), c0 + 1, mw)
    r1 = np.clip(np.ceil((y0 + size0) / sy).astype(np.int64), r0 + 1, mh)
    area = (r1 - r0) * (c1 - c0)
    frac = (sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]) / area
    keep = np.flatnonzero(frac >= min_tissue)
    n_cand = len(keep)
    if max_tiles is not None and n_cand > max_tiles:
        keep = keep[np.round(np.linspace(0, n_cand - 1, int(max_tiles))).astype(np.int64)]
    return TileGrid(np.stack([x0[keep], y0[keep]], axis=1), float(size0), frac[keep], n_cand)


def read_tile(slide: Any, x0: int, y0: int, size0: float, out_px: int) -> np.ndarray:
    """The level-0 box (x0, y0, size0) as an (out_px, out_px, 3) uint8 RGB tile, read from the
    best pyramid level for the downsample and resized (bicubic); transparent pixels become white."""
    ds = size0 / out_px
    level = int(slide.get_best_level_for_downsample(max(ds, 1.0)))
    ds_l = float(slide.level_downsamples[level])
    side = max(1, int(math.ceil(size0 / ds_l)))
    try:
        region = slide.read_region((int(x0), int(y0)), level, (side, side))
    except Exception as exc:
        raise SampleError(f"unreadable slide region ({type(exc).__name__})") from exc
    rgba = np.asarray(region.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    im = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    if side != out_px:
        im = im.resize((out_px, out_px), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def thumbnail(
    slide: Any, dims: tuple[int, int], downsample: float, max_side: int = 2048
) -> np.ndarray:
    """RGB uint8 thumbnail of about ``dims / downsample`` pixels (at most ``max_side``)."""
    w0, h0 = dims
    ds = max(downsample, 1.0, max(w0, h0) / max_side)
    size = (max(1, int(round(w0 / ds))), max(1, int(round(h0 / ds))))
    try:
        im = slide.get_thumbnail(size)
    except Exception as exc:
        raise SampleError(f"unreadable slide thumbnail ({type(exc).__name__})") from exc
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
