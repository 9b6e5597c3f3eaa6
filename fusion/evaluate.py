"""Scoring saved runs: the metrics table, saved checkpoints re-scored, test-time protocols and
external validation.

* :func:`collect_metrics` / :func:`write_metrics_table`: every finished seed's
  ``metrics.json`` under ``results/{dataset}/runs/`` as one long table
  (``python -m fusion evaluate`` writes ``results/{dataset}/metrics.parquet``).
* :func:`evaluate_saved_runs`: every seed checkpoint of a run scored on a dataset under
  protocol settings, written in the run layout. A test-only setting leaves the training and
  validation splits untouched, so the model it would train is the ``full`` model:
  :func:`run_test_protocols` evaluates those settings on the ``full`` checkpoints instead of
  retraining (``python -m fusion.protocols test``).
* :func:`run_external`: external validation, the source's ``full`` run scored on another
  cohort (aligned by :mod:`fusion.external`) with the source's validation thresholds
  (:func:`external_metrics`; ``python -m fusion external``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.checkpoint import load_model
from fusion.data import FusionData
from fusion.external import check_alignment, external_view, load_target
from fusion.inference import Predictions
from fusion.metrics import LABEL_METRICS, compute_metrics, evaluate_split
from fusion.protocols import mask_seed, protocol_severity, write_masks
from fusion.registry import ModelSpec
from fusion.run_writer import building_run, predictions_frame
from medmix.config import dataset_paths
from medmix.errors import InputError
from medmix.io import atomic_path
from medmix.plan import external_protocol
from medmix.protocol_names import ProtocolError, is_test_only, parse_protocol

log = logging.getLogger("medmix.fusion.evaluate")


# -- the metrics table ------------------------------------------------------------------------


METRIC_COLUMNS = ["dataset", "protocol", "method", "seed", "split", "task", "metric", "value"]


def collect_metrics(runs_root: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """Every finished ``{runs_root}/{protocol}/{method}/seed*/metrics.json`` as a long table.

    Besides the metrics, bootstrap intervals appear as ``{metric}_ci_low`` / ``_ci_high``
    rows (test / external splits). Runs marked unavailable have no seed folders: no rows.

    Nothing is dropped silently: an undefined value (JSON null) is a NaN row, a label skipped
    in a split (one class only, :mod:`fusion.metrics`) has a NaN ``auroc`` row, and a run
    whose ``summary.json`` lists seeds without a ``metrics.json`` is named in a warning (the
    tables mark its rows as over fewer seeds than configured).
    """
    rows = []
    runs_root = Path(runs_root)
    found: dict[Path, set[int]] = {}
    for path in sorted(runs_root.glob("*/*/seed*/metrics.json")):
        seed_dir, method_dir = path.parent, path.parent.parent
        protocol_dir = method_dir.parent
        if any(p.name.startswith(".") for p in (seed_dir, method_dir, protocol_dir)):
            continue
        if not (method_dir / "summary.json").exists():
            log.warning("%s: run without summary.json skipped", method_dir)
            continue
        try:
            m = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        seed = int(m.get("seed", seed_dir.name.removeprefix("seed")))
        found.setdefault(method_dir, set()).add(seed)
        for split, sm in m.get("splits", {}).items():
            key = (dataset, protocol_dir.name, method_dir.name, seed, split)
            for metric, value in sm.get("macro", {}).items():
                rows.append((*key, "macro", metric, _value(value)))
            per_label = sm.get("per_label", {})
            for task, vals in per_label.items():
                rows.extend(
                    (*key, task, metric, _value(vals[metric]))
                    for metric in LABEL_METRICS
                    if metric in vals
                )
            for task in sm.get("skipped_labels") or []:  # undefined there: NaN, not absent
                if "auroc" not in per_label.get(task, {}):
                    rows.append((*key, task, "auroc", math.nan))
            ci = sm.get("ci") or {}
            for task, entry in [("macro", ci.get("macro", {}))] + list(
                (ci.get("per_label") or {}).items()
            ):
                for metric, (lo, hi) in entry.items():
                    rows.append((*key, task, f"{metric}_ci_low", float(lo)))
                    rows.append((*key, task, f"{metric}_ci_high", float(hi)))
    _warn_missing_seeds(runs_root, found)
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return df.astype({"seed": "int64", "value": "float64"})


def _value(v: Any) -> float:
    """A metrics.json number; null (an undefined metric) is NaN."""
    return math.nan if v is None else float(v)


def _warn_missing_seeds(runs_root: Path, found: dict[Path, set[int]]) -> None:
    """Name every finished run whose ``summary.json`` lists seeds without a ``metrics.json``."""
    for path in sorted(runs_root.glob("*/*/summary.json")):
        run = path.parent
        if any(p.name.startswith(".") for p in (run, run.parent)):
            continue
        try:
            summary = json.loads(path.read_text())
            listed = (
                [int(s) for s in summary["seeds"]] if summary.get("status", "ok") == "ok" else []
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        missing = [s for s in listed if s not in found.get(run, set())]
        if missing:
            log.warning(
                "%s: seed(s) %s of summary.json have no seed*/metrics.json: the run's rows "
                "cover %d of %d seeds",
                run.relative_to(runs_root), missing, len(listed) - len(missing), len(listed),
            )  # fmt: skip


def write_metrics_table(
    runs_root: str | os.PathLike, dataset: str, out: str | os.PathLike
) -> pd.DataFrame:
    df = collect_metrics(runs_root, dataset)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    return df


# -- saved checkpoints ------------------------------------------------------------------------


def seed_dirs(run: Path) -> list[tuple[int, Path]]:
    """The (seed, folder) of every saved checkpoint of a run, by seed."""
    found = []
    for d in run.glob("seed*"):
        if d.is_dir() and (d / "model.safetensors").exists():
            found.append((int(d.name.removeprefix("seed")), d))
    if not found:
        raise FileNotFoundError(f"{run}: no seed*/model.safetensors (train it first)")
    return sorted(found)


def eval_json(obj: Any) -> str:
    """JSON of a scored run (a non-finite number written as null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=1, sort_keys=True)


def evaluate_saved_runs(
    cfg: dict[str, Any],
    source_run: str | os.PathLike,
    target: str,
    outputs: dict[str, str | os.PathLike],
    threads: int | None = 1,
) -> list[Path]:
    """Evaluate every seed of a saved run on ``target`` under each protocol of ``outputs``.

    ``outputs`` maps a protocol setting to the run folder to write. When ``target`` is the
    run's own dataset, the setting's masks are applied and metrics computed as the trainer
    does (thresholds on the validation split); otherwise (external validation) the target's
    evaluation rows are scored with the source's validation thresholds.
    """
    if threads:
        torch.set_num_threads(int(threads))
    source_run = Path(source_run)
    seeds = seed_dirs(source_run)
    first = load_model(seeds[0][1])
    source = first.info.get("dataset") or source_run.parents[2].name
    method = first.info.get("method") or source_run.name
    spec = first.spec
    data = load_target(cfg, target, spec, first.standardization)
    external = target != source
    unaligned = check_alignment(cfg, source, target, spec)
    absent = [m for m in spec.modalities if m not in cfg["datasets"][target]["modalities"]]
    if absent:
        log.info("%s lacks %s: evaluated as missing for every sample", target, absent)
    if external:
        data, rows = external_view(data)
        log.info("%s -> %s (%s): %d external samples", source, target, method, int(rows.sum()))
    written = []
    models: dict[Path, Any] = {}
    for setting, out in outputs.items():
        t0 = time.perf_counter()
        if setting != "full" and not is_test_only(setting):
            raise ValueError(f"{setting}: corrupts training data, cannot reuse a trained model")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        severity = protocol_severity(cfg, target, data, setting)
        per_seed: dict[str, dict[str, float]] = {}
        with building_run(out) as tmp:
            for seed, seed_dir in seeds:
                if seed_dir not in models:
                    models[seed_dir] = first if seed_dir == seeds[0][1] else load_model(seed_dir)
                lm = models[seed_dir]
                masked, masks = mask_seed(data, setting, seed, severity=severity)
                pred = lm.predict(masked)
                if external:
                    metrics = external_metrics(masked, spec, pred, seed_dir)
                    split = "external"
                else:
                    metrics = compute_metrics(masked, spec, pred)
                    split = "test"
                d = tmp / f"seed{seed}"
                d.mkdir()
                predictions_frame(masked, spec, pred).to_parquet(
                    d / "predictions.parquet", index=False
                )
                info = {
                    "dataset": source,
                    "target": target,
                    "method": method,
                    "protocol": setting if not external else external_protocol(target),
                    "seed": seed,
                    "source_run": str(seed_dir),
                    "unaligned_experts": unaligned,
                    "absent_modalities": absent,
                }
                (d / "metrics.json").write_text(eval_json({**info, **metrics}))
                if masks is not None:
                    write_masks(data, setting, seed, d, severity=severity, masks=masks)
                per_seed[str(seed)] = dict(metrics["splits"].get(split, {}).get("macro", {}))
            keys = sorted(set.intersection(*(set(v) for v in per_seed.values())))
            vals = {k: [v[k] for v in per_seed.values()] for k in keys}
            summary = {
                "dataset": source,
                "target": target,
                "method": method,
                "protocol": setting if not external else external_protocol(target),
                "split": "external" if external else "test",
                "seeds": [s for s, _ in seeds],
                "per_seed": per_seed,
                "mean": {k: float(np.mean(v)) for k, v in vals.items()},
                "std": {
                    k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()
                },
                "std_ddof": 1,
                "source_run": str(source_run),
                "unaligned_experts": unaligned,
                "absent_modalities": absent,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            (tmp / "summary.json").write_text(eval_json(summary))
        written.append(out)
        auroc = summary["mean"].get("auroc")
        log.info(
            "%s %s %s on %s: AUROC %s (%d seeds) -> %s",
            source, method, setting, target,
            f"{auroc:.3f}" if auroc is not None else "n/a", len(seeds), out,
        )  # fmt: skip
    return written


def external_metrics(
    data: FusionData, spec: ModelSpec, pred: Predictions, source_seed: Path
) -> dict[str, Any]:
    """Metrics of the ``external`` rows of ``data`` with the decision thresholds the source
    seed chose on its own validation split (its ``metrics.json``)."""
    src_metrics = json.loads((source_seed / "metrics.json").read_text())
    thresholds = src_metrics.get("thresholds") or {}
    ev = data.split == "external"
    y = data.y.cpu().numpy()[ev]
    no_mod = ~data.modality_mask.any(dim=1).cpu().numpy()[ev]
    return {
        "task_type": data.task_type,
        "labels": spec.output_names,
        "thresholds": thresholds,
        "splits": {
            "external": evaluate_split(
                y,
                pred.probs[ev],
                data.task_type,
                spec.output_names,
                thresholds,
                int(no_mod.sum()),
            ).to_dict()  # fmt: skip
        },
    }


def run_test_protocols(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    settings: Iterable[str],
    source: str | os.PathLike | None = None,
    runs_root: str | os.PathLike | None = None,
    threads: int | None = 1,
) -> list[Path]:
    """Evaluate the ``full`` run of (dataset, method) under each test-only setting.

    A test-only setting leaves the training and validation splits untouched, so the model it
    would train with a seed is the ``full`` model of that seed: each seed's checkpoint is
    loaded, the test masks applied, and ``runs/{setting}/{method}/`` written in the run layout
    (``seed{k}/predictions.parquet``, ``metrics.json``, ``masks.parquet``; ``summary.json``).
    """
    settings = [parse_protocol(s).name for s in settings]
    bad = [s for s in settings if not is_test_only(s)]
    if bad:
        raise ProtocolError(
            f"{bad} corrupt training data: train them with `python -m fusion train`"
        )
    paths = dataset_paths(cfg, dataset)
    source = Path(source) if source else paths.run_dir("full", method)
    root = Path(runs_root) if runs_root else paths.root / "runs"
    return evaluate_saved_runs(
        cfg,
        source,
        target=dataset,
        outputs={s: root / s / method for s in settings},
        threads=threads,
    )


def run_external(
    cfg: dict[str, Any],
    source: str,
    target: str,
    method: str,
    out: str | os.PathLike | None = None,
    threads: int | None = 1,
) -> Path:
    """Evaluate the source's ``full`` run of ``method`` on ``target`` (external validation)."""
    src = dataset_paths(cfg, source)
    out = Path(out) if out else src.run_dir(external_protocol(target), method)
    return evaluate_saved_runs(
        cfg, src.run_dir("full", method), target, {"full": out}, threads=threads
    )[0]


__all__ = [
    "METRIC_COLUMNS",
    "collect_metrics",
    "evaluate_saved_runs",
    "external_metrics",
    "run_external",
    "run_test_protocols",
    "write_metrics_table",
]
