"""Synthetic H&E whole-slide images written as tiled pyramidal TIFF (OpenSlide generic-tiff).

Tissue is drawn at 2 um/px (the magnification the tile experts read) as haematoxylin and eosin optical-density maps and coloured by
Beer-Lambert with per-slide stain vectors: pink stroma, clear-cell nests (pale cytoplasm
with eosinophilic membranes), haematoxylin-dark nuclei, and necrotic patches (amorphous
pink with nuclear debris). Higher tumour grade means denser, larger, darker nuclei and less
clear cytoplasm; necrosis evidence sets the necrotic area. Tissue covers part of the slide
on a white background. The pyramid is 0.5 (base), 1, 2 and 4 um/px: levels finer than the
render replicate its pixels (nearest-neighbour), so the base holds no detail beyond 2 um/px
(and compresses well); resolution tags in px/cm make OpenSlide report ``openslide.mpp-x``/``mpp-y``.
Poor-quality slides are out of focus and faded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from cohorts.demo.noise import smooth_noise, upsample

BASE_MPP = 0.5
RENDER_MPP = 2.0
RENDER_SHAPE = (384, 512)  # (h, w) at RENDER_MPP; the base level is 4x that
N_LEVELS = 4
TILE = 256
# Ruifrok & Johnston stain OD vectors (R, G, B)
HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
EOSIN = np.array([0.07, 0.99, 0.11], np.float32)
BACKGROUND = 245


def render_he(
    grade: float,
    necrosis: float,
    rng: np.random.Generator,
    quality: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """RGB uint8 tissue image at RENDER_MPP; ``grade``/``necrosis`` are evidence values."""
    h, w = RENDER_SHAPE
    # tissue: a lobulated blob covering roughly half to two thirds of the slide (drawn coarse)
    ch, cw = h // 8, w // 8
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    cy, cx = ch * rng.uniform(0.45, 0.55), cw * rng.uniform(0.42, 0.58)
    ry, rx = ch * rng.uniform(0.36, 0.44), cw * rng.uniform(0.34, 0.42)
    env = 1.0 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    field = upsample(env + 0.22 * smooth_noise(rng, (6, 8), (ch, cw)), (h, w))
    tissue = np.clip(field * 25.0, 0.0, 1.0)

    g = float(grade)
    # stroma and clear-cell nests (eosin); membranes are ridges of band-passed noise
    stroma = 0.32 + 0.06 * smooth_noise(rng, (20, 26), (h, w))
    clear_frac = 1.0 / (1.0 + np.exp(0.9 * g - 0.4))
    nests = np.clip(
        (smooth_noise(rng, (24, 32), (h, w)) + 1.2 * (clear_frac - 0.5)) * 4.0, 0.0, 1.0
    )
    band = smooth_noise(rng, (h // 3, w // 3), (h, w), cubic=True)
    band /= band.std() + 1e-6
    membranes = np.exp(-(band**2) * 6.0)
    eosin = stroma * (1.0 - nests * 0.85) + nests * 0.38 * membranes
    # necrosis: amorphous pink patches with nuclear debris, membranes gone
    nec_area = float(np.clip(0.22 * np.logaddexp(0.0, 1.6 * (necrosis - 0.3)), 0.0, 0.5))
    nec = np.clip((smooth_noise(rng, (5, 7), (h, w)) - (1.1 - 2.2 * nec_area)) * 5.0, 0.0, 1.0)
    eosin = eosin * (1.0 - nec) + 0.5 * nec
    # nuclei: Poisson points, blurred to size, sharpened; grade -> density, size, darkness
    area = float(tissue.sum())
    density = RENDER_MPP**2 / 160.0 * np.exp(0.28 * g)  # nuclei per pixel
    n_nuc = int(rng.poisson(area * density))
    ys, xs = rng.integers(0, h, n_nuc), rng.integers(0, w, n_nuc)
    keep = (tissue[ys, xs] > 0.5) & (rng.random(n_nuc) > nec[ys, xs] * 0.7)
    n_deb = int(rng.poisson(0.012 * h * w))
    yd, xd = rng.integers(0, h, n_deb), rng.integers(0, w, n_deb)
    imp = np.zeros((h, w), np.float32)
    np.add.at(imp, (ys[keep], xs[keep]), 1.0)
    np.add.at(imp, (yd, xd), 0.45 * nec[yd, xd] * tissue[yd, xd])  # debris: small, faint
    size = (1.5 + 0.35 * np.clip(g + 1.5, 0.0, 4.0)) / RENDER_MPP
    nuc = ndi.gaussian_filter(imp, size) * np.float32(2 * np.pi * size * size)
    hema = np.float32(0.55 + 0.12 * g) * np.clip((nuc - 0.35) * 3.0, 0.0, 1.0) + 0.05 * (
        1.0 - nests
    )

    # stain appearance: per-slide stain strength, cohort shift tints and darkens
    h_vec = (
        HEMATOXYLIN * rng.uniform(0.9, 1.1, 3).astype(np.float32) * np.float32(1.0 + 0.25 * shift)
    )
    e_vec = EOSIN * rng.uniform(0.9, 1.1, 3).astype(np.float32) * np.float32(1.0 - 0.15 * shift)
    od = (hema * tissue)[..., None] * h_vec + (np.clip(eosin, 0, None) * tissue)[..., None] * e_vec
    poor = quality < 0.5
    if poor:  # faded stain, out of focus
        od = od * np.float32(0.45 + 0.4 * quality)
        od = ndi.gaussian_filter(od, (1.8, 1.8, 0))
    rgb = BACKGROUND * np.exp(od * np.float32(-np.log(10.0)))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def pyramid(render: np.ndarray) -> list[np.ndarray]:
    """[0.5, 1, 2, 4] um/px levels around a 2 um/px render (finer levels pixel-replicated)."""
    img = Image.fromarray(render)
    w, h = img.size
    base = img.resize((4 * w, 4 * h), Image.Resampling.NEAREST)
    up = img.resize((2 * w, 2 * h), Image.Resampling.NEAREST)
    return [np.asarray(base), np.asarray(up), render, np.asarray(img.reduce(2))]


def write_pyramidal_tiff(path: Path, levels: list[np.ndarray], base_mpp: float = BASE_MPP) -> None:
    """Tiled RGB TIFF, one directory per level, deflate; no timestamps or shape JSON."""
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for i, level in enumerate(levels):
            mpp = base_mpp * 2**i
            tw.write(
                level,
                photometric="rgb",
                tile=(TILE, TILE),
                compression="zlib",
                compressionargs={"level": 1},
                predictor=False,  # faster and, for pixel-replicated levels, smaller
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description=f"MedMIX synthetic H&E slide level={i} mpp={mpp:g}",
                metadata=None,
                software="medmix-demo",
            )
