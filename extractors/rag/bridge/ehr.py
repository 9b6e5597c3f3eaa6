"""The ``ehr-serialize`` bridge (timeseries modalities): ``name: value unit; …`` over a fixed
field order (the 46 variables of ``cohorts.adapters.ehr_variables``, then the file's other
columns, sorted), each variable aggregated over a time window."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cohorts.adapters.ehr_variables import VARIABLES
from extractors.base import SampleError
from extractors.rag.bridge.base import Bridge, BridgeError, BridgeInputs, BridgeRows
from extractors.rag.bridge.registry import register_bridge
from extractors.readers import resolve_path
from extractors.readers.timeseries import read_series

AGGREGATIONS = ("last", "mean", "min", "max")


def ehr_fields() -> list[tuple[str, str]]:
    """(name, unit) of the 46 EHR variables in their fixed order (``ehr_variables.VARIABLES``)."""
    return [(v.name, v.unit) for v in VARIABLES]


def ehr_percent_from_fraction() -> set[str]:
    """Variables recorded in % whose convention allows a fraction (``fraction_to_percent``: FiO2)."""
    return {v.name for v in VARIABLES if v.fraction_to_percent}


def fractions_to_percent(values: np.ndarray) -> np.ndarray:
    """Values <= 1 read as fractions and written in % (as the MIMIC adapters convert FiO2)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values <= 1.0), values * 100.0, values)


def format_value(value: float, precision: int = 4) -> str:
    """``precision`` significant digits, positional (no exponent), trailing zeros trimmed."""
    if value == 0:
        return "0"
    return np.format_float_positional(
        float(value), precision=precision, unique=False, fractional=False, trim="-"
    )


def aggregate(values: np.ndarray, how: str) -> float | None:
    """One number from a variable's values in time order (NaN = not observed); None if none."""
    obs = values[np.isfinite(values)]
    if obs.size == 0:
        return None
    if how == "last":
        return float(obs[-1])
    if how == "mean":
        return float(obs.mean())
    if how == "min":
        return float(obs.min())
    if how == "max":
        return float(obs.max())
    raise BridgeError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")


def serialize_ehr(
    times: np.ndarray,
    values: Mapping[str, np.ndarray],
    fields: Sequence[tuple[str, str]] | None = None,
    aggregation: str = "last",
    per_variable: Mapping[str, str] | None = None,
    window_hours: Sequence[float] | None = None,
    precision: int = 4,
    percent_from_fraction: Collection[str] | None = None,
) -> str:
    """``name: value unit; …`` in the fixed field order; unobserved variables omitted.

    ``percent_from_fraction`` (default: the table's ``fraction_to_percent`` variables, FiO2):
    observations <= 1 of these variables are fractions and are converted to % before
    aggregating, so the text never says ``fio2: 0.35 %``.
    """
    fields = list(ehr_fields() if fields is None else fields)
    to_percent = set(
        ehr_percent_from_fraction() if percent_from_fraction is None else percent_from_fraction
    )
    per_variable = dict(per_variable or {})
    for how in [aggregation, *per_variable.values()]:
        if how not in AGGREGATIONS:
            raise BridgeError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")
    known = {name for name, _ in fields}
    order = list(fields) + [(name, "") for name in sorted(values) if name not in known]
    times = np.asarray(times, dtype=np.float64)
    keep = np.ones(times.shape, dtype=bool)
    if window_hours is not None:
        lo, hi = float(window_hours[0]), float(window_hours[1])
        keep = (times >= lo) & (times < hi)
    parts = []
    for name, unit in order:
        if name not in values:
            continue
        series = np.asarray(values[name], dtype=np.float64)[keep]
        if name in to_percent:
            series = fractions_to_percent(series)
        v = aggregate(series, per_variable.get(name, aggregation))
        if v is None:
            continue
        parts.append(f"{name}: {format_value(v, precision)}" + (f" {unit}" if unit else ""))
    if not parts:
        raise SampleError("no observed EHR value in the window")
    return "; ".join(parts)


def serialize_ehr_file(path: str | Path, cfg: Mapping[str, Any]) -> str:
    series = read_series(path, time_column=cfg.get("time_column", "hour"))
    return serialize_ehr(
        series.times,
        series.values,
        aggregation=cfg.get("aggregation", "last"),
        per_variable=cfg.get("per_variable"),
        window_hours=cfg.get("window_hours"),
        precision=int(cfg.get("precision", 4)),
    )


@register_bridge("ehr-serialize")
class EhrSerializeBridge(Bridge):
    """Options (the bridge's config): ``aggregation`` (last / mean / min / max),
    ``per_variable`` (name -> aggregation), ``window_hours`` ([lo, hi)), ``precision``
    (significant digits) and ``time_column`` (default ``hour``)."""

    input_kind = "timeseries"

    def fill(self, inputs: BridgeInputs, rows: BridgeRows) -> dict[str, Any]:
        rows.fill_each(
            inputs,
            lambda v: serialize_ehr_file(resolve_path(inputs.root, v), self.cfg),
            self.name,
        )
        return {"fields": [n for n, _ in ehr_fields()]}
