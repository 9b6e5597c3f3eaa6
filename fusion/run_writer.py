"""Writing a run folder: the pieces every run writes, in the layout every reader expects.

A run folder (built in a temp folder beside it and renamed into place at the end, so a killed
job leaves nothing that looks finished)::

    {out}/seed{k}/predictions.parquet  metrics.json  history.csv  model.safetensors  config.json
    {out}/summary.json                 (written last)

A method that cannot run here (OneLLM without its weights) writes only ``summary.json`` with
``"status": "unavailable"`` and the reason (:func:`write_unavailable`). A trained seed's folder
is written by :func:`fusion.train.write_seed`, a probe's by :func:`fusion.probe.run_probe`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medmix.io import fresh_tmp_dir, replace_dir

if TYPE_CHECKING:
    from fusion.data import FusionData
    from fusion.inference import Predictions
    from fusion.medmix import FusionModel
    from fusion.registry import ModelSpec

log = logging.getLogger("medmix.fusion.train")

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "task_loss", "kd_loss", "lambda_kd"]


@dataclass
class SeedResult:
    seed: int
    model: FusionModel
    history: pd.DataFrame
    predictions: Predictions
    metrics: dict[str, Any]
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    warnings: list[str] = field(default_factory=list)  # fusion.train_checks' findings


@dataclass
class RunSummary:
    out: Path
    method: str
    protocol: str
    seeds: list[int]
    per_seed: dict[int, dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    seconds: float
    status: str = "ok"


def predictions_frame(data: FusionData, spec: ModelSpec, pred: Predictions) -> pd.DataFrame:
    cols: dict[str, Any] = {
        "sample_id": data.sample_ids.astype(str),
        "split": data.split.astype(str),
    }
    for j, name in enumerate(spec.output_names):
        cols[f"prob_{name}"] = pred.probs[:, j].astype(np.float32)
    if pred.alpha is not None:
        for mi, m in enumerate(spec.modalities):
            for ei, e in enumerate(spec.experts[m]):
                cols[f"alpha_{m}_{e}"] = np.nan_to_num(pred.alpha[:, mi, ei]).astype(np.float32)
    if pred.beta is not None:
        for mi, m in enumerate(spec.modalities):
            cols[f"beta_{m}"] = np.nan_to_num(pred.beta[:, mi]).astype(np.float32)
    return pd.DataFrame(cols)


def run_json(obj: Any) -> str:
    """A run file's JSON; a non-finite number (an undefined metric, e.g. the AUROC of a label
    with one class in the split) is written as null, never as a bare NaN."""
    return json.dumps(_finite_or_null(obj), indent=1, sort_keys=True, allow_nan=False)


def _finite_or_null(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_null(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite_or_null(x) for x in v]
    return v


def run_warnings(*groups: list[str]) -> list[str]:
    """The findings of every seed and split, each once, in order of appearance."""
    return list(dict.fromkeys(w for g in groups for w in g))


@contextmanager
def building_run(out: Path) -> Iterator[Path]:
    """A temp folder beside the run folder ``out``, renamed to ``out`` when the block ends and
    removed if it fails: a killed job leaves nothing that looks finished."""
    tmp = fresh_tmp_dir(out)
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finished_summary(
    info: dict[str, Any],
    seeds: list[int],
    per_seed: dict[int, dict[str, Any]],
    mean: dict[str, float],
    std: dict[str, float],
    seconds: float,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """``summary.json`` of a run whose seeds all finished (``per_seed``: each seed's test-split
    macro metrics and notes; ``mean`` / ``std`` over the seeds, ddof 1). ``warnings``: what
    the run could not do as configured (:mod:`fusion.train_checks`, labels undefined in the
    test split), recorded only when there is something to say."""
    summary = {
        **info,
        "status": "ok",
        "split": "test",
        "seeds": seeds,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "mean": mean,
        "std": std,
        "std_ddof": 1,
        "seconds": round(seconds, 3),
    }
    if warnings:
        summary["warnings"] = list(warnings)
    return summary


def write_unavailable(
    out: Path, info: dict[str, Any], seeds: list[int], reason: str, kind: str, t0: float
) -> RunSummary:
    """A run that cannot happen here: only ``summary.json``, marked unavailable with why."""
    summary = {
        **info,
        "status": "unavailable",
        "reason": reason,
        "unavailable_kind": kind,
        "split": "test",
        "seeds": seeds,
        "per_seed": {},
        "mean": {},
        "std": {},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    with building_run(out) as tmp:
        (tmp / "summary.json").write_text(run_json(summary))
    log.error(
        "%s %s %s: unavailable — %s", info["dataset"], info["method"], info["protocol"], reason
    )
    return RunSummary(out, info["method"], info["protocol"], seeds, {}, {}, {}, 0.0, "unavailable")


__all__ = [
    "HISTORY_COLUMNS",
    "RunSummary",
    "SeedResult",
    "building_run",
    "finished_summary",
    "predictions_frame",
    "run_json",
    "run_warnings",
    "write_unavailable",
]
