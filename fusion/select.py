"""Model selection of the fusion hyper-parameters on the validation split (``fusion.select``).

For one (dataset, method) every point of the declared grid (``fusion.select.grid``: lists of
values of :class:`medmix.hparams.FusionHParams` numeric fields, crossed) is trained with the code
of a normal run (:func:`fusion.train.train_seeds`, vectorised over the seeds) on the first
``fusion.select.seeds`` seeds of the config's ``seeds``, on the ``full`` protocol data (no
missingness applied). The point with the best validation metric wins: ``auroc`` (val macro
AUROC, ties broken by the lower val loss) or ``loss`` (the lower val loss, ties broken by the
higher AUROC); a full tie keeps the first point in grid order. The val loss of a seed is its
best-epoch val task loss (the early-stopping criterion); val AUROC is that of the restored best
state.

The test split cannot leak into the choice: before training, the data are cut to their
``train`` and ``val`` rows (:func:`train_val_rows`), so no test (or external) label or
prediction exists in the selection process.

The choice is one JSON file (``results/{dataset}/selection/{method}.json``, written
atomically): the grid, every point's val metrics (per seed and mean), the chosen values, the
seeds and the seconds. Every train job of that (dataset, method), under any protocol, reads it
(``python -m fusion train --selection FILE``; :func:`fusion.train.run_training`).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import torch
import yaml

from fusion.data import FusionData, load_fusion_data_cached
from fusion.registry import resolve_method
from fusion.train import train_seeds
from fusion.train_checks import TrainingError
from medmix.config import SCHEMA_PATH, dataset_paths
from medmix.errors import UserError
from medmix.hparams import FusionHParams
from medmix.io import write_text_atomic
from medmix.methods import LARGE, is_probe, parse_method
from medmix.plan import method_inputs

log = logging.getLogger("medmix.fusion.select")

SELECTION_FORMAT = "medmix-selection/1"
SELECT_METRICS = ("auroc", "loss")
SELECT_KEYS = ("enabled", "grid", "seeds", "metric", "methods")
# FusionHParams fields a grid may vary: the numeric ones that act on training (bootstrap only
# sets the number of test-set CI replicates, which selection never computes)
# ... and the model choices with a fixed set of values (the schema's enum)
CHOICE_FIELDS = ("projection", "early_stopping")
# ... and the BCE positive weight: off (null), ``auto`` (train n_neg / n_pos per output, what
# the probe's ``class_weight: balanced`` is) or one number
WEIGHT_FIELDS = ("pos_weight",)
GRID_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in fields(FusionHParams)
    if (f.type in ("int", "float") and f.name != "bootstrap")
    or f.name in CHOICE_FIELDS + WEIGHT_FIELDS
)
_INT_FIELDS = frozenset(f.name for f in fields(FusionHParams) if f.type == "int")
SELECT_SPLITS = ("train", "val")


class SelectionError(UserError, ValueError):
    """A bad ``fusion.select`` section, or a method that cannot be selected."""


@dataclass(frozen=True)
class SelectSpec:
    """The ``fusion.select`` section, validated."""

    enabled: bool = False
    grid: dict[str, list[float | int | str | None]] | None = None
    seeds: int = 1
    metric: str = "auroc"
    methods: list[str] | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> SelectSpec:
        """Validate ``section``; every problem is a one-line error naming the key."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(SELECT_KEYS))
        if unknown:
            raise SelectionError(f"fusion.select: unknown key(s) {unknown}")
        grid = parse_grid(section.get("grid"))
        seeds = section.get("seeds", 1)
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise SelectionError(f"fusion.select.seeds: a positive integer, got {seeds!r}")
        metric = section.get("metric", "auroc")
        if metric not in SELECT_METRICS:
            raise SelectionError(f"fusion.select.metric: {metric!r} is not one of auroc, loss")
        methods = section.get("methods")
        return cls(
            bool(section.get("enabled", False)),
            grid,
            seeds,
            metric,
            None if methods is None else [str(m) for m in methods],
        )

    def points(self) -> list[dict[str, float | int | str | None]]:
        """Every grid point (the crossed lists, first key varying slowest)."""
        grid = self.grid or {}
        keys = list(grid)
        return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]


@functools.lru_cache(maxsize=1)
def _fusion_field_schemas() -> dict[str, Any]:
    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())
    return schema["properties"]["fusion"]["properties"]


def parse_grid(grid: dict[str, Any] | None) -> dict[str, list[float | int | str | None]]:
    """``fusion.select.grid`` checked: known numeric, choice or weight fields, non-empty lists,
    values in range (numbers), in the schema's enum (choices), null / auto / > 0 (weights)."""
    grid = dict(grid or {})
    for key in grid:
        if key not in GRID_FIELDS:
            raise SelectionError(
                f"fusion.select.grid: unknown key {key!r} (fusion fields a grid may vary: "
                f"{', '.join(GRID_FIELDS)})"
            )
    out: dict[str, list[float | int | str | None]] = {}
    props = _fusion_field_schemas()
    for key, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise SelectionError(f"fusion.select.grid.{key}: a non-empty list, got {values!r}")
        if key in WEIGHT_FIELDS:
            for v in values:
                ok = (
                    v is None
                    or v == "auto"
                    or (not isinstance(v, bool) and isinstance(v, int | float) and v > 0)
                )
                if not ok:
                    raise SelectionError(
                        f"fusion.select.grid.{key}: {v!r} is not null, auto or a positive number"
                    )
            if len({json.dumps(v) for v in values}) != len(values):
                raise SelectionError(f"fusion.select.grid.{key}: repeated values {values}")
            out[key] = [v if v is None or v == "auto" else float(v) for v in values]
            continue
        if key in CHOICE_FIELDS:
            allowed = props[key]["enum"]
            bad = [v for v in values if v not in allowed]
            if bad:
                raise SelectionError(f"fusion.select.grid.{key}: {bad} not in {allowed}")
            if len(set(values)) != len(values):
                raise SelectionError(f"fusion.select.grid.{key}: repeated values {values}")
            out[key] = [str(v) for v in values]
            continue
        for v in values:
            bad_type = isinstance(v, bool) or not isinstance(v, int | float)
            if bad_type or (key in _INT_FIELDS and not float(v).is_integer()):
                kind = "an integer" if key in _INT_FIELDS else "a number"
                raise SelectionError(f"fusion.select.grid.{key}: {v!r} is not {kind}")
            if key in props:
                try:
                    jsonschema.validate(v, props[key])
                except jsonschema.ValidationError as exc:
                    raise SelectionError(f"fusion.select.grid.{key}: {exc.message}") from None
        if len(set(values)) != len(values):
            raise SelectionError(f"fusion.select.grid.{key}: repeated values {values}")
        out[key] = [int(v) if key in _INT_FIELDS else float(v) for v in values]
    return out


def selectable(cfg: dict[str, Any], dataset: str, method: str) -> str | None:
    """Why ``method`` cannot be selected on ``dataset`` (None: it can)."""
    if is_probe(method):
        return f"{method} is the linear probe: it chooses its own C and class weight on val"
    if parse_method(method).base == LARGE:
        return f"{method} is a teacher reference row (*-large), not a tuned fusion model"
    inputs = method_inputs(cfg, dataset, method)
    if inputs.unavailable:
        return f"{method} cannot run here: {inputs.unavailable}"
    return None


def train_val_rows(data: FusionData) -> FusionData:
    """``data`` cut to its train and val rows: test and external rows (labels, inputs) are gone.

    Training only ever reads the train rows (in the same order) and val rows, and the inputs are
    standardised at load time on the train split, so a run on this view trains exactly as on
    the whole data.
    """
    keep = np.flatnonzero(np.isin(data.split, SELECT_SPLITS))
    return data.take(torch.as_tensor(keep, dtype=torch.long, device=data.delta.device))


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _mean(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


def choose(points: list[dict[str, Any]], metric: str) -> int:
    """Index of the best point: ``auroc`` (highest mean val AUROC, then lowest val loss) or
    ``loss`` (lowest mean val loss, then highest AUROC); missing values rank last; full ties
    keep grid order."""

    def key(i: int) -> tuple[float, float, int]:
        val = points[i]["val"]
        auroc = val.get("auroc")
        loss = val.get("loss")
        neg_auroc = -auroc if auroc is not None else math.inf
        loss_key = loss if loss is not None else math.inf
        return (neg_auroc, loss_key, i) if metric == "auroc" else (loss_key, neg_auroc, i)

    if not points:
        raise SelectionError("fusion.select: an empty grid")
    return min(range(len(points)), key=key)


def select_hparams(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train every grid point of ``fusion.select`` for (dataset, method) and pick the best by
    its validation metric; returns the selection record (see the module docstring)."""
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    fusion = dict(cfg.get("fusion") or {})
    spec = SelectSpec.from_config(fusion.get("select"))
    why = selectable(cfg, dataset, method)
    if why:
        raise SelectionError(f"{dataset} {method}: not selected — {why}")
    if not spec.grid:
        raise SelectionError("fusion.select.grid: no values to choose from")
    base = FusionHParams.from_config(fusion)
    if any(v > 0 for v in spec.grid.get("lambda_kd", [])) and not base.lambda_kd > 0:
        raise SelectionError(
            "fusion.select.grid.lambda_kd: values > 0 need fusion.lambda_kd > 0 (the teacher "
            "caches are inputs of the runs only then)"
        )
    run_seeds = [int(s) for s in (seeds if seeds is not None else cfg.get("seeds", [0]))]
    use = run_seeds[: spec.seeds]
    dcfg = cfg["datasets"][dataset]
    plan = resolve_method(method, list(dcfg["modalities"]), dcfg.get("teachers") or {})
    inputs = method_inputs(cfg, dataset, method)
    data = load_fusion_data_cached(
        dataset_paths(cfg, dataset).manifest, inputs.caches, inputs.teachers or None
    )
    view = train_val_rows(data)
    if not (view.split == "val").any():
        raise SelectionError(f"{dataset}: no validation split to select on")
    log.info(
        "%s %s: %d grid point(s) over %s, seeds %s, metric %s, %d train + val samples",
        dataset, method, len(spec.points()), list(spec.grid), use, spec.metric, view.n,
    )  # fmt: skip
    points = []
    for k, values in enumerate(spec.points()):
        t1 = time.perf_counter()
        hp = replace(FusionHParams.from_config({**asdict(base), **values}), bootstrap=0)
        try:
            results = train_seeds([view] * len(use), plan, hp, use, device=device)
        except TrainingError as exc:  # e.g. diverged at this point's lr: it cannot be chosen
            log.warning("point %d/%d %s failed: %s", k + 1, len(spec.points()), values, exc)
            points.append(
                {
                    "values": values,
                    "val": {m: None for m in SELECT_METRICS},
                    "per_seed": {},
                    "failed": str(exc),
                    "seconds": round(time.perf_counter() - t1, 3),
                }
            )
            continue
        per_seed = {}
        for res in results:
            val = res.metrics["splits"].get("val", {}).get("macro", {})
            per_seed[str(res.seed)] = {
                "auroc": _finite(val.get("auroc")),
                "loss": _finite(res.best_val_loss),
                "best_epoch": res.best_epoch,
                "epochs_run": res.epochs_run,
            }
        mean = {m: _mean([s[m] for s in per_seed.values()]) for m in SELECT_METRICS}
        points.append(
            {
                "values": values,
                "val": mean,
                "per_seed": per_seed,
                "seconds": round(time.perf_counter() - t1, 3),
            }
        )
        log.info(
            "point %d/%d %s: val AUROC %s, val loss %s, %.1fs",
            k + 1, len(spec.points()), values, _fmt(mean["auroc"]), _fmt(mean["loss"]),
            points[-1]["seconds"],
        )  # fmt: skip
    if all("failed" in p for p in points):
        raise SelectionError(
            f"{dataset} {method}: every grid point failed to train (first: {points[0]['failed']})"
        )
    best = choose(points, spec.metric)
    chosen = dict(points[best]["values"])
    log.info("%s %s: chose %s (point %d)", dataset, method, chosen, best + 1)
    return {
        "format": SELECTION_FORMAT,
        "dataset": dataset,
        "method": method,
        "protocol": "full",
        "metric": spec.metric,
        "splits": list(SELECT_SPLITS),
        "seeds": use,
        "grid": spec.grid,
        "base": {k: getattr(base, k) for k in spec.grid},
        "points": points,
        "chosen_index": best,
        "chosen": chosen,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def default_selection_path(cfg: dict[str, Any], dataset: str, method: str) -> Path:
    """``results/{dataset}/selection/{method}.json``."""
    return dataset_paths(cfg, dataset).selection(method)


def write_selection(record: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write the selection record atomically (a killed writer leaves no file)."""
    return write_text_atomic(out, json.dumps(record, indent=1, sort_keys=True, allow_nan=False))


def run_selection(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    out: str | os.PathLike | None = None,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """:func:`select_hparams` written to ``out`` (default :func:`default_selection_path`)."""
    record = select_hparams(cfg, dataset, method, seeds, threads, device)
    path = write_selection(record, out or default_selection_path(cfg, dataset, method))
    log.info("%s %s: selection -> %s (%.1fs)", dataset, method, path, record["seconds"])
    return record


__all__ = [
    "GRID_FIELDS",
    "SELECTION_FORMAT",
    "SelectSpec",
    "SelectionError",
    "choose",
    "default_selection_path",
    "parse_grid",
    "run_selection",
    "select_hparams",
    "selectable",
    "train_val_rows",
    "write_selection",
]
