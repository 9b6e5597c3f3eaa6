"""Synthetic contrast-enhanced abdominal CT volumes, int16 Hounsfield units, NIfTI-1 (.nii.gz).

The volume (64 x 64 x 32 voxels, 4.7 x 4.7 x 5 mm, RAS affine) shows body wall, fat, spine,
aorta, IVC, liver, spleen, bowel gas and both kidneys. A renal tumour sits on one kidney at a
random depth; its size (global) and its necrotic, heterogeneous core (texture) follow the
evidence, and liver metastases appear as hypodense spots. Tumours are elongated in z so
several of 8 uniformly spaced axial slices cut them. Poor-quality scans are non-contrast
(kidney and tumour barely enhance) with strong noise and streaks.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from cohorts.demo.noise import upsample

SHAPE = (32, 64, 64)  # (z, y, x) while drawing; stored as (x, y, z)
SPACING = (4.7, 4.7, 5.0)  # mm along x, y, z
HALF_FOV_MM = SPACING[0] * SHAPE[2] / 2


@functools.lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable coordinates (z: 0 inferior..1 superior; y anterior->posterior; x right->left)."""
    z = np.linspace(0.0, 1.0, SHAPE[0], dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, SHAPE[1], dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, SHAPE[2], dtype=np.float32)[None, None, :]
    return z, y, x


def _ellipsoid(cx: float, cy: float, cz: float, rx: float, ry: float, rz: float) -> np.ndarray:
    zz, yy, xx = _grid()
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 + ((zz - cz) / rz) ** 2


def _smooth3(rng: np.random.Generator, cells: tuple[int, int, int]) -> np.ndarray:
    """Smooth unit-scale noise: bilinear in-plane (PIL), linear along z (no BLAS threads)."""
    low = rng.standard_normal(cells).astype(np.float32)
    planes = np.stack([upsample(p, SHAPE[1:]) for p in low])
    pos = np.clip((np.arange(SHAPE[0]) + 0.5) * cells[0] / SHAPE[0] - 0.5, 0, cells[0] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells[0] - 1)
    t = (pos - lo).astype(np.float32)[:, None, None]
    return planes[lo] * (1 - t) + planes[hi] * t


def render_ct(
    burden: float,
    necrosis: float,
    metastasis: float,
    rng: np.random.Generator,
    quality: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """A (z, y, x) float HU volume; arguments are evidence values (unit Gaussian scale)."""
    zz, yy, xx = _grid()
    poor = quality < 0.5
    enh = (0.12 if poor else 1.0) * (1.0 - 0.2 * shift)  # contrast enhancement factor
    vol = np.full(SHAPE, -1000.0, np.float32)
    bw, bh = rng.uniform(0.8, 0.92), rng.uniform(0.58, 0.68)
    body = np.broadcast_to(((xx / bw) ** 2 + ((yy - 0.05) / bh) ** 2) <= 1.0, SHAPE)
    inner = np.broadcast_to(
        ((xx / (bw - 0.09)) ** 2 + ((yy - 0.05) / (bh - 0.09)) ** 2) <= 1.0, SHAPE
    )
    vol[body] = -100.0
    vol[inner] = -75.0 + 25.0 * _smooth3(rng, (4, 8, 8))[inner]
    for side in (-1, 1):  # paraspinal muscles
        vol[_ellipsoid(side * 0.2, 0.47, 0.5, 0.14, 0.1, 9.0) <= 1] = 50.0
    vol[_ellipsoid(0.0, 0.33, 0.5, 0.13, 0.12, 9.0) <= 1] = 700.0  # vertebral cortex
    vol[_ellipsoid(0.0, 0.33, 0.5, 0.1, 0.09, 9.0) <= 1] = 280.0
    vol[_ellipsoid(0.0, 0.5, 0.5, 0.045, 0.045, 9.0) <= 1] = 20.0  # canal
    vol[_ellipsoid(0.1, 0.16, 0.5, 0.065, 0.065, 9.0) <= 1] = 40.0 + 160.0 * enh  # aorta
    vol[_ellipsoid(-0.12, 0.13, 0.5, 0.07, 0.06, 9.0) <= 1] = 40.0 + 100.0 * enh  # IVC
    liver = (_ellipsoid(-0.42, -0.08, 1.05, 0.42, 0.45, 0.55) <= 1) & inner
    vol[liver] = 55.0 + 50.0 * enh
    vol[(_ellipsoid(0.55, 0.08, 0.95, 0.16, 0.2, 0.4) <= 1) & inner] = 50.0 + 60.0 * enh  # spleen
    for _ in range(int(rng.integers(4, 7))):  # bowel loops, mostly fluid-filled
        cx, cy, cz = rng.uniform(-0.45, 0.45), rng.uniform(-0.45, -0.1), rng.uniform(0.0, 0.6)
        r = rng.uniform(0.06, 0.11)
        loop = (_ellipsoid(cx, cy, cz, r, r, r * 4) <= 1) & inner
        vol[loop] = -700.0 if rng.random() < 0.15 else 25.0
    kid_z = rng.uniform(0.38, 0.5)
    kidneys = []
    for side in (-1, 1):
        cx, cy = side * 0.42, 0.22
        d = _ellipsoid(cx, cy, kid_z, 0.14, 0.19, 0.34)
        vol[d <= 1.0] = 35.0 + 140.0 * enh  # cortex
        vol[d <= 0.45] = 35.0 + 70.0 * enh  # medulla
        vol[(_ellipsoid(cx - side * 0.08, cy, kid_z, 0.06, 0.08, 0.2) <= 1)] = -40.0  # sinus fat
        kidneys.append((cx, cy))

    # tumour: size ~ burden, necrotic core and texture ~ necrosis
    kx, ky = kidneys[int(rng.integers(0, 2))]
    r_mm = float(np.clip(30.0 + 13.0 * burden + rng.normal(0, 2.0), 10.0, 80.0))
    r = r_mm / HALF_FOV_MM
    ang = rng.uniform(0, 2 * np.pi)
    tx, ty = kx + 0.12 * np.cos(ang), ky + 0.12 * np.sin(ang)
    tz = float(np.clip(kid_z + rng.uniform(-0.2, 0.2), 0.12, 0.88))
    d = _ellipsoid(tx, ty, tz, r, r * 0.9, 1.3 * r_mm / (SPACING[2] * (SHAPE[0] - 1)))
    tumour = (d <= 1.0) & body
    nec_frac = float(np.clip(0.25 + 0.22 * necrosis + rng.normal(0, 0.05), 0.0, 0.8))
    texture = _smooth3(rng, (12, 24, 24))
    solid = 35.0 + 45.0 * enh + (15.0 + 15.0 * max(necrosis + 1.0, 0.0)) * texture
    vol = np.where(tumour, solid, vol)
    vol = np.where(tumour & (d <= nec_frac**2 * 1.6), 18.0 + 8.0 * texture, vol)
    stranding = (d > 1.0) & (d <= 1.0 + 0.6 * max(burden + 1.0, 0.0)) & (vol < -20) & inner
    vol = np.where(stranding, vol + 45.0 + 20.0 * texture, vol)
    # liver metastases
    n_met = int(np.clip(np.round(2.5 * np.logaddexp(0.0, 2.0 * (metastasis - 0.5))), 0, 10))
    lz, ly, lx = np.nonzero(liver)
    for i in rng.integers(0, len(lz), n_met) if len(lz) and n_met else []:
        rr = rng.uniform(0.06, 0.12)
        met = (
            _ellipsoid(xx[0, 0, lx[i]], yy[0, ly[i], 0], zz[lz[i], 0, 0], rr, rr, rr * 3) <= 1
        ) & liver
        vol[met] = 35.0

    # acquisition: calibration shift, blur, noise, streaks on poor scans
    vol = ndi.gaussian_filter(vol, (0.4, 0.6, 0.6)) + 15.0 * shift
    sigma = 10.0 + 8.0 * shift + (30.0 if poor else 0.0)
    vol = vol + rng.normal(0, sigma, SHAPE).astype(np.float32)
    if poor:
        streak = np.sin(xx * rng.uniform(20, 40) + yy * rng.uniform(-20, 20)) * 35.0
        vol = vol + streak * body
    return np.clip(vol, -1024, 3071)


def ct_affine() -> np.ndarray:
    """RAS affine: i runs to the patient's left (x decreases), j posterior, k superior."""
    sx, sy, sz = SPACING
    nz, ny, nx = SHAPE
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [sx * (nx - 1) / 2, sy * (ny - 1) / 2, -sz * (nz - 1) / 2]
    return aff


def write_nifti(path: Path, vol_zyx: np.ndarray) -> None:
    """int16 NIfTI-1, gzip with mtime 0 so equal volumes give equal bytes."""
    data = np.ascontiguousarray(np.round(vol_zyx).astype(np.int16).transpose(2, 1, 0))
    img = nib.Nifti1Image(data, ct_affine())
    img.set_qform(ct_affine(), code=1)
    img.set_sform(ct_affine(), code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"MedMIX synthetic CT (HU)"
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
