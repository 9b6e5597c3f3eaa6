"""Synthetic chest radiographs: frontal (PA) and lateral views, 8-bit grayscale PNG.

Anatomy (body, lung fields, heart, mediastinum, spine, ribs, clavicles, diaphragm) is drawn
as soft-edged shapes in attenuation units (bright = dense), then findings are added as
visible structures. "Global" findings change intensity or shape over large areas
(cardiomegaly, effusion, emphysema, edema, consolidation, scoliosis); "local" ones add
fine-grained texture or small objects (nodules, calcified granulomas, reticular fibrosis,
plate atelectasis, patchy opacity, pneumothorax line, devices, hiatal hernia). Quality and
cohort shift act on exposure, contrast, blur and noise.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from cohorts.demo.noise import smooth_noise

SIZE = 256
FINDINGS = (
    "cardiomegaly",
    "opacity",
    "atelectasis",
    "effusion",
    "nodule",
    "granuloma",
    "emphysema",
    "edema",
    "consolidation",
    "pneumothorax",
    "fibrosis",
    "scoliosis",
    "hernia",
    "device",
)


@functools.lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    ax = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    return yy, xx


def _sig(x: np.ndarray, soft: float) -> np.ndarray:
    # a clipped linear ramp: as smooth as needed at 256 px and far cheaper than tanh
    return np.clip(0.5 + x * (0.25 / soft), 0.0, 1.0)


def _ellipse(cx: float, cy: float, rx: float, ry: float, soft: float = 0.03) -> np.ndarray:
    yy, xx = _grid()
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return _sig(1.0 - r, soft / max(min(rx, ry), 1e-3))


def _blob(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = _grid()
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))


def _segment(p0: tuple[float, float], p1: tuple[float, float], width: float) -> np.ndarray:
    """Soft line segment from p0 to p1 (x, y) with the given half-width."""
    yy, xx = _grid()
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    d = np.sqrt((xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2)
    return _sig(width - d, width * 0.35)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Unit-scale smooth noise with about ``cells`` features across the image."""
    return smooth_noise(rng, (cells, cells), (SIZE, SIZE))


def _fine_texture(rng: np.random.Generator, sigma: float, horizontal: bool = False) -> np.ndarray:
    """High-frequency net-like texture in [0, 1] (reticular / Kerley-line patterns)."""
    white = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    sig = (sigma * 0.4, sigma * 2.5) if horizontal else sigma
    band = ndi.gaussian_filter(white, sig)
    band /= band.std() + 1e-6
    return np.exp(-(band**2) * 2.0)  # thin ridges along zero crossings


def _points_in(mask: np.ndarray, rng: np.random.Generator, k: int) -> list[tuple[float, float]]:
    """k random (x, y) points where ``mask`` > 0.5."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0 or k <= 0:
        return []
    pick = rng.integers(0, len(ys), k)
    scale = 2.0 / (SIZE - 1)
    return [(xs[i] * scale - 1.0, ys[i] * scale - 1.0) for i in pick]


def _blend(img: np.ndarray, value: float | np.ndarray, mask: np.ndarray) -> np.ndarray:
    return img * (1.0 - mask) + value * mask


def render_cxr(
    view: str,
    sev: dict[str, float],
    rng: np.random.Generator,
    quality: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """Render one radiograph; ``sev`` maps finding -> severity (0 = absent, ~1 = clear, 2 = marked).

    ``sev`` may also carry ``cardiac_size`` and ``inflation``: continuous anatomy offsets (in
    units of the population spread) so global shape varies smoothly with the evidence.
    """
    if view not in ("frontal", "lateral"):
        raise ValueError(f"unknown view {view!r}")
    s = {f: float(max(sev.get(f, 0.0), 0.0)) for f in FINDINGS}
    heart_z = float(sev.get("cardiac_size", 0.0))
    infl_z = float(sev.get("inflation", 0.0))
    yy, xx = _grid()
    dx, dy = rng.normal(0, 0.012), rng.normal(0, 0.012)
    body_w = rng.uniform(0.92, 1.0)
    img = np.full((SIZE, SIZE), 0.03, np.float32)
    frontal = view == "frontal"

    # --- anatomy ---------------------------------------------------------------------------
    img = _blend(
        img, 0.47, _ellipse(dx, 0.1 + dy, (0.95 if frontal else 0.88) * body_w, 1.15, 0.04)
    )
    inflation = 1.0 + 0.05 * infl_z + 0.10 * s["emphysema"]
    dome_drop = 0.10 * s["emphysema"]
    scol = 0.14 * min(s["scoliosis"], 2.0) * (1 if rng.random() < 0.5 else -1)
    spine_x = dx + scol * np.sin(np.pi * (yy + 0.9) / 1.6) if frontal else None
    if frontal:
        lungs = []
        for side in (-1, 1):
            cx = dx + side * 0.40 * body_w
            rx, ry = 0.29 * body_w * inflation, 0.56 * inflation
            cy = dy - 0.06
            dome = (
                cy
                + ry * 0.78
                + dome_drop
                - 0.12 * np.cos(np.clip((xx - cx) / rx, -1, 1) * np.pi / 2)
            )
            mask = _ellipse(cx, cy, rx, ry) * _sig(dome - yy, 0.015)
            lungs.append((cx, cy, rx, ry, mask))
        lung = np.clip(lungs[0][4] + lungs[1][4], 0, 1)
        hila = [(dx - 0.17, dy - 0.05), (dx + 0.17, dy - 0.05)]
    else:
        cx, cy = dx + 0.02, dy - 0.05
        rx, ry = 0.55 * body_w * inflation, 0.60 * inflation
        dome = cy + ry * 0.8 + dome_drop - 0.1 * np.cos(np.clip((xx - cx) / rx, -1, 1) * np.pi / 2)
        mask = _ellipse(cx, cy, rx, ry) * _sig(dome - yy, 0.015)
        lungs = [(cx, cy, rx, ry, mask)]
        lung = mask
        hila = [(dx + 0.05, dy - 0.05)]
    lung_val = 0.16 - 0.07 * s["emphysema"]
    img = _blend(img, lung_val, lung)
    hilar = sum(_blob(hx, hy, 0.35) for hx, hy in hila)
    markings = (
        _smooth_noise(rng, 44) * 0.022 * (0.4 + hilar) * (1.0 - 0.35 * min(s["emphysema"], 2.0))
    )
    if s["pneumothorax"] > 0.15:  # collapsed rim without lung markings at one apex
        side = int(rng.integers(0, len(lungs)))
        lcx, lcy, lrx, lry, lmask = lungs[side]
        gap = 0.05 + 0.10 * min(s["pneumothorax"], 2.0)
        inner = _ellipse(
            lcx + (0 if not frontal else (0.3 * gap if lcx < dx else -0.3 * gap)),
            lcy + gap,
            lrx - gap,
            lry - gap,
        )
        rim = lmask * (1.0 - inner) * _sig(lcy - yy + 0.1, 0.05)
        markings = markings * (1 - rim)
        img = img - 0.08 * rim
        edge = np.abs(np.gradient(inner, axis=1)) + np.abs(np.gradient(inner, axis=0))
        img = img + 0.25 * np.clip(edge * 12, 0, 1) * _sig(lcy - yy + 0.1, 0.05)
    img = img + markings * lung

    # ribs (periodic arcs, one expression for all of them) and clavicles
    if frontal:
        ax = np.abs(xx - dx)
        phase = (yy - dy + 0.62 - 0.55 * (ax - 0.45) ** 2) / 0.125
        ribs = _sig(0.2 - np.abs(phase - np.round(phase)), 0.05) * (phase > -0.5) * (phase < 8.5)
        img = img + 0.06 * ribs * _sig(ax - 0.07, 0.02) * _sig(0.86 * body_w - ax, 0.03)
        for side in (-1, 1):
            img = img + 0.16 * _segment(
                (dx + side * 0.1, dy - 0.70), (dx + side * 0.72, dy - 0.84), 0.022
            )
    else:
        img = img + 0.10 * _segment((dx - 0.72, dy - 0.55), (dx - 0.70, dy + 0.30), 0.02)  # sternum
        img = _blend(
            img, 0.2, _segment((dx - 0.02, -1.0), (dx + 0.06, dy - 0.35), 0.035)
        )  # trachea

    # mediastinum, heart, spine
    heart_rx = 0.245 * (1.0 + 0.06 * heart_z + 0.22 * min(s["cardiomegaly"], 2.5))
    if frontal:
        med = _sig(0.11 - np.abs(xx - spine_x * 0.6 - dx * 0.4), 0.02) * _sig(0.35 + dy - yy, 0.03)
        img = _blend(img, 0.55, med * _sig(yy + 0.85, 0.03))
        img = _blend(
            img,
            0.57,
            _ellipse(dx + 0.07 + 0.3 * (heart_rx - 0.245), dy + 0.27, heart_rx, 0.22, 0.02),
        )
        vert = 0.05 + 0.03 * np.cos(yy * 34.0)
        img = img + vert * _sig(0.045 - np.abs(xx - spine_x), 0.008) * (yy > -0.95)
    else:
        img = _blend(
            img,
            0.49,
            _ellipse(dx - 0.25, dy + 0.25, heart_rx * 1.05, 0.26, 0.02) * lung.clip(0.3, 1),
        )
        col = _sig(0.09 - np.abs(xx - (dx + 0.66)), 0.01)
        bodies = 0.62 + 0.06 * np.sign(np.cos(yy * 26.0))
        img = _blend(img, bodies, col * (yy > -0.95))
    # abdomen below the diaphragm and gastric bubble
    below = _sig(yy - (dy + 0.52 + dome_drop), 0.03) * (1.0 - lung)
    img = _blend(img, 0.5, below * _ellipse(dx, 0.1 + dy, 0.93 * body_w, 1.15))
    img = img - 0.2 * _ellipse(dx + (0.35 if frontal else -0.15), dy + 0.62 + dome_drop, 0.08, 0.05)

    # --- findings --------------------------------------------------------------------------
    if s["effusion"] > 0.05:
        side_ids = (
            [int(rng.integers(0, len(lungs)))] if rng.random() < 0.6 else list(range(len(lungs)))
        )
        for i in side_ids:
            lcx, lcy, lrx, lry, lmask = lungs[i]
            height = 0.10 + 0.28 * min(s["effusion"], 2.0)
            lateral = (
                np.clip(np.abs(xx - lcx) / lrx, 0, 1)
                if frontal
                else np.clip((xx - lcx) / lrx, 0, 1)
            )
            level = lcy + lry * 0.85 - height * (0.6 + 0.6 * lateral)
            img = _blend(
                img, 0.46, lmask * _sig(yy - level, 0.03) * min(0.55 + 0.3 * s["effusion"], 1.0)
            )
    if s["consolidation"] > 0.1:
        ((px, py),) = _points_in(lung * (yy > dy - 0.2), rng, 1) or [(dx, dy)]
        patch = _blob(px, py, 0.09 + 0.05 * min(s["consolidation"], 2.0)) * lung
        img = img + 0.24 * min(s["consolidation"], 2.0) * patch * (
            0.85 + 0.15 * _smooth_noise(rng, 40)
        )
    if s["opacity"] > 0.1:  # scattered patchy airspace opacities: raises overall lung density
        k = 2 + int(min(s["opacity"], 2.0) * 3.0)
        for px, py in _points_in(lung, rng, k):
            patch = _blob(px, py, rng.uniform(0.05, 0.1)) * (
                0.6 + 0.4 * np.abs(_smooth_noise(rng, 30))
            )
            img = img + 0.13 * min(s["opacity"], 2.0) * patch * lung
    if s["edema"] > 0.05:
        haze = sum(_blob(hx, hy + 0.05, 0.28) for hx, hy in hila) * lung
        img = img + 0.14 * min(s["edema"], 2.0) * haze
        img = img + 0.05 * min(s["edema"], 2.0) * _fine_texture(
            rng, 1.0, horizontal=True
        ) * lung * _sig(yy - dy, 0.1)
    if s["fibrosis"] > 0.05:
        periph = lung * _sig(yy - dy + 0.2, 0.15)
        img = img + 0.09 * min(s["fibrosis"], 2.0) * _fine_texture(rng, 0.8) * periph
    if s["atelectasis"] > 0.1:
        for px, py in _points_in(lung * (yy > dy + 0.1), rng, 1 + int(s["atelectasis"] > 1.0)):
            ang = rng.uniform(-0.3, 0.3)
            half = 0.09 + 0.06 * min(s["atelectasis"], 2.0)
            p0 = (px - half * np.cos(ang), py - half * np.sin(ang))
            p1 = (px + half * np.cos(ang), py + half * np.sin(ang))
            img = img + 0.22 * min(s["atelectasis"], 1.6) * _segment(p0, p1, 0.018) * lung
    if s["nodule"] > 0.15:
        for px, py in _points_in(lung, rng, 1 + int(min(s["nodule"], 2.0) * 2.5)):
            img = img + 0.3 * _ellipse(px, py, r := rng.uniform(0.03, 0.055), r, 0.01)
    if s["granuloma"] > 0.15:
        for px, py in _points_in(lung, rng, 3 + int(min(s["granuloma"], 2.0) * 6)):
            img = img + 0.5 * _ellipse(px, py, r := rng.uniform(0.009, 0.015), r, 0.004)
    if s["hernia"] > 0.15:
        hx, hy = (dx + 0.0, dy + 0.36) if frontal else (dx + 0.18, dy + 0.32)
        r = 0.07 + 0.04 * min(s["hernia"], 2.0)
        sac = _ellipse(hx, hy, r, r * 0.85, 0.01)
        img = img + 0.10 * sac - 0.22 * sac * (yy < hy - 0.2 * r)
    if s["device"] > 0.2:
        start = (dx - 0.5, dy - 0.95) if frontal else (dx - 0.1, dy - 0.95)
        mid = (dx - 0.18, dy - 0.55) if frontal else (dx - 0.15, dy - 0.5)
        tip = (
            (dx - 0.04 + rng.normal(0, 0.03), dy + 0.02 + 0.08 * min(s["device"], 2.0))
            if frontal
            else (dx - 0.22, dy + 0.05)
        )
        img = img + 0.45 * np.maximum(_segment(start, mid, 0.008), _segment(mid, tip, 0.008))
        if s["device"] > 0.9:  # pacemaker generator and lead
            gen = (dx + 0.55, dy - 0.66) if frontal else (dx - 0.6, dy - 0.6)
            img = img + 0.6 * _ellipse(gen[0], gen[1], 0.07, 0.05, 0.01)
            img = img + 0.45 * _segment(
                gen, (dx + 0.1, dy + 0.3) if frontal else (dx - 0.3, dy + 0.3), 0.007
            )

    # --- acquisition: exposure, contrast, blur, noise ---------------------------------------
    q = float(np.clip(quality, 0.0, 1.0))
    poor = q < 0.5
    gain = rng.uniform(0.96, 1.04) * (1.0 - 0.18 * shift)
    img = np.clip(img, 0, None) * gain + 0.04 * shift
    gamma = rng.uniform(0.95, 1.05) * (1.0 + 0.25 * shift)
    img = np.clip(img, 0, 1.2) ** gamma
    if poor:  # under/over-exposed, washed out, blurred and noisy
        mean = float(img.mean())
        img = mean + (img - mean) * (0.35 + 0.5 * q) + rng.uniform(-0.08, 0.12)
    img = ndi.gaussian_filter(img, 0.6 + (2.2 * (1 - q) if poor else 0.0))
    noise = 0.012 + 0.02 * shift + (0.10 * (1 - q) if poor else 0.0)
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(img / 0.9 * 255.0, 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    """8-bit grayscale PNG; PIL writes no timestamp, so equal arrays give equal bytes."""
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(
        path, format="PNG", compress_level=6
    )
