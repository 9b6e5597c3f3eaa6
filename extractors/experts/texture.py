"""The GLCM/LBP texture image expert: hand-crafted intensity and texture features.

``texture-glcm-lbp`` is this project's own numpy implementation of first-order statistics, GLCM
and LBP texture and gradient features. It is *not* an IBSI-compliant radiomics implementation
(not pyradiomics; no IBSI discretisation, no shape features, no validation against the IBSI
reference values). Its former registry name ``image-radiomics`` still works as a deprecated
alias with the identical computation (same features, same cache hash), and warns. It needs no
model, so it is the default inner expert of the CT slicer and the WSI tiler.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from extractors.experts.image import ImageExpert
from extractors.readers.images import HIGH_BIT_MODES, as_unit_array, resize_float, to_gray
from extractors.registry import register_expert

log = logging.getLogger("medmix.extract")


# ----------------------------------------------------------------------------------------
# Radiomics-style features (batched numpy)
# ----------------------------------------------------------------------------------------

_PCTS = (1, 5, 10, 25, 50, 75, 90, 95, 99)
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "entropy")
_GLCM_ANGLES = (0, 45, 90, 135)
_LBP_RADII = (1, 2)
_LBP_P = 8
_ORIENT_BINS = 8


def radiomics_feature_names(
    distances: tuple[int, ...] = (1, 2, 4), grid: int = 4, hist_bins: int = 16
) -> list[str]:
    names = ["mean", "std", "min", "max", *[f"p{p}" for p in _PCTS], "iqr", "mad", "rms"]
    names += ["skewness_slog", "kurtosis_slog", "entropy64", "uniformity64"]
    names += [f"hist{hist_bins}_{i}" for i in range(hist_bins)]
    names += [f"grid{grid}_mean_{r}{c}" for r in range(grid) for c in range(grid)]
    names += [f"grid{grid}_std_{r}{c}" for r in range(grid) for c in range(grid)]
    names += ["centroid_y", "centroid_x", "frac_bright", "frac_dark", "log_aspect"]
    names += [f"glcm_{p}_d{d}_a{a}" for p in _GLCM_PROPS for d in distances for a in _GLCM_ANGLES]
    names += [f"lbp_r{r}_{k}" for r in _LBP_RADII for k in range(_LBP_P + 2)]
    names += ["grad_mean", "grad_std", "grad_p50", "grad_p90", "grad_p99", "grad_max"]
    names += [f"grad_orient_{i}" for i in range(_ORIENT_BINS)]
    names += ["laplacian_var", "edge_density"]
    return names


def _batched_hist(q: np.ndarray, nbins: int) -> np.ndarray:
    """q: (B, N) integer bins in [0, nbins) -> (B, nbins) fractions."""
    b = q.shape[0]
    idx = q + (np.arange(b)[:, None] * nbins)
    counts = np.bincount(idx.ravel(), minlength=b * nbins).reshape(b, nbins).astype(np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def _slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _first_order(x: np.ndarray, hist_bins: int) -> np.ndarray:
    """x: (B, N) in [0, 1]."""
    mean = x.mean(axis=1, dtype=np.float64)
    std = x.std(axis=1, dtype=np.float64)
    xs = np.sort(x, axis=1)
    pct = _sorted_percentiles(xs, _PCTS)  # (B, 9)
    iqr = pct[:, _PCTS.index(75)] - pct[:, _PCTS.index(25)]
    centred = x - mean[:, None].astype(x.dtype)
    mad = np.abs(centred).mean(axis=1)
    rms = np.sqrt((x**2).mean(axis=1))
    safe = np.where(std > 1e-8, std, 1.0)
    skew = np.where(std > 1e-8, (centred**3).mean(axis=1) / safe**3, 0.0)
    kurt = np.where(std > 1e-8, (centred**4).mean(axis=1) / safe**4 - 3.0, 0.0)
    h64 = _batched_hist(np.minimum((x * 64).astype(np.int64), 63), 64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(h64 > 0, h64 * np.log2(h64), 0.0).sum(axis=1) / 6.0
    unif = (h64**2).sum(axis=1)
    hist = _batched_hist(np.minimum((x * hist_bins).astype(np.int64), hist_bins - 1), hist_bins)
    cols = [mean, std, xs[:, 0], xs[:, -1]]
    return np.column_stack([*cols, pct, iqr, mad, rms, _slog(skew), _slog(kurt), ent, unif, hist])


def _layout(g: np.ndarray, grid: int, log_aspect: np.ndarray) -> np.ndarray:
    b, s, _ = g.shape
    cells = g.reshape(b, grid, s // grid, grid, s // grid)
    gmean = cells.mean(axis=(2, 4)).reshape(b, -1)
    gstd = cells.std(axis=(2, 4)).reshape(b, -1)
    coords = (np.arange(s, dtype=np.float64) + 0.5) / s
    tot = g.sum(axis=(1, 2))
    safe = np.where(tot > 0, tot, 1.0)
    cy = np.where(tot > 0, (g.sum(axis=2) * coords).sum(axis=1) / safe, 0.5)
    cx = np.where(tot > 0, (g.sum(axis=1) * coords).sum(axis=1) / safe, 0.5)
    bright = (g > 0.5).mean(axis=(1, 2))
    dark = (g < 0.1).mean(axis=(1, 2))
    return np.column_stack([gmean, gstd, cy, cx, bright, dark, log_aspect])


def _glcm(q: np.ndarray, levels: int, distances: tuple[int, ...]) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence features. q: (B, S, S) ints in [0, levels)."""
    b, s, _ = q.shape
    i, j = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    i = i.astype(np.float64)
    j = j.astype(np.float64)
    diff2 = (i - j) ** 2
    feats: dict[str, list[np.ndarray]] = {p: [] for p in _GLCM_PROPS}
    boff = (np.arange(b) * levels * levels)[:, None, None]
    for d in distances:
        for angle in _GLCM_ANGLES:
            dy, dx = {0: (0, d), 45: (-d, d), 90: (-d, 0), 135: (-d, -d)}[angle]
            r0, r1 = max(0, -dy), s - max(0, dy)
            c0, c1 = max(0, -dx), s - max(0, dx)
            a = q[:, r0:r1, c0:c1]
            n = q[:, r0 + dy : r1 + dy, c0 + dx : c1 + dx]
            idx = (a * levels + n + boff).ravel()
            cnt = (
                np.bincount(idx, minlength=b * levels * levels)
                .reshape(b, levels, levels)
                .astype(np.float64)
            )
            cnt = cnt + cnt.transpose(0, 2, 1)
            p = cnt / np.maximum(cnt.sum(axis=(1, 2), keepdims=True), 1)
            feats["contrast"].append((p * diff2).sum(axis=(1, 2)) / (levels - 1) ** 2)
            feats["dissimilarity"].append((p * np.sqrt(diff2)).sum(axis=(1, 2)) / (levels - 1))
            feats["homogeneity"].append((p / (1.0 + diff2)).sum(axis=(1, 2)))
            feats["energy"].append(np.sqrt((p**2).sum(axis=(1, 2))))
            mi = (p * i).sum(axis=(1, 2))
            mj = (p * j).sum(axis=(1, 2))
            si = np.sqrt((p * (i - mi[:, None, None]) ** 2).sum(axis=(1, 2)))
            sj = np.sqrt((p * (j - mj[:, None, None]) ** 2).sum(axis=(1, 2)))
            cov = (p * (i - mi[:, None, None]) * (j - mj[:, None, None])).sum(axis=(1, 2))
            ok = (si > 1e-12) & (sj > 1e-12)
            # a constant image is perfectly correlated with itself (skimage's convention)
            feats["correlation"].append(np.where(ok, cov / np.where(ok, si * sj, 1.0), 1.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=(1, 2))
            feats["entropy"].append(ent / math.log2(levels * levels))
    return np.column_stack([np.column_stack(feats[p]) for p in _GLCM_PROPS])


def _riu2_lut(p: int = _LBP_P) -> np.ndarray:
    """Map each p-bit pattern to its rotation-invariant uniform code: the number of set bits when
    the circular pattern has at most 2 transitions, else p + 1."""
    lut = np.empty(2**p, dtype=np.int64)
    for code in range(2**p):
        bits = [(code >> k) & 1 for k in range(p)]
        transitions = sum(bits[k] != bits[k - 1] for k in range(p))
        lut[code] = sum(bits) if transitions <= 2 else p + 1
    return lut


_RIU2 = _riu2_lut()


def _lbp_riu2(g: np.ndarray, radius: int) -> np.ndarray:
    """Rotation-invariant uniform LBP (Ojala et al. 2002), 8 neighbours on the square ring at
    Chebyshev distance ``radius`` (integer offsets, no interpolation). Returns (B, 10) fractions."""
    b, s, _ = g.shape
    r = radius
    c = g[:, r : s - r, r : s - r]
    offsets = [(0, r), (-r, r), (-r, 0), (-r, -r), (0, -r), (r, -r), (r, 0), (r, r)]
    code = np.zeros(c.shape, dtype=np.uint8)
    for k, (dy, dx) in enumerate(offsets):
        code |= (g[:, r + dy : s - r + dy, r + dx : s - r + dx] >= c).astype(np.uint8) << np.uint8(
            k
        )
    return _batched_hist(_RIU2[code].reshape(b, -1), _LBP_P + 2)


def _sorted_percentiles(xs: np.ndarray, pcts: tuple[float, ...]) -> np.ndarray:
    """Percentiles (numpy's default linear method) of rows already sorted: (B, N) -> (B, len(pcts))."""
    n = xs.shape[1]
    pos = np.asarray(pcts, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    return xs[:, lo] * (1.0 - frac) + xs[:, hi] * frac


def _orientation_bin8(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """floor(theta / 22.5 deg) for the unsigned gradient orientation theta in [0, 180), from the
    doubled-angle vector (gx^2 - gy^2, 2 gx gy) by sign/magnitude tests (no arctan2)."""
    c = gx * gx - gy * gy
    sn = 2.0 * gx * gy
    upper = np.where(c >= 0, np.where(sn < c, 0, 1), np.where(sn > -c, 2, 3))
    lower = np.where(c < 0, np.where(-sn < -c, 4, 5), np.where(-sn > c, 6, 7))
    return np.where(sn >= 0, upper, lower).astype(np.int64)


def _gradients(g: np.ndarray) -> np.ndarray:
    gx = (g[:, :-2, 2:] + 2 * g[:, 1:-1, 2:] + g[:, 2:, 2:]) - (
        g[:, :-2, :-2] + 2 * g[:, 1:-1, :-2] + g[:, 2:, :-2]
    )
    gy = (g[:, 2:, :-2] + 2 * g[:, 2:, 1:-1] + g[:, 2:, 2:]) - (
        g[:, :-2, :-2] + 2 * g[:, :-2, 1:-1] + g[:, :-2, 2:]
    )
    gx, gy = gx / 8.0, gy / 8.0  # Sobel normalised so a unit step gives magnitude ~0.5
    b = g.shape[0]
    mag = np.sqrt(gx * gx + gy * gy).reshape(b, -1)
    ms = np.sort(mag, axis=1)
    pct = _sorted_percentiles(ms, (50, 90, 99))
    obin = _orientation_bin8(gx, gy).reshape(b, -1)
    idx = obin + (np.arange(b)[:, None] * _ORIENT_BINS)
    w = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=b * _ORIENT_BINS).reshape(
        b, _ORIENT_BINS
    )
    tot = w.sum(axis=1, keepdims=True)
    orient = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), 1.0 / _ORIENT_BINS)
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
    lap_var = lap.reshape(b, -1).var(axis=1)
    edge = (mag > 0.05).mean(axis=1)
    return np.column_stack(
        [mag.mean(axis=1), mag.std(axis=1), pct, ms[:, -1], orient, lap_var, edge]
    )


def radiomics_features(
    gray: np.ndarray,
    log_aspect: np.ndarray,
    levels: int = 32,
    glcm_size: int = 64,
    distances: tuple[int, ...] = (1, 2, 4),
    grid: int = 4,
    hist_bins: int = 16,
) -> np.ndarray:
    """Features of a batch of square grayscale images in [0, 1]: (B, S, S) -> (B, F) float32.

    First-order intensity statistics, a coarse brightness layout (grid means/stds, intensity
    centroid), GLCM texture on a ``glcm_size`` image quantised to ``levels`` fixed-range grey
    levels (so absolute intensity matters, as for CT in HU), LBP histograms and gradient
    statistics. Every feature is scaled to O(1) (GLCM contrast / (L-1)^2, entropies / their
    maximum, skewness and kurtosis by signed log1p). Names: :func:`radiomics_feature_names`.
    """
    g = np.asarray(gray, dtype=np.float32)
    b, s, _ = g.shape
    x = g.reshape(b, -1)
    parts = [_first_order(x, hist_bins), _layout(g, grid, np.asarray(log_aspect, np.float64))]
    if s != glcm_size:
        f = s // glcm_size
        small = (
            g.reshape(b, glcm_size, f, glcm_size, f).mean(axis=(2, 4))
            if f * glcm_size == s
            else None
        )
        if small is None:
            small = np.stack([resize_float(im, (glcm_size, glcm_size)) for im in g])
    else:
        small = g
    q = np.minimum((small * levels).astype(np.int64), levels - 1)
    parts.append(_glcm(q, levels, distances))
    parts += [_lbp_riu2(g, r) for r in _LBP_RADII]
    parts.append(_gradients(g))
    out = np.column_stack(parts).astype(np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class RadiomicsInput(NamedTuple):
    gray: np.ndarray  # (S, S) float32 in [0, 1]
    log_aspect: float  # log(H / W) of the image before resizing


TEXTURE_LABEL = "GLCM/LBP texture (not IBSI)"


@register_expert("texture-glcm-lbp")
class TextureGlcmLbpExpert(ImageExpert):
    """Hand-crafted intensity + GLCM/LBP texture features (fixed dim, deterministic, no fit);
    labelled "GLCM/LBP texture (not IBSI)": not IBSI-compliant radiomics.

    Every image is converted to grayscale (BT.601) and bicubic-resized to ``image_size``
    (default 128) square; GLCM features use a ``glcm_size`` (64) block-mean downsample with
    ``levels`` (32) grey levels at ``distances`` (1, 2, 4) and angles 0/45/90/135 degrees.
    """

    packages = ("numpy", "pillow")
    label = TEXTURE_LABEL
    # The preprocessing hash keeps the expert's former registry name: the computation did not
    # change with the rename, so caches written as ``image-radiomics`` stay valid.
    hash_type = "image-radiomics"

    def __init__(
        self,
        image_size: int = 128,
        glcm_size: int = 64,
        levels: int = 32,
        distances: tuple[int, ...] | list[int] = (1, 2, 4),
        grid: int = 4,
        high_bit: str = "range",
        batch_size: int = 64,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        if high_bit not in HIGH_BIT_MODES:
            raise ValueError(f"texture-glcm-lbp: high_bit must be one of {HIGH_BIT_MODES}")
        if image_size % grid or image_size < glcm_size or image_size < 16:
            raise ValueError(
                f"texture-glcm-lbp: image_size {image_size} must be >= glcm_size and divisible by grid"
            )
        super().__init__(
            batch_size=batch_size,
            device=device,
            seed=seed,
            image_size=int(image_size),
            glcm_size=int(glcm_size),
            levels=int(levels),
            distances=[int(d) for d in distances],
            grid=int(grid),
            high_bit=high_bit,
        )
        self._names = radiomics_feature_names(
            tuple(self.params["distances"]), grid=self.params["grid"]
        )

    @property
    def dim(self) -> int:
        return len(self._names)

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def pooling(self) -> str:
        return "global"

    @property
    def model_id(self) -> str:
        return "offline:texture-glcm-lbp"  # the alias too: one computation, one provenance

    def preprocess_config(self) -> dict[str, Any]:
        return {**super().preprocess_config(), "type": self.hash_type}

    def prepare_array(self, arr: np.ndarray) -> RadiomicsInput:
        arr = as_unit_array(arr)
        h, w = arr.shape[:2]
        s = self.input_size
        gray = resize_float(to_gray(arr), (s, s))
        return RadiomicsInput(gray.astype(np.float32), float(math.log(h / w)))

    def embed(self, batch: list[RadiomicsInput]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        p = self.params
        gray = np.stack([item.gray for item in batch])
        aspect = np.asarray([item.log_aspect for item in batch])
        return radiomics_features(
            gray,
            aspect,
            levels=p["levels"],
            glcm_size=p["glcm_size"],
            distances=tuple(p["distances"]),
            grid=p["grid"],
        )


@register_expert("image-radiomics")
class RadiomicsExpert(TextureGlcmLbpExpert):
    """Deprecated alias of :class:`TextureGlcmLbpExpert` (``texture-glcm-lbp``): the same
    features, cache hash and provenance. The name overstated what it computes (this is not
    IBSI radiomics); use ``type: texture-glcm-lbp``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "expert type 'image-radiomics' is deprecated: it is the GLCM/LBP texture expert "
            "'texture-glcm-lbp' (not IBSI radiomics); use `type: texture-glcm-lbp`",
            DeprecationWarning,
            stacklevel=2,
        )
        log.warning(
            "expert type 'image-radiomics' is deprecated; use 'texture-glcm-lbp' (same features)"
        )
        super().__init__(*args, **kwargs)
