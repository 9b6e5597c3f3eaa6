"""Training of one (dataset, method, protocol) job: every seed in one process (paper App. C).

:func:`run_training` reads the job's inputs (:func:`medmix.plan.method_inputs`), applies the
protocol's masks to each seed's data (:mod:`fusion.protocols`, computed once per seed and saved
with it), trains the seeds (:func:`train_seeds`, the loop in :mod:`fusion.trainer`), scores them
(:func:`fusion.metrics.compute_metrics`) and writes the run folder (:func:`write_seed`,
:mod:`fusion.run_writer`). The linear probe has its own fit (:func:`fusion.probe.run_probe`)
and the same layout.

Speed. The embeddings are loaded once per process (:func:`fusion.data.load_fusion_data_cached`)
and shared by every seed (and by every method trained in the process); the seeds are trained
together, vectorised over a seed axis (``vectorize_seeds``, :mod:`fusion.trainer`).

Outputs (docs/design.md §3.3), built in a temp folder beside ``out`` and renamed into place at the
end, so a killed job leaves nothing that looks finished::

    {out}/seed{k}/predictions.parquet  metrics.json  history.csv  model.safetensors  config.json
    {out}/seed{k}/masks.parquet        (a masking protocol: the masks the seed trained under)
    {out}/summary.json                 (written last)

A method that cannot run here (OneLLM without its weights) writes only ``summary.json`` with
``"status": "unavailable"`` and the reason.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fusion.checkpoint import save_model
from fusion.data import FusionData, load_fusion_data_cached
from fusion.inference import predict_data
from fusion.metrics import compute_metrics, seed_mean_std, undefined_notes
from fusion.probe import run_probe
from fusion.protocols import mask_seed, protocol_severity, write_masks
from fusion.registry import MethodPlan, method_class, resolve_method
from fusion.run_writer import (
    HISTORY_COLUMNS,
    RunSummary,
    SeedResult,
    building_run,
    finished_summary,
    predictions_frame,
    run_json,
    run_warnings,
    write_unavailable,
)
from fusion.trainer import SeedTrainer
from medmix.config import dataset_paths
from medmix.hparams import FusionHParams
from medmix.methods import is_probe
from medmix.plan import method_inputs

log = logging.getLogger("medmix.fusion.train")


def train_seeds(
    datas: list[FusionData],
    plan: MethodPlan,
    hp: FusionHParams,
    seeds: list[int],
    device: str | torch.device = "cpu",
    order_seed: int | None = None,
) -> list[SeedResult]:
    """Train ``seeds`` (``datas[k]``: the data of seed k, already masked by its protocol) and
    evaluate them; vectorised over the seeds unless ``hp.vectorize_seeds`` is false."""
    device = torch.device(device)
    if len(datas) != len(seeds):
        raise ValueError("one data object per seed")
    if not hp.vectorize_seeds and len(seeds) > 1:
        first = order_seed if order_seed is not None else seeds[0]
        return [
            r
            for d, s in zip(datas, seeds, strict=True)
            for r in train_seeds([d], plan, hp, [s], device, order_seed=first)
        ]
    t0 = time.perf_counter()
    datas = [d.to(device) for d in datas]
    trainer = SeedTrainer(datas, plan, hp, seeds, device, order_seed=order_seed)
    outcomes = trainer.train()
    per_seed_seconds = (time.perf_counter() - t0) / len(seeds)
    results = []
    for k, seed in enumerate(seeds):
        t1 = time.perf_counter()
        model = trainer.models[k]
        pred = predict_data(model, datas[k])
        metrics = compute_metrics(datas[k], trainer.spec, pred, n_boot=hp.bootstrap, seed=seed)
        if trainer.distill:
            metrics["distillation"] = {"teachers": list(datas[k].teacher.modalities)}
        o = outcomes[k]
        results.append(
            SeedResult(
                seed=seed,
                model=model,
                history=pd.DataFrame(o["history"], columns=HISTORY_COLUMNS),
                predictions=pred,
                metrics=metrics,
                epochs_run=len(o["history"]),
                best_epoch=o["best_epoch"],
                best_val_loss=o["best_val_loss"],
                seconds=per_seed_seconds + time.perf_counter() - t1,
                warnings=list(trainer.warnings),
            )
        )
    return results


def train_seed(
    data: FusionData,
    plan: MethodPlan,
    hp: FusionHParams,
    seed: int,
    device: str | torch.device = "cpu",
) -> SeedResult:
    """Train one seed on ``data`` (already masked by its protocol) and evaluate it."""
    return train_seeds([data], plan, hp, [seed], device)[0]


def write_seed(result: SeedResult, data: FusionData, directory: Path, info: dict[str, Any]) -> None:
    """A trained seed's folder: predictions, history, metrics.json and the checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = result.model.spec
    predictions_frame(data, spec, result.predictions).to_parquet(
        directory / "predictions.parquet", index=False
    )
    result.history.to_csv(directory / "history.csv", index=False)
    meta = {
        **info,
        "seed": result.seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss if math.isfinite(result.best_val_loss) else None,
        "seconds": round(result.seconds, 3),
        "n_params": sum(p.numel() for p in result.model.parameters()),
    }
    if result.warnings:  # only when the labels did not allow the run as configured
        meta["warnings"] = result.warnings
    (directory / "metrics.json").write_text(run_json({**meta, **result.metrics}))
    save_model(directory, result.model, data.standardization, info={**info, "seed": result.seed})


def run_training(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    protocol: str,
    out: str | os.PathLike,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
    selection: str | os.PathLike | None = None,
) -> RunSummary:
    """Train every seed of (dataset, method, protocol) and write the run folder ``out``.

    ``selection``: the JSON of :mod:`fusion.select` for (dataset, method); its chosen values
    replace the config's, and the run records them (``selection`` in summary.json and
    every seed's metrics.json).
    """
    if is_probe(method):  # scikit-learn logistic regression, same run layout (fusion.probe)
        if selection is not None:
            raise ValueError(f"{method}: the linear probe selects its own settings on val")
        return run_probe(cfg, dataset, method, protocol, out, seeds, threads, device)
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    hp = FusionHParams.of(cfg)
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.get("seeds", [0]))]
    out = Path(out)
    info: dict[str, Any] = {"dataset": dataset, "method": method, "protocol": protocol}
    if selection is not None:
        hp, info["selection"] = hp.with_selection(selection, dataset, method)
        log.info("%s %s: hyper-parameters chosen on val %s", dataset, method, info["selection"])
    info["hparams"] = asdict(hp)
    # summary.json names the hyper-parameters only when they were chosen on val
    short = {k: v for k, v in info.items() if k != "hparams" or selection is not None}
    inputs = method_inputs(cfg, dataset, method)
    if inputs.unavailable:
        return write_unavailable(
            out, short, seeds, inputs.unavailable, inputs.unavailable_kind or "inputs missing", t0
        )
    dcfg = cfg["datasets"][dataset]
    plan = resolve_method(method, list(dcfg["modalities"]), dcfg.get("teachers") or {})
    missing = [str(p) for ev in inputs.caches.values() for p in ev.values() if not Path(p).exists()]
    if missing and getattr(method_class(plan.base), "requires_weights", False):
        why = f"embedding caches missing: {missing}"
        return write_unavailable(out, short, seeds, why, "weights absent", t0)
    paths = dataset_paths(cfg, dataset)
    data = load_fusion_data_cached(paths.manifest, inputs.caches, inputs.teachers or None)
    log.info(
        "%s %s %s: %d samples, modalities %s, task %s (%d outputs), seeds %s%s",
        dataset, method, protocol, data.n, data.modalities, data.task_type, data.n_outputs, seeds,
        f", teachers {data.teacher.modalities}" if data.teacher is not None else "",
    )  # fmt: skip
    per_seed: dict[int, dict[str, float]] = {}
    extra: dict[int, dict[str, Any]] = {}
    warnings: list[list[str]] = []
    with building_run(out) as tmp:
        severity = protocol_severity(cfg, dataset, data, protocol)  # mnar-severity: a column
        masked = [mask_seed(data, protocol, seed, severity=severity) for seed in seeds]
        sdatas = [sdata for sdata, _ in masked]
        results = train_seeds(sdatas, plan, hp, seeds, device=device)
        for res, (sdata, masks) in zip(results, masked, strict=True):
            seed = res.seed
            write_seed(res, sdata, tmp / f"seed{seed}", info)
            if masks is not None:  # the masks the seed trained under (none for full)
                write_masks(data, protocol, seed, tmp / f"seed{seed}", severity, masks=masks)
            test = res.metrics["splits"].get("test", {})
            warnings += [res.warnings, undefined_notes(res.metrics, f"{dataset} {method}")]
            per_seed[seed] = dict(test.get("macro", {}))
            extra[seed] = {
                "epochs_run": res.epochs_run,
                "best_epoch": res.best_epoch,
                "skipped_labels": test.get("skipped_labels", []),
            }
            log.info(
                "seed %d: %d epochs (best %d), best val loss %.4f, test AUROC %s, %.1fs",
                seed, res.epochs_run, res.best_epoch, res.best_val_loss,
                f"{per_seed[seed]['auroc']:.3f}" if "auroc" in per_seed[seed] else "n/a", res.seconds,
            )  # fmt: skip
        mean, std = seed_mean_std(per_seed)
        seconds = time.perf_counter() - t0
        noted = {s: {**per_seed[s], **extra[s]} for s in seeds}
        summary = finished_summary(
            short, seeds, noted, mean, std, seconds, warnings=run_warnings(*warnings)
        )
        (tmp / "summary.json").write_text(run_json(summary))  # last file of the run
    auroc = f"{mean['auroc']:.3f}±{std['auroc']:.3f}" if "auroc" in mean else "n/a"
    log.info(
        "%s %s %s: test AUROC %s over %d seed(s), %.1fs -> %s",
        dataset, method, protocol, auroc, len(seeds), seconds, out,
    )  # fmt: skip
    return RunSummary(out, method, protocol, seeds, per_seed, mean, std, seconds)


__all__ = ["run_training", "train_seed", "train_seeds", "write_seed"]
