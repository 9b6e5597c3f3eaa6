"""Linear probe: a logistic regression on the concatenated expert embeddings (``linear-probe``).

The Table 1 reference a reviewer asks for first: does a fusion method beat a plain logistic
regression on the same features, caches and split?

The fit (features, one L2 logistic regression per output, ``C`` and ``class_weight`` chosen on
the VAL split) is :mod:`fusion.probe_fit`; this module saves and loads a fitted probe and runs
one (dataset, method, protocol) job.

Outputs: exactly a fusion run's layout (:func:`fusion.train.run_training`), so evaluation, the
metrics table and Table 1 read it unchanged::

    {out}/seed{k}/predictions.parquet  metrics.json  history.csv  model.safetensors  config.json
    {out}/summary.json

``history.csv`` has the usual columns and no rows (no epochs). ``model.safetensors`` holds the
linear map (``weight`` (C, F) and ``bias`` (C,), float64, format :data:`PROBE_FORMAT`) and
``config.json`` the spec, the standardisation statistics and the feature layout — no pickled
scikit-learn object. :func:`fusion.checkpoint.load_model` rebuilds it as :class:`ProbeModule`
(same logits, torch), so prediction, external validation, test-time protocols and the
efficiency table read it like any other checkpoint.

The probe has no randomness: under ``full`` every configured seed folder holds the same fit
(``"deterministic": true`` in ``summary.json``; test-set bootstrap intervals are still seeded
per seed). Under a masking protocol each seed's masks differ, and the probe is refitted per
seed. The chosen ``C`` / ``class_weight`` of every output are in each seed's ``metrics.json``
(``probe``) and in ``summary.json`` (``probe.selection``, per seed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from fusion.data import FusionData, Standardization, load_fusion_data_cached
from fusion.inference import LoadedModel, read_model_config, save_model_folder
from fusion.metrics import METRICS, compute_metrics, seed_mean_std
from fusion.probe_fit import (
    C_GRID,
    CLASS_WEIGHTS,
    MAX_ITER,
    TOL,
    ProbeFit,
    feature_layout,
    fit_probe,
    flat_index,
    probe_features,
    val_loss,
)
from fusion.protocols import mask_seed, protocol_severity, write_masks
from fusion.registry import ModelSpec, resolve_method
from fusion.run_writer import (
    HISTORY_COLUMNS,
    RunSummary,
    building_run,
    finished_summary,
    predictions_frame,
    run_json,
)
from fusion.train_checks import check_labels
from medmix.config import dataset_paths
from medmix.hparams import FusionHParams
from medmix.methods import PROBE, MethodError
from medmix.plan import method_inputs

log = logging.getLogger("medmix.fusion.probe")

PROBE_FORMAT = "medmix-linear-probe/1"


# -- checkpoint ------------------------------------------------------------------------------


@dataclass
class _Output:
    logits: torch.Tensor
    alpha: torch.Tensor | None = None
    beta: torch.Tensor | None = None


class ProbeModule(nn.Module):
    """A saved probe as a torch module with a fusion model's call: ``model(xs, delta)``.

    ``xs``: standardised per-expert inputs (flat order), ``delta``: availability (N, M, E_max).
    """

    method_name = PROBE

    def __init__(self, spec: ModelSpec, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float64), False)
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float64), False)
        # the device marker the prediction helpers read (fusion.inference.predict_tensors)
        self.register_buffer("prior", torch.zeros(spec.n_outputs, dtype=torch.float64))
        self._flat = flat_index(spec.modalities, spec.experts)

    def forward(self, xs: list[torch.Tensor], delta: torch.Tensor) -> _Output:
        w = self.weight
        logits = self.bias.expand(delta.shape[0], -1)
        k = 0
        ind = []
        for x, (mi, ei) in zip(xs, self._flat, strict=True):
            ok = (delta[:, mi, ei] > 0).to(w.dtype)
            d = x.shape[1]
            logits = logits + (x.to(w.dtype) * ok[:, None]) @ w[:, k : k + d].T
            ind.append(1.0 - ok)
            k += d
        logits = logits + torch.stack(ind, dim=1) @ w[:, k:].T
        return _Output(logits=logits)


def save_probe(
    directory: str | os.PathLike,
    spec: ModelSpec,
    fit: ProbeFit,
    standardization: Standardization,
    layout: dict[str, Any],
    info: dict[str, Any] | None = None,
) -> None:
    """``model.safetensors`` (weight, bias) and ``config.json`` (spec, statistics, layout)."""
    tensors = {
        "weight": np.ascontiguousarray(fit.weight, dtype=np.float64),
        "bias": np.ascontiguousarray(fit.bias, dtype=np.float64),
    }
    save_model_folder(
        directory,
        PROBE_FORMAT,
        save_file,
        tensors,
        spec,
        standardization,
        info,
        features=layout,
        selection=fit.selection(),
    )


def load_probe(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A saved probe as a :class:`fusion.inference.LoadedModel` (its model a ProbeModule)."""
    directory = Path(directory)
    cfg = read_model_config(directory)
    if cfg.get("format") != PROBE_FORMAT:
        raise MethodError(f"{directory}: format {cfg.get('format')!r}, not {PROBE_FORMAT!r}")
    spec = ModelSpec.from_dict(cfg["spec"])
    t = load_file(str(directory / "model.safetensors"))
    n_features = int(cfg["features"]["n_features"])
    if t["weight"].shape != (spec.n_outputs, n_features):
        raise MethodError(
            f"{directory}: weight {t['weight'].shape}, expected {(spec.n_outputs, n_features)}"
        )
    model = ProbeModule(spec, t["weight"], t["bias"]).to(device).eval()
    return LoadedModel.from_config(model, spec, cfg)


# -- the run ---------------------------------------------------------------------------------


def probe_spec(data: FusionData, method: str) -> ModelSpec:
    return ModelSpec.of_data(
        data,
        PROBE,
        method,
        d=0,
        adapter_bottleneck=0,
        dropout=0.0,
        extra={"probe": probe_settings()},
    )


def probe_settings() -> dict[str, Any]:
    return {
        "model": "sklearn.linear_model.LogisticRegression (L2)",
        "solver": "lbfgs",
        "max_iter": MAX_ITER,
        "tol": TOL,
        "grid": {"C": list(C_GRID), "class_weight": list(CLASS_WEIGHTS)},
        "selection": "val AUROC (val log-loss where AUROC is undefined); first grid point on ties",
        "multilabel": "one-vs-rest: one model per label / task, each with its own C",
        "features": "train-standardised expert embeddings, missing = train mean (0), "
        "plus one missingness indicator per expert",
    }


def blas_threads(threads: int | None):
    """Limit the BLAS threads scikit-learn's solver uses to the job's ``threads`` (on a shared
    machine the default, one per core, oversubscribes it: 3-20x slower fits)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(int(threads)) if threads else contextlib.nullcontext()


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def run_probe(
    cfg: dict[str, Any],
    dataset: str,
    method: str,
    protocol: str,
    out: str | os.PathLike,
    seeds: list[int] | None = None,
    threads: int | None = 1,
    device: str = "cpu",
):
    """Fit the probe of (dataset, method, protocol) and write the run folder ``out``.

    The same caches, split and standardisation as a fusion run; every seed folder is written
    (one fit shared by all seeds under ``full``). Returns a :class:`fusion.run_writer.RunSummary`.
    """
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    if device != "cpu":
        log.info("%s: scikit-learn runs on the CPU (device %s not used)", method, device)
    hp = FusionHParams.of(cfg)  # validates the section; bootstrap
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.get("seeds", [0]))]
    out = Path(out)
    settings = probe_settings()
    info = {
        "dataset": dataset,
        "method": method,
        "protocol": protocol,
        "hparams": {**settings, "bootstrap": hp.bootstrap},
    }
    short = {k: v for k, v in info.items() if k != "hparams"}
    inputs = method_inputs(cfg, dataset, method)
    dcfg = cfg["datasets"][dataset]
    resolve_method(method, list(dcfg["modalities"]), dcfg.get("teachers") or {})
    paths = dataset_paths(cfg, dataset)
    data = load_fusion_data_cached(paths.manifest, inputs.caches)
    checks = check_labels(data, method)  # the label findings the neural rows get
    label_warnings = list(checks.warnings)
    if not checks.val_usable:  # the probe has no early stopping: say what it does instead
        label_warnings = [w for w in label_warnings if "early stopping" not in w]
        label_warnings.append(
            f"{dataset} {method}: no known label in the val split, so C and the class weight "
            "cannot be chosen on val: the first values of the grid are used (see "
            "probe.selection, criterion 'none')"
        )
    for line in label_warnings:
        log.warning("%s", line)
    spec = probe_spec(data, method)
    layout = feature_layout(data)
    log.info(
        "%s %s %s: %d samples, modalities %s, task %s (%d outputs), %d features, seeds %s",
        dataset, method, protocol, data.n, data.modalities, data.task_type, data.n_outputs,
        layout["n_features"], seeds,
    )  # fmt: skip
    per_seed: dict[int, dict[str, Any]] = {}
    selection: dict[str, Any] = {}
    shared: ProbeFit | None = None
    with building_run(out) as tmp:
        severity = protocol_severity(cfg, dataset, data, protocol)
        for seed in seeds:
            t1 = time.perf_counter()
            sdata, masks = mask_seed(data, protocol, seed, severity=severity)
            if sdata is data and shared is not None:
                fit = shared  # no randomness: the same data gives the same fit
            else:
                with blas_threads(threads):
                    fit = fit_probe(sdata)
                if sdata is data:
                    shared = fit
            pred = fit.predict(probe_features(sdata))
            metrics = compute_metrics(sdata, spec, pred, n_boot=hp.bootstrap, seed=seed)
            metrics["probe"] = {o.name: o.record() for o in fit.outputs}
            vloss = val_loss(sdata, pred)
            d = tmp / f"seed{seed}"
            d.mkdir(parents=True, exist_ok=True)
            predictions_frame(sdata, spec, pred).to_parquet(d / "predictions.parquet", index=False)
            pd.DataFrame(columns=HISTORY_COLUMNS).to_csv(d / "history.csv", index=False)
            meta = {
                **info,
                "seed": seed,
                "epochs_run": 0,
                "best_epoch": None,
                "best_val_loss": _finite(vloss),
                "seconds": round(time.perf_counter() - t1, 3),
                "n_params": int(fit.weight.size + fit.bias.size),
                "deterministic": True,
            }
            (d / "metrics.json").write_text(run_json({**meta, **metrics}))
            save_probe(d, spec, fit, sdata.standardization, layout, {**info, "seed": seed})
            if masks is not None:  # the masks the seed was fitted under (none for full)
                write_masks(data, protocol, seed, d, severity, masks=masks)
            test = metrics["splits"].get("test", {})
            per_seed[seed] = {
                **test.get("macro", {}),
                "epochs_run": 0,
                "best_epoch": None,
                "skipped_labels": test.get("skipped_labels", []),
            }
            selection[str(seed)] = fit.selection()
            auroc = test.get("macro", {}).get("auroc")
            log.info(
                "seed %d: chosen %s, val loss %.4f, test AUROC %s",
                seed,
                {k: (v["C"], v["class_weight"]) for k, v in fit.selection().items()},
                vloss,
                f"{auroc:.3f}" if auroc is not None else "n/a",
            )
        mean, std = seed_mean_std(per_seed)
        seconds = time.perf_counter() - t0
        summary = {
            **finished_summary(short, seeds, per_seed, mean, std, seconds, label_warnings),
            "deterministic": True,
            "seed_note": (
                "the probe has no randomness: seeds change only a protocol's masks (and the "
                "bootstrap); under 'full' every seed folder holds the same fit"
            ),
            "probe": {**settings, "selection": selection},
        }
        (tmp / "summary.json").write_text(run_json(summary))  # last file of the run
    log.info(
        "%s %s %s: test AUROC %s, %.1fs -> %s", dataset, method, protocol,
        f"{mean['auroc']:.3f}" if "auroc" in mean else "n/a", seconds, out,
    )  # fmt: skip
    plain = {s: {k: v for k, v in per_seed[s].items() if k in METRICS} for s in seeds}
    return RunSummary(out, method, protocol, seeds, plain, mean, std, seconds)


__all__ = [
    "PROBE_FORMAT",
    "ProbeModule",
    "blas_threads",
    "load_probe",
    "probe_settings",
    "probe_spec",
    "run_probe",
    "save_probe",
]
