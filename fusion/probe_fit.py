"""The linear probe's fit: features, one logistic regression per output, the choice on val.

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
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fusion.data import FusionData
from fusion.inference import Predictions
from fusion.ranking import roc_auc

log = logging.getLogger("medmix.fusion.probe")

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


def _features(data: FusionData) -> np.ndarray:
    d = data.delta.detach().cpu().numpy()
    blocks, ind = [], []
    for k, (mi, ei) in enumerate(flat_index(data.modalities, data.experts)):
        ok = d[:, mi, ei] > 0
        v = data.dense(k).cpu().numpy().astype(np.float64)  # missing: the train mean (0)
        blocks.append(v)
        ind.append((~ok).astype(np.float64))
    return np.concatenate([*blocks, np.stack(ind, axis=1)], axis=1)


def flat_index(modalities: list[str], experts: dict[str, list[str]]) -> list[tuple[int, int]]:
    return [(mi, ei) for mi, m in enumerate(modalities) for ei in range(len(experts[m]))]


def probe_features(data: FusionData) -> np.ndarray:
    """(N, F) float64: standardised embeddings (0 where missing), then 1 per missing expert."""
    return _features(data)


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
        with np.errstate(over="ignore"):  # exp(-logit) -> inf for logit < -709: probability 0
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
    y = y.astype(bool)
    if y.any() and not y.all():
        return "auroc", roc_auc(y, p)
    p = np.clip(p, EPS, 1 - EPS)
    return "log_loss", -float(np.mean(np.where(y, -np.log(p), -np.log1p(-p))))


def _multiclass_score(y: np.ndarray, p: np.ndarray) -> tuple[str, float]:
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


__all__ = [
    "C_GRID",
    "CLASS_WEIGHTS",
    "GRID",
    "MAX_ITER",
    "TOL",
    "OutputFit",
    "ProbeFit",
    "feature_layout",
    "fit_probe",
    "flat_index",
    "probe_features",
    "val_loss",
]
