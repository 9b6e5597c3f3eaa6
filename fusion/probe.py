"""Linear probe: a logistic regression on the concatenated expert embeddings (``linear-probe``).

The Table 1 reference a reviewer asks for first: does a fusion method beat a plain logistic
regression on the same features, caches and split?

Features, one row per sample (:func:`probe_features`): every expert embedding of the run's
modalities in :class:`fusion.data.FusionData`'s flat (modality, expert) order, standardised
with the statistics :func:`fusion.data.load_fusion_data` fits on the TRAIN split's available
rows; a missing expert is imputed with the train mean (0 after standardisation); then one 0/1
missingness indicator per expert (1 = missing), in the same order.

Model: scikit-learn ``LogisticRegression`` (L2, ``lbfgs``, :data:`MAX_ITER`, :data:`TOL`), fitted
on the train rows only:

* binary, multi-task binary and multilabel: one model per label / task (one-vs-rest), on the
  train rows where that label is known;
* multiclass: one multinomial model (a class absent from train gets logit
  :data:`ABSENT_LOGIT`).

Per output, ``C`` and ``class_weight`` are chosen from :data:`GRID` on the VAL split: the
highest val AUROC (multiclass: mean one-vs-rest AUROC over the classes defined on val), the
lowest val log-loss where AUROC is undefined there, the first grid point (increasing ``C``,
``None`` before ``balanced``) on ties. Only train and val rows ever reach a fit or a choice; test
and external rows are only predicted. A label with a single class in train is predicted at its
(smoothed) train prevalence.

Outputs: exactly a fusion run's layout (:func:`fusion.train.run_training`), so evaluation, the
metrics table and Table 1 read it unchanged::

    {out}/seed{k}/predictions.parquet  metrics.json  history.csv  model.safetensors  config.json
    {out}/summary.json

``history.csv`` has the usual columns and no rows (no epochs). ``model.safetensors`` holds the
linear map (``weight`` (C, F) and ``bias`` (C,), float64, format :data:`PROBE_FORMAT`) and
``config.json`` the spec, the standardisation statistics and the feature layout — no pickled
scikit-learn object. :func:`fusion.registry.load_model` rebuilds it as :class:`ProbeModule`
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
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusion.data import FusionData, Standardization
from fusion.registry import LoadedModel, ModelSpec, Predictions
from medmix.methods import PROBE, MethodError

log = logging.getLogger("medmix.fusion.probe")

PROBE_FORMAT = "medmix-linear-probe/1"
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
CLASS_WEIGHTS = (None, "balanced")
GRID = tuple((c, w) for c in C_GRID for w in CLASS_WEIGHTS)  # tie-break: this order
MAX_ITER = 5000
TOL = 1e-4  # scikit-learn's default
ABSENT_LOGIT = -50.0  # multiclass: a class never seen in train
EPS = 1e-12


# -- features --------------------------------------------------------------------------------


def feature_layout(data: FusionData) -> dict[str, Any]:
    """Column blocks of :func:`probe_features`: the experts' embeddings, then the indicators."""
    flat = data.flat_experts
    return {
        "experts": [f"{m}/{e}" for m, e in flat],
        "dims": [int(data.dims[m][e]) for m, e in flat],
        "indicators": [f"missing:{m}/{e}" for m, e in flat],
        "n_features": int(sum(data.dims[m][e] for m, e in flat) + len(flat)),
    }


def _features(xs: list[torch.Tensor], delta: torch.Tensor, flat_index: list[tuple[int, int]]):
    d = delta.detach().cpu().numpy()
    blocks, ind = [], []
    for x, (mi, ei) in zip(xs, flat_index, strict=True):
        ok = d[:, mi, ei] > 0
        v = x.detach().cpu().numpy().astype(np.float64)
        blocks.append(np.where(ok[:, None], v, 0.0))  # missing: the train mean (0)
        ind.append((~ok).astype(np.float64))
    return np.concatenate([*blocks, np.stack(ind, axis=1)], axis=1)


def _flat_index(modalities: list[str], experts: dict[str, list[str]]) -> list[tuple[int, int]]:
    return [(mi, ei) for mi, m in enumerate(modalities) for ei in range(len(experts[m]))]


def probe_features(data: FusionData) -> np.ndarray:
    """(N, F) float64: standardised embeddings (0 where missing), then 1 per missing expert."""
    return _features(data.x, data.delta, _flat_index(data.modalities, data.experts))


# -- fitting and selection on val ------------------------------------------------------------


@dataclass
class OutputFit:
    """The chosen model of one output (a label / task, or all classes of a multiclass task)."""

    name: str
    weight: np.ndarray  # (F,) binary, (K, F) multiclass
    bias: np.ndarray  # () binary, (K,) multiclass
    C: float | None
    class_weight: str | None
    criterion: str  # auroc / log_loss / none (no val rows) / constant (one class in train)
    val_score: float | None
    n_train: int
    n_val: int
    n_iter: int = 0
    converged: bool = True
    grid: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("weight")
        d.pop("bias")
        return d


@dataclass
class ProbeFit:
    """Every output's chosen model, as one linear map ``logits = X @ weight.T + bias``."""

    task_type: str
    output_names: list[str]
    weight: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    outputs: list[OutputFit]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def predict(self, features: np.ndarray) -> Predictions:
        return _predictions(self.logits(features), self.task_type)

    def selection(self) -> dict[str, dict[str, Any]]:
        return {
            o.name: {
                "C": o.C,
                "class_weight": o.class_weight,
                "criterion": o.criterion,
                "val_score": o.val_score,
            }
            for o in self.outputs
        }


def _predictions(logits: np.ndarray, task_type: str) -> Predictions:
    if task_type == "multiclass":
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs = e / e.sum(axis=1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-logits))
    return Predictions(probs=probs, logits=logits, alpha=None, beta=None)


def _lr(c: float, class_weight: str | None):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, class_weight=class_weight, solver="lbfgs", max_iter=MAX_ITER, tol=TOL
    )


def _fit(x: np.ndarray, y: np.ndarray, c: float, class_weight: str | None):
    from sklearn.exceptions import ConvergenceWarning

    model = _lr(c, class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


def _binary_score(y: np.ndarray, p: np.ndarray) -> tuple[str, float]:
    """(criterion, score to maximise): AUROC, else minus the log-loss."""
    from fusion.ranking import roc_auc

    y = y.astype(bool)
    if y.any() and not y.all():
        return "auroc", roc_auc(y, p)
    p = np.clip(p, EPS, 1 - EPS)
    return "log_loss", -float(np.mean(np.where(y, -np.log(p), -np.log1p(-p))))


def _multiclass_score(y: np.ndarray, p: np.ndarray) -> tuple[str, float]:
    from fusion.ranking import roc_auc

    aucs = [
        roc_auc(y == k, p[:, k]) for k in range(p.shape[1]) if (y == k).any() and (y != k).any()
    ]
    if aucs:
        return "auroc", float(np.mean(aucs))
    py = np.clip(p[np.arange(len(y)), y], EPS, 1.0)
    return "log_loss", -float(np.mean(np.log(py)))


def _n_iter(model: Any) -> int:
    return int(np.max(np.asarray(model.n_iter_)))


def fit_binary(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> OutputFit:
    """One label: every grid point fitted on (x_tr, y_tr), the best on (x_val, y_val) kept."""
    y_tr = (y_tr > 0.5).astype(np.int64)
    y_val = (y_val > 0.5).astype(np.int64)
    f = x_tr.shape[1]
    if len(np.unique(y_tr)) < 2:
        p = (y_tr.sum() + 0.5) / (len(y_tr) + 1.0)
        log.warning(
            "%s: one class in train (%d rows): predicted at its prevalence", name, len(y_tr)
        )
        return OutputFit(name, np.zeros(f), np.asarray(math.log(p / (1 - p))), None, None,
                         "constant", None, len(y_tr), len(y_val))  # fmt: skip
    best: tuple[float, Any, float, str | None, str] | None = None
    grid = []
    for c, w in GRID:
        model = _fit(x_tr, y_tr, c, w)
        if len(y_val):
            crit, score = _binary_score(y_val, model.predict_proba(x_val)[:, 1])
        else:
            crit, score = "none", 0.0
        grid.append({"C": c, "class_weight": w, "criterion": crit, "val_score": score,
                     "n_iter": _n_iter(model)})  # fmt: skip
        if best is None or score > best[0]:
            best = (score, model, c, w, crit)
    score, model, c, w, crit = best
    n_iter = _n_iter(model)
    return OutputFit(
        name, model.coef_[0].astype(np.float64), np.asarray(float(model.intercept_[0])), c, w,
        crit, score if crit != "none" else None, len(y_tr), len(y_val), n_iter,
        n_iter < MAX_ITER, grid,
    )  # fmt: skip


def _full_classes(model: Any, k: int, f: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, F) weight and (K,) bias over every class from a model fitted on the train classes."""
    weight = np.zeros((k, f))
    bias = np.full(k, ABSENT_LOGIT)
    classes = np.asarray(model.classes_, dtype=np.int64)
    if len(classes) == 2:  # scikit-learn's binary form: logit of classes[1] vs classes[0]
        weight[classes[1]] = model.coef_[0]
        bias[classes[0]], bias[classes[1]] = 0.0, float(model.intercept_[0])
    else:
        weight[classes] = model.coef_
        bias[classes] = model.intercept_
    return weight, bias


def fit_multiclass(
    name: str, k: int, x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> OutputFit:
    """One multinomial model over ``k`` classes, chosen on val like :func:`fit_binary`."""
    f = x_tr.shape[1]
    present = np.unique(y_tr)
    if len(present) < 2:
        counts = np.bincount(y_tr, minlength=k) + 1.0
        log.warning("%s: one class in train: predicted at the class prevalence", name)
        return OutputFit(name, np.zeros((k, f)), np.log(counts / counts.sum()), None, None,
                         "constant", None, len(y_tr), len(y_val))  # fmt: skip
    best = None
    grid = []
    for c, w in GRID:
        model = _fit(x_tr, y_tr, c, w)
        weight, bias = _full_classes(model, k, f)
        if len(y_val):
            p = _predictions(x_val @ weight.T + bias, "multiclass").probs
            crit, score = _multiclass_score(y_val, p)
        else:
            crit, score = "none", 0.0
        grid.append({"C": c, "class_weight": w, "criterion": crit, "val_score": score,
                     "n_iter": _n_iter(model)})  # fmt: skip
        if best is None or score > best[0]:
            best = (score, model, weight, bias, c, w, crit)
    score, model, weight, bias, c, w, crit = best
    n_iter = _n_iter(model)
    return OutputFit(name, weight, bias, c, w, crit, score if crit != "none" else None,
                     len(y_tr), len(y_val), n_iter, n_iter < MAX_ITER, grid)  # fmt: skip


def fit_probe(data: FusionData) -> ProbeFit:
    """The probe of ``data``: fitted on its train rows, C / class weight chosen on its val rows.

    Test and external rows are never passed to a fit or a choice (only their features are
    computed, to be predicted afterwards).
    """
    x = probe_features(data)
    y = data.y.detach().cpu().numpy()
    train, val = data.split == "train", data.split == "val"
    if data.task_type == "multiclass":
        name = data.label_names[0]
        k = data.n_outputs
        tr, va = train & (y >= 0), val & (y >= 0)
        o = fit_multiclass(name, k, x[tr], y[tr], x[va], y[va])
        names = [f"{name}_{c}" for c in (data.class_names or [])]
        return ProbeFit(data.task_type, names, o.weight, o.bias, [o])
    outs = []
    for j, name in enumerate(data.label_names):
        known = np.isfinite(y[:, j])
        tr, va = train & known, val & known
        outs.append(fit_binary(name, x[tr], y[tr, j], x[va], y[va, j]))
    weight = np.stack([o.weight for o in outs])
    bias = np.asarray([float(o.bias) for o in outs])
    return ProbeFit(data.task_type, list(data.label_names), weight, bias, outs)


def val_loss(data: FusionData, pred: Predictions) -> float:
    """Mean val cross-entropy over the known labels (the fusion runs' ``best_val_loss``)."""
    y = data.y.detach().cpu().numpy()[data.split == "val"]
    p = pred.probs[data.split == "val"]
    if data.task_type == "multiclass":
        k = y >= 0
        if not k.any():
            return float("nan")
        return float(-np.mean(np.log(np.clip(p[k, y[k]], EPS, 1.0))))
    k = np.isfinite(y)
    if not k.any():
        return float("nan")
    pc = np.clip(p[k], EPS, 1 - EPS)
    return float(-np.mean(np.where(y[k] > 0.5, np.log(pc), np.log1p(-pc))))


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
        # the device marker the prediction helpers read (fusion.predict.predict_tensors)
        self.register_buffer("prior", torch.zeros(spec.n_outputs, dtype=torch.float64))
        self._flat = _flat_index(spec.modalities, spec.experts)

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
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": np.ascontiguousarray(fit.weight, dtype=np.float64),
        "bias": np.ascontiguousarray(fit.bias, dtype=np.float64),
    }
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": PROBE_FORMAT})
    cfg = {
        "format": PROBE_FORMAT,
        "spec": spec.to_dict(),
        "standardization": standardization.to_dict(),
        "features": layout,
        "selection": fit.selection(),
        "info": info or {},
    }
    (directory / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))


def load_probe(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A saved probe as a :class:`fusion.registry.LoadedModel` (its model a ProbeModule)."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
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
    return LoadedModel(
        model, spec, Standardization.from_dict(cfg["standardization"]), cfg.get("info", {})
    )


# -- the run ---------------------------------------------------------------------------------


def probe_spec(data: FusionData, method: str) -> ModelSpec:
    return ModelSpec(
        method=PROBE,
        modalities=list(data.modalities),
        experts={m: list(data.experts[m]) for m in data.modalities},
        dims={m: dict(data.dims[m]) for m in data.modalities},
        task_type=data.task_type,
        label_names=list(data.label_names),
        n_outputs=data.n_outputs,
        class_names=data.class_names,
        d=0,
        adapter_bottleneck=0,
        dropout=0.0,
        run_method=method,
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


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)


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
    (one fit shared by all seeds under ``full``). Returns a :class:`fusion.train.RunSummary`.
    """
    from fusion.data import load_fusion_data_cached
    from fusion.metrics import METRICS, seed_mean_std
    from fusion.protocols import apply_protocol, protocol_severity
    from fusion.registry import resolve_method
    from fusion.train import (
        HISTORY_COLUMNS,
        FusionHParams,
        RunSummary,
        _write_masks,
        compute_metrics,
        predictions_frame,
    )
    from medmix.config import dataset_paths
    from medmix.io import fresh_tmp_dir, replace_dir
    from medmix.plan import method_inputs

    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    if device != "cpu":
        log.info("%s: scikit-learn runs on the CPU (device %s not used)", method, device)
    hp = FusionHParams.from_config(cfg.get("fusion"))  # validates the section; bootstrap
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
    spec = probe_spec(data, method)
    layout = feature_layout(data)
    log.info(
        "%s %s %s: %d samples, modalities %s, task %s (%d outputs), %d features, seeds %s",
        dataset, method, protocol, data.n, data.modalities, data.task_type, data.n_outputs,
        layout["n_features"], seeds,
    )  # fmt: skip
    tmp = fresh_tmp_dir(out)
    per_seed: dict[int, dict[str, Any]] = {}
    selection: dict[str, Any] = {}
    shared: ProbeFit | None = None
    try:
        severity = protocol_severity(cfg, dataset, data, protocol)
        for seed in seeds:
            t1 = time.perf_counter()
            sdata = apply_protocol(data, protocol, seed, severity=severity)
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
            (d / "metrics.json").write_text(_json({**meta, **metrics}))
            save_probe(d, spec, fit, sdata.standardization, layout, {**info, "seed": seed})
            _write_masks(data, protocol, seed, d, severity)
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
            **short,
            "status": "ok",
            "split": "test",
            "seeds": seeds,
            "per_seed": {str(s): per_seed[s] for s in seeds},
            "mean": mean,
            "std": std,
            "std_ddof": 1,
            "seconds": round(seconds, 3),
            "deterministic": True,
            "seed_note": (
                "the probe has no randomness: seeds change only a protocol's masks (and the "
                "bootstrap); under 'full' every seed folder holds the same fit"
            ),
            "probe": {**settings, "selection": selection},
        }
        (tmp / "summary.json").write_text(_json(summary))  # last file of the run
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "%s %s %s: test AUROC %s, %.1fs -> %s", dataset, method, protocol,
        f"{mean['auroc']:.3f}" if "auroc" in mean else "n/a", seconds, out,
    )  # fmt: skip
    plain = {s: {k: v for k, v in per_seed[s].items() if k in METRICS} for s in seeds}
    return RunSummary(out, method, protocol, seeds, plain, mean, std, seconds)


__all__ = [
    "C_GRID",
    "CLASS_WEIGHTS",
    "GRID",
    "PROBE_FORMAT",
    "ProbeFit",
    "ProbeModule",
    "feature_layout",
    "fit_probe",
    "load_probe",
    "probe_features",
    "run_probe",
    "save_probe",
]
