"""Synthetic ICU time series: the first 48 h, hourly, 46 clinical variables, one Parquet per stay.

Each variable has a population mean and spread. Evidence for the physiological concepts moves
its level (e.g. cardiac -> heart rate up, blood pressure down, lactate up), its trend over the
48 h (the ``trajectory`` concept: worsening pressure, rising lactate and creatinine) and its
variability (infection -> temperature spikes, cardiac -> heart-rate variability). Vitals are
charted (almost) hourly, GCS every few hours, labs every 6-24 h (more often when sicker),
blood gases mostly for respiratory failure; hours with no measurement are absent rows, and
the series stops at discharge or death. Poor-quality stays are sparse and carry artefacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HOURS = 48
CONCEPTS = ("resp", "cardiac", "renal", "infection", "trajectory")

# name: (mean, sd, lo, hi, kind, {concept: level loading}, {concept: slope loading}, {concept: variability loading})
# kind: v = vital (hourly), g = GCS (every 2-4 h), l = lab (every 6-24 h), b = blood gas, u = urine (hourly-ish)
VARIABLES: dict[str, tuple] = {
    "heart_rate": (
        84,
        14,
        30,
        200,
        "v",
        {"cardiac": 0.7, "infection": 0.4, "resp": 0.2},
        {"trajectory": 0.6},
        {"cardiac": 0.5},
    ),
    "sbp": (
        122,
        18,
        50,
        230,
        "v",
        {"cardiac": -0.8, "infection": -0.2},
        {"trajectory": -0.8},
        {"cardiac": 0.3},
    ),
    "dbp": (66, 11, 25, 130, "v", {"cardiac": -0.6}, {"trajectory": -0.6}, {}),
    "mbp": (83, 12, 35, 160, "v", {"cardiac": -0.8, "infection": -0.2}, {"trajectory": -0.8}, {}),
    "resp_rate": (
        18,
        4,
        6,
        50,
        "v",
        {"resp": 0.8, "infection": 0.2},
        {"trajectory": 0.4},
        {"resp": 0.4},
    ),
    "spo2": (96.5, 2.0, 70, 100, "v", {"resp": -0.8}, {"trajectory": -0.5}, {"resp": 0.5}),
    "temperature": (37.0, 0.5, 34, 41, "v", {"infection": 0.9}, {}, {"infection": 0.9}),
    "fio2": (0.35, 0.12, 0.21, 1.0, "v", {"resp": 0.9}, {"trajectory": 0.4}, {}),
    "urine_output": (
        80,
        35,
        0,
        400,
        "u",
        {"renal": -0.8, "cardiac": -0.3},
        {"trajectory": -0.4},
        {},
    ),
    "gcs_eye": (3.5, 0.7, 1, 4, "g", {"infection": -0.2, "resp": -0.3}, {"trajectory": -0.3}, {}),
    "gcs_motor": (5.5, 0.9, 1, 6, "g", {"infection": -0.2, "resp": -0.3}, {"trajectory": -0.3}, {}),
    "gcs_verbal": (
        4.2,
        1.1,
        1,
        5,
        "g",
        {"infection": -0.2, "resp": -0.4},
        {"trajectory": -0.3},
        {},
    ),
    "gcs_total": (
        13.2,
        2.4,
        3,
        15,
        "g",
        {"infection": -0.2, "resp": -0.4},
        {"trajectory": -0.3},
        {},
    ),
    "ph": (7.39, 0.05, 6.8, 7.7, "b", {"resp": -0.5, "cardiac": -0.4}, {"trajectory": -0.4}, {}),
    "pao2": (95, 25, 30, 500, "b", {"resp": -0.7}, {"trajectory": -0.3}, {"resp": 0.3}),
    "paco2": (41, 7, 15, 120, "b", {"resp": 0.6}, {}, {}),
    "base_excess": (
        0,
        3.5,
        -25,
        20,
        "b",
        {"cardiac": -0.6, "renal": -0.3},
        {"trajectory": -0.4},
        {},
    ),
    "lactate": (
        1.6,
        0.9,
        0.3,
        20,
        "b",
        {"cardiac": 0.8, "infection": 0.4},
        {"trajectory": 0.9},
        {},
    ),
    "glucose": (135, 40, 40, 600, "l", {"infection": 0.3}, {}, {"infection": 0.3}),
    "creatinine": (1.1, 0.5, 0.2, 12, "l", {"renal": 0.9}, {"trajectory": 0.5, "renal": 0.4}, {}),
    "bun": (20, 10, 2, 150, "l", {"renal": 0.8}, {"renal": 0.3}, {}),
    "sodium": (139, 4, 115, 165, "l", {"renal": 0.2}, {}, {}),
    "potassium": (4.1, 0.5, 2.0, 7.5, "l", {"renal": 0.6}, {"renal": 0.2}, {}),
    "chloride": (104, 5, 80, 130, "l", {}, {}, {}),
    "bicarbonate": (
        24,
        3.5,
        5,
        45,
        "l",
        {"renal": -0.5, "cardiac": -0.4},
        {"trajectory": -0.4},
        {},
    ),
    "anion_gap": (13, 3, 3, 35, "l", {"renal": 0.4, "cardiac": 0.4}, {"trajectory": 0.3}, {}),
    "calcium": (8.7, 0.6, 5, 13, "l", {"renal": -0.2}, {}, {}),
    "magnesium": (2.0, 0.3, 0.8, 4, "l", {"renal": 0.3}, {}, {}),
    "phosphate": (3.5, 1.0, 0.8, 12, "l", {"renal": 0.6}, {}, {}),
    "albumin": (3.3, 0.6, 1.0, 5.5, "l", {"infection": -0.4}, {}, {}),
    "bilirubin_total": (0.9, 0.8, 0.1, 30, "l", {"infection": 0.3, "cardiac": 0.2}, {}, {}),
    "alt": (35, 30, 5, 3000, "l", {"cardiac": 0.4}, {"trajectory": 0.2}, {}),
    "ast": (40, 35, 5, 4000, "l", {"cardiac": 0.5}, {"trajectory": 0.3}, {}),
    "alp": (90, 40, 20, 800, "l", {}, {}, {}),
    "hemoglobin": (
        10.8,
        1.9,
        4,
        18,
        "l",
        {"cardiac": -0.2, "renal": -0.3},
        {"trajectory": -0.2},
        {},
    ),
    "hematocrit": (
        32.5,
        5.5,
        12,
        55,
        "l",
        {"cardiac": -0.2, "renal": -0.3},
        {"trajectory": -0.2},
        {},
    ),
    "wbc": (10.5, 4.5, 0.5, 60, "l", {"infection": 0.9}, {"trajectory": 0.3}, {}),
    "platelets": (220, 80, 5, 900, "l", {"infection": -0.5}, {"trajectory": -0.3}, {}),
    "inr": (1.3, 0.4, 0.8, 10, "l", {"infection": 0.3, "cardiac": 0.3}, {}, {}),
    "pt": (14.5, 3.5, 9, 100, "l", {"infection": 0.3, "cardiac": 0.3}, {}, {}),
    "ptt": (33, 9, 18, 150, "l", {"infection": 0.2}, {}, {}),
    "fibrinogen": (350, 120, 50, 1000, "l", {"infection": 0.4}, {}, {}),
    "troponin_t": (0.05, 0.1, 0.0, 10, "l", {"cardiac": 0.8}, {"cardiac": 0.3}, {}),
    "ntprobnp": (1500, 1500, 10, 35000, "l", {"cardiac": 0.7, "renal": 0.3}, {}, {}),
    "crp": (60, 50, 0.5, 400, "l", {"infection": 0.9}, {"infection": 0.3}, {}),
    "weight": (82, 18, 35, 200, "s", {}, {}, {}),
}
assert len(VARIABLES) == 46


NAMES = tuple(VARIABLES)
_P = {
    k: np.array([VARIABLES[v][i] for v in NAMES], dtype=float)
    for i, k in enumerate(("mean", "sd", "lo", "hi"))
}
_KIND = np.array([VARIABLES[v][4] for v in NAMES])
_LOAD = {
    part: np.array([[VARIABLES[v][j].get(c, 0.0) for c in CONCEPTS] for v in NAMES])
    for j, part in ((5, "level"), (6, "slope"), (7, "vol"))
}
_TEMP = NAMES.index("temperature")
_GCS = [NAMES.index(f"gcs_{p}") for p in ("eye", "motor", "verbal", "total")]


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float = 0.8) -> np.ndarray:
    """Unit-variance AR(1) noise along axis 0 (stationary start)."""
    eps = rng.standard_normal(shape) * np.sqrt(1 - phi * phi)
    out = np.empty(shape)
    out[0] = eps[0] / np.sqrt(1 - phi * phi)
    for t in range(1, shape[0]):  # 48 steps, vectorised over variables
        out[t] = phi * out[t - 1] + eps[t]
    return out


def _observed(
    kind: str, n: int, sick: float, resp: float, poor: bool, rng: np.random.Generator
) -> np.ndarray:
    if kind == "v":
        return rng.random(n) < (0.93 if not poor else 0.35)
    if kind == "u":
        return rng.random(n) < (0.8 if not poor else 0.3)
    out = np.zeros(n, bool)
    if kind == "s":
        out[0] = rng.random() < 0.9
        return out
    if kind == "g":
        every = int(rng.integers(2, 5))
    else:  # labs: sicker -> more frequent; blood gases mostly in respiratory failure
        every = int(np.clip(rng.normal(12 - 4 * sick, 3), 4, 24))
        if kind == "b":
            every = int(np.clip(every * (2.0 if resp < 0.5 else 0.7), 3, 48))
        if poor:
            every *= 2
    out[int(rng.integers(0, every)) :: every] = True
    return out & (rng.random(n) < 0.9)


def simulate_stay(
    evidence: dict[str, float],
    hours: int,
    rng: np.random.Generator,
    quality: float = 1.0,
    shift: float = 0.0,
) -> pd.DataFrame:
    """One stay's first ``min(hours, 48)`` hours; rows with no measurement are dropped."""
    n = int(np.clip(hours, 1, HOURS))
    nv = len(NAMES)
    e = np.array([evidence.get(c, 0.0) for c in CONCEPTS])
    frac = (np.arange(n) / (HOURS - 1))[:, None]
    level = _LOAD["level"] @ e + 0.3 * rng.standard_normal(nv)
    slope = 1.6 * (_LOAD["slope"] @ e)
    vol = 0.35 * np.exp(0.5 * (_LOAD["vol"] @ e))
    z = level + slope * (frac - 0.5) + vol * _ar1(rng, (n, nv))
    spikes = rng.random(n) < 0.04 * np.exp(0.8 * evidence.get("infection", 0.0))  # fever spikes
    z[:, _TEMP] += spikes * rng.uniform(1.0, 3.0, n)
    x = _P["mean"] + _P["sd"] * z
    if shift:  # recalibrated devices / different lab reference ranges
        x = x * (1.0 + 0.04 * shift) + 0.1 * _P["sd"] * shift
    static = _KIND == "s"
    x[:, static] = x[0, static]
    x = np.clip(x, _P["lo"], _P["hi"])
    x[:, _GCS] = np.round(x[:, _GCS])
    x[:, _GCS[3]] = x[:, _GCS[:3]].sum(1)
    poor = quality < 0.5
    if poor:  # artefacts on monitored signals: probe-off drops and spikes
        dense = np.isin(_KIND, ["v", "u"])
        art = (rng.random((n, nv)) < 0.08) & dense
        x = np.where(art, x * rng.uniform(0.5, 1.6, (n, nv)), x)
    sick = float(np.mean(np.clip(e[:2].tolist() + [e[3]], 0, None)))
    mask = np.stack([_observed(k, n, sick, float(e[0]), poor, rng) for k in _KIND], axis=1)
    mask[:, _GCS] = mask[:, [_GCS[0]]]  # GCS components are charted together
    vals = np.where(mask, np.round(x, 3), np.nan).astype(np.float32)
    keep = mask.any(1)
    df = pd.DataFrame(vals[keep], columns=list(NAMES))
    df.insert(0, "hour", np.arange(n, dtype=np.int16)[keep])
    return df


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    """Parquet without pandas index metadata; deterministic for equal frames."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, compression="zstd")
