"""Evaluation metrics (docs/design.md §7): AUROC, AUPRC, F1, macro-F1, accuracy, Brier score, ECE —
per label and macro — and 95 % bootstrap confidence intervals.

Binary / multilabel (one output per label or task): the decision threshold of each label is
chosen on the VALIDATION split (maximising that label's F1) and applied unchanged to the
other splits. Per label: ``auroc``, ``auprc``, ``f1`` (positive-class F1) and ``accuracy``.
The ``macro`` entry averages each of them over labels (multilabel) or tasks (multi-task
binary; for multilabel, accuracy is the mean per-label accuracy) and adds ``macro_f1``, the
paper's mF1, i.e. scikit-learn's ``f1_score(average="macro")`` of the thresholded predictions:
the mean positive-class F1 over labels / tasks, and for a single binary task the mean of the
positive- and negative-class F1 (which is what the paper's ccRCC numbers are: mF1 0.73 at
88 % prevalence and 0.90 accuracy).

Multiclass (one label column with K classes): AUROC / AUPRC one-vs-rest per class, F1 per
class from the arg-max prediction; macro = mean over classes (``f1`` = ``macro_f1``);
accuracy = top-1 accuracy.

Calibration. ``brier``: mean squared difference between the predicted probability and the
0/1 label (per label; multiclass macro: the multi-class Brier score, mean over samples of
Σ_c (p_c − 1[y = c])²). ``ece``: expected calibration error with 15 equal-width bins on
[0, 1], ``Σ_b (n_b / n) · |mean(y) − mean(p)|`` over the bins of the positive-class
probability (per label); multiclass macro: the top-label ECE (confidence = max p, correct =
arg-max hit). Lower is better for both.

Bootstrap (:func:`bootstrap_ci`): the split's samples are resampled with replacement
(``n_boot`` times, seeded); each replicate's metrics are computed with the same thresholds
(chosen on validation, not re-tuned) by vectorised re-implementations of the formulas above
(rank-based AUROC with average ranks for ties; average precision over distinct thresholds,
as scikit-learn defines it); the interval is the percentile interval [2.5 %, 97.5 %]. A label
that has no positive or no negative in a replicate is left out of that replicate's macro.

A label (or class) with no positive or no negative among the known labels of a split is
skipped in that split — named in ``skipped_labels``, left out of the macro average, never
averaged in as NaN, and never scored as a number (no AUROC of 0.5): ``notes`` says why per
label (``metrics.json``: ``splits.{split}.notes``), the metrics table
(:func:`fusion.evaluate.collect_metrics`) holds its AUROC as NaN, and when every label of a
split is skipped the macro AUROC is NaN (JSON: null).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusion.bootstrap_ranks import RankedLabel, boot_auroc, boot_average_precision, draw_counts
from fusion.ranking import average_precision as average_precision_score
from fusion.ranking import precision_recall_curve
from fusion.ranking import roc_auc as roc_auc_score

if TYPE_CHECKING:
    from fusion.data import FusionData
    from fusion.inference import Predictions
    from fusion.registry import ModelSpec

METRICS = ("auroc", "auprc", "f1", "macro_f1", "accuracy", "brier", "ece")
LABEL_METRICS = ("auroc", "auprc", "f1", "accuracy", "brier", "ece")
DEFAULT_THRESHOLD = 0.5
ECE_BINS = 15
CI_LEVEL = 0.95
EVAL_SPLITS = ("val", "test", "external")  # the splits a seed's metrics.json covers
CI_SPLITS = ("test", "external")  # ... with bootstrap intervals


@dataclass
class SplitMetrics:
    n: int
    n_no_modality: int
    macro: dict[str, float]
    per_label: dict[str, dict[str, float]]
    skipped_labels: list[str] = field(default_factory=list)
    ci: dict | None = None  # bootstrap confidence intervals (see bootstrap_ci)
    notes: dict[str, str] = field(default_factory=dict)  # skipped label -> why undefined

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["ci"] is None:
            d.pop("ci")
        if not d["notes"]:  # written only where a label is undefined
            d.pop("notes")
        return d


def undefined_note(n: int, n_pos: int, multiclass: bool = False) -> str:
    """Why a label's (class's) AUROC is undefined on a split of ``n`` known labels."""
    if n == 0:
        what = "no known label"
    elif multiclass:
        what = f"{'no' if n_pos == 0 else 'every'} sample of this class among {n} known labels"
    else:
        what = f"only {'negatives' if n_pos == 0 else 'positives'} among {n} known labels"
    return f"{what}: AUROC undefined (NaN), left out of the macro average"


def undefined_notes(metrics: dict[str, Any], who: str) -> list[str]:
    """One line per label whose AUROC is undefined in a reported split (test, external) of a
    seed's ``metrics`` (the val split's are :mod:`fusion.train_checks`' findings)."""
    return [
        f"{who}: {split} split: label {name}: {note}"
        for split, sm in metrics.get("splits", {}).items()
        if split in CI_SPLITS
        for name, note in (sm.get("notes") or {}).items()
    ]


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold t (predict ``p >= t``) that maximises F1 on (y, p); 0.5 if undefined."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[int(np.argmax(f1))])


def _known(y: np.ndarray) -> np.ndarray:
    return np.isfinite(y)


def choose_thresholds(y_val: np.ndarray, p_val: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per label, the F1-maximising threshold on the validation split (0.5 if undefined)."""
    out = {}
    for j, name in enumerate(names):
        k = _known(y_val[:, j])
        out[name] = best_f1_threshold(y_val[k, j], p_val[k, j]) if k.any() else DEFAULT_THRESHOLD
    return out


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of (p − y)² for 0/1 labels ``y`` and positive-class probabilities ``p``."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(np.asarray(p, dtype=np.float64) * n_bins), 0, n_bins - 1).astype(int)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of probabilities ``p`` against 0/1 outcomes ``y``: Σ_b (n_b/n)|mean(y) − mean(p)|."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if not len(y):
        return float("nan")
    sums = np.bincount(_bin_index(p, n_bins), weights=y - p, minlength=n_bins)
    return float(np.abs(sums).sum() / len(y))


def binary_label_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of one label; ``y`` must hold both classes."""
    yb = y.astype(bool)
    pred = p >= threshold
    return {
        "auroc": float(roc_auc_score(yb, p)),
        "auprc": float(average_precision_score(yb, p)),
        "f1": _f1(yb, pred),
        "accuracy": float(np.mean(pred == yb)),
        "brier": brier_score(yb, p),
        "ece": expected_calibration_error(yb, p),
    }


def multiclass_brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean over samples of Σ_c (p_c − 1[y = c])² (class ids ``y``, probabilities ``p (N, K)``)."""
    onehot = np.eye(p.shape[1])[np.asarray(y, dtype=np.int64)]
    return float(np.mean(np.sum((np.asarray(p, dtype=np.float64) - onehot) ** 2, axis=1)))


def top_label_ece(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: confidence max_c p_c against the arg-max being right."""
    p = np.asarray(p, dtype=np.float64)
    return expected_calibration_error((p.argmax(axis=1) == y).astype(float), p.max(axis=1), n_bins)


def _macro(
    per_label: dict[str, dict[str, float]], skipped: list[str], keys: tuple[str, ...]
) -> dict[str, float]:
    used = [v for k, v in per_label.items() if k not in skipped]
    if not used:
        return {}
    return {m: float(np.mean([v[m] for v in used])) for m in keys if all(m in v for v in used)}


def evaluate_split(
    y: np.ndarray,
    probs: np.ndarray,
    task_type: str,
    names: list[str],
    thresholds: dict[str, float] | None = None,
    n_no_modality: int = 0,
) -> SplitMetrics:
    """Metrics of one split.

    ``y``: (N, C) with NaN for unknown (binary / multilabel) or (N,) class ids with -1 for
    unknown (multiclass); ``probs``: (N, C); ``names``: one per output column.
    """
    probs = np.asarray(probs, dtype=np.float64)
    per_label: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    notes: dict[str, str] = {}
    if task_type == "multiclass":
        y = np.asarray(y).astype(np.int64)
        known = y >= 0
        yk, pk = y[known], probs[known]
        pred = pk.argmax(axis=1) if len(pk) else np.zeros(0, np.int64)
        for c, name in enumerate(names):
            yc = yk == c
            entry: dict[str, float] = {"n": int(len(yc)), "n_pos": int(yc.sum())}
            if yc.all() or not yc.any():
                skipped.append(name)
                notes[name] = undefined_note(len(yc), int(yc.sum()), multiclass=True)
            else:
                entry.update(
                    auroc=float(roc_auc_score(yc, pk[:, c])),
                    auprc=float(average_precision_score(yc, pk[:, c])),
                    f1=_f1(yc, pred == c),
                    brier=brier_score(yc, pk[:, c]),
                    ece=expected_calibration_error(yc, pk[:, c]),
                )
            per_label[name] = entry
        macro = _macro(per_label, skipped, ("auroc", "auprc", "f1"))
        if "f1" in macro:
            macro["macro_f1"] = macro["f1"]
        if len(yk):
            macro["accuracy"] = float(np.mean(pred == yk))
            macro["brier"] = multiclass_brier(yk, pk)
            macro["ece"] = top_label_ece(yk, pk)
    else:
        y = np.asarray(y, dtype=np.float64)
        thresholds = thresholds or {}
        for j, name in enumerate(names):
            k = _known(y[:, j])
            yj, pj = y[k, j], probs[k, j]
            entry = {"n": int(k.sum()), "n_pos": int((yj == 1).sum())}
            if len(yj) == 0 or yj.all() or not yj.any():
                skipped.append(name)
                notes[name] = undefined_note(len(yj), int((yj == 1).sum()))
            else:
                entry.update(binary_label_metrics(yj, pj, thresholds.get(name, DEFAULT_THRESHOLD)))
            per_label[name] = entry
        macro = _macro(per_label, skipped, LABEL_METRICS)
        if task_type == "binary" and len(names) == 1:
            if not skipped:  # one binary task: mean F1 of the positive and the negative class
                k = _known(y[:, 0])
                yb, pred = (
                    y[k, 0].astype(bool),
                    probs[k, 0] >= thresholds.get(names[0], DEFAULT_THRESHOLD),
                )
                macro["macro_f1"] = (_f1(yb, pred) + _f1(~yb, ~pred)) / 2
        elif "f1" in macro:
            macro["macro_f1"] = macro["f1"]
    if names and len(skipped) == len(names):  # no label defined: the macro AUROC is NaN
        macro["auroc"] = float("nan")
    return SplitMetrics(
        n=int(len(probs)),
        n_no_modality=int(n_no_modality),
        macro=macro,
        per_label=per_label,
        skipped_labels=skipped,
        notes=notes,
    )


def auroc_defined(y: np.ndarray, task_type: str) -> bool:
    """Whether some label (class) of ``y`` has both a positive and a negative known value."""
    y = np.asarray(y)
    if task_type == "multiclass":
        return len(np.unique(y[y >= 0])) >= 2
    y = y.astype(np.float64).reshape(len(y), -1)
    return bool(any(np.nanmax(c) > np.nanmin(c) for c in y.T if np.isfinite(c).any()))


def macro_auroc(y: np.ndarray, logits: np.ndarray, task_type: str) -> float:
    """Macro AUROC of raw logits (softmax for multiclass, sigmoid otherwise); NaN when no
    label has both classes. The early-stopping score of ``fusion.early_stopping: auroc``."""
    logits = np.asarray(logits, dtype=np.float64)
    if task_type == "multiclass":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-logits))
    names = [str(j) for j in range(logits.shape[1])]
    return float(evaluate_split(y, probs, task_type, names).macro.get("auroc", np.nan))


# -- bootstrap confidence intervals ---------------------------------------------------------


def _boot_f1(y: np.ndarray, pred: np.ndarray, known: np.ndarray) -> np.ndarray:
    tp = (pred & y & known).sum(axis=1).astype(np.float64)
    fp = (pred & ~y & known).sum(axis=1)
    fn = (~pred & y & known).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (2 * tp + fp + fn)
    return np.where(tp > 0, f1, 0.0)


def _boot_ece(outcome: np.ndarray, p: np.ndarray, known: np.ndarray) -> np.ndarray:
    b, n = p.shape
    bins = _bin_index(np.where(known, p, 0.0), ECE_BINS) + (np.arange(b) * ECE_BINS)[:, None]
    sums = np.bincount(
        bins.ravel(), weights=((outcome - p) * known).ravel(), minlength=b * ECE_BINS
    ).reshape(b, ECE_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(sums).sum(axis=1) / known.sum(axis=1)


def _percentile_ci(values: np.ndarray, level: float) -> list[float] | None:
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    task_type: str,
    names: list[str],
    thresholds: dict[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = CI_LEVEL,
    skip: list[str] | None = None,
    chunk: int = 200,
) -> dict:
    """Percentile bootstrap intervals of the macro and per-label metrics of one split.

    Returns ``{"level", "n_boot", "seed", "macro": {metric: [lo, hi]}, "per_label": {label:
    {metric: [lo, hi]}}}`` (a metric without any valid replicate is left out). Labels in
    ``skip`` (those skipped on the whole split) are left out of everything.
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    skip = set(skip or [])
    out: dict = {"level": level, "n_boot": int(n_boot), "seed": int(seed), "macro": {},
                 "per_label": {}}  # fmt: skip
    if n_boot <= 0 or n == 0:
        return out
    rng = np.random.default_rng(seed)
    thresholds = thresholds or {}
    used = [j for j, name in enumerate(names) if name not in skip]
    per_label: dict[str, dict[str, list[np.ndarray]]] = {names[j]: {} for j in used}
    macro: dict[str, list[np.ndarray]] = {}

    def add(store: dict[str, list[np.ndarray]], key: str, value: np.ndarray) -> None:
        store.setdefault(key, []).append(value)

    if task_type == "multiclass":
        y_int = np.asarray(y, dtype=np.int64)
        ranked = {j: RankedLabel(y_int == j, probs[:, j], y_int >= 0) for j in used}
    else:
        y_float = np.asarray(y, dtype=np.float64)
        ranked = {j: RankedLabel(y_float[:, j], probs[:, j], np.isfinite(y_float[:, j]))
                  for j in used}  # fmt: skip
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        counts = draw_counts(idx, n)
        done += b
        label_vals: dict[str, list[np.ndarray]] = {}
        if task_type == "multiclass":
            yi = np.asarray(y, dtype=np.int64)[idx]
            pi = probs[idx]  # (b, n, K)
            known = yi >= 0
            pred = pi.argmax(axis=2)
            for j in used:
                yc = yi == j
                vals = {
                    "auroc": boot_auroc(groups := ranked[j].group_counts(counts)),
                    "auprc": boot_average_precision(groups),
                    "f1": _boot_f1(yc, pred == j, known),
                }
                valid = np.isfinite(vals["auroc"])
                for key, v in vals.items():
                    v = np.where(valid, v, np.nan)
                    add(per_label[names[j]], key, v)
                    label_vals.setdefault(key, []).append(v)
            nk = known.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                add(macro, "accuracy", ((pred == yi) & known).sum(axis=1) / nk)
                onehot = np.arange(pi.shape[2]) == np.where(known, yi, 0)[..., None]
                sq = ((pi - onehot) ** 2).sum(axis=2)
                add(macro, "brier", (sq * known).sum(axis=1) / nk)
            add(macro, "ece", _boot_ece((pred == yi).astype(float), pi.max(axis=2), known))
        else:
            yall = np.asarray(y, dtype=np.float64)
            for j in used:
                yj = yall[idx, j]
                pj = probs[idx, j]
                known = np.isfinite(yj)
                yb = np.where(known, yj, 0).astype(np.int64)
                pred = pj >= thresholds.get(names[j], DEFAULT_THRESHOLD)
                ybool = yb.astype(bool)
                nk = known.sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    vals = {
                        "auroc": boot_auroc(groups := ranked[j].group_counts(counts)),
                        "auprc": boot_average_precision(groups),
                        "f1": _boot_f1(ybool, pred, known),
                        "accuracy": ((pred == ybool) & known).sum(axis=1) / nk,
                        "brier": (((pj - yb) ** 2) * known).sum(axis=1) / nk,
                        "ece": _boot_ece(yb.astype(float), pj, known),
                    }
                valid = np.isfinite(vals["auroc"])
                if task_type == "binary" and len(names) == 1:
                    f1_neg = _boot_f1(~ybool, ~pred, known)
                    label_vals.setdefault("macro_f1", []).append(
                        np.where(valid, (vals["f1"] + f1_neg) / 2, np.nan)
                    )
                for key, v in vals.items():
                    v = np.where(valid, v, np.nan)
                    add(per_label[names[j]], key, v)
                    label_vals.setdefault(key, []).append(v)
        for key, vs in label_vals.items():
            with np.errstate(invalid="ignore"), _nan_mean_quiet():
                add(macro, key, np.nanmean(np.stack(vs, axis=0), axis=0))
        if (task_type != "binary" or len(names) != 1) and "f1" in label_vals:
            add(macro, "macro_f1", macro["f1"][-1])
    for key in METRICS:
        if key in macro:
            ci = _percentile_ci(np.concatenate(macro[key]), level)
            if ci is not None:
                out["macro"][key] = ci
    for name, store in per_label.items():
        entry = {}
        for key, vs in store.items():
            ci = _percentile_ci(np.concatenate(vs), level)
            if ci is not None:
                entry[key] = ci
        out["per_label"][name] = entry
    return out


class _nan_mean_quiet:
    """Silence numpy's 'Mean of empty slice' warning (an all-NaN replicate stays NaN)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def seed_mean_std(
    per_seed: dict[int, dict[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (ddof 1; 0 for one seed) over seeds of every metric in
    :data:`METRICS` that each seed has. A seed whose value is NaN (undefined) makes the mean
    and std NaN: it is never dropped to leave a smaller spread over the others."""
    keys = [m for m in METRICS if all(m in v for v in per_seed.values())]
    values = {m: [v[m] for v in per_seed.values()] for m in keys}
    mean = {m: float(np.mean(x)) for m, x in values.items()}
    std = {
        m: float(np.std(x, ddof=1)) if len(x) > 1 else (0.0 if np.isfinite(x[0]) else np.nan)
        for m, x in values.items()
    }
    return mean, std


# -- one seed's predictions ------------------------------------------------------------------


def compute_metrics(
    data: FusionData, spec: ModelSpec, pred: Predictions, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Thresholds chosen on val, metrics of val / test / external (+ bootstrap CIs)."""
    y = data.y.cpu().numpy()
    names = spec.output_names
    no_mod = ~data.modality_mask.any(dim=1).cpu().numpy()
    thresholds: dict[str, float] = {}
    if data.task_type != "multiclass":
        val = data.split == "val"
        thresholds = (
            choose_thresholds(y[val], pred.probs[val], names)
            if val.any()
            else {n: 0.5 for n in names}
        )
    splits = {}
    for s in EVAL_SPLITS:
        rows = data.split == s
        if rows.any():
            sm = evaluate_split(
                y[rows],
                pred.probs[rows],
                data.task_type,
                names,
                thresholds,
                int(no_mod[rows].sum()),
            )
            if s in CI_SPLITS and n_boot > 0:
                sm.ci = bootstrap_ci(
                    y[rows], pred.probs[rows], data.task_type, names, thresholds,
                    n_boot=n_boot, seed=seed, skip=sm.skipped_labels,
                )  # fmt: skip
            splits[s] = sm.to_dict()
    return {
        "task_type": data.task_type,
        "labels": names,
        "thresholds": thresholds,
        "splits": splits,
    }
