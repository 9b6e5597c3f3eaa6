"""What a dataset's labels allow a training run to do, checked before the first epoch.

A run must never look finished when it did not learn (docs/design.md §3.3): a train split
without any known label is refused (:class:`TrainingError`); a validation split without any
known label falls back, as a missing one does, to early stopping on the training loss with
decision thresholds of 0.5; a label that has a single class in the train split (the model can
only learn its prevalence: a constant, test AUROC 0.5) or no usable value in the val split is
named. Every such finding is one line, logged and recorded in the run's ``summary.json``
(``warnings``) by :func:`fusion.train.run_training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medmix.errors import UserError

if TYPE_CHECKING:
    from fusion.data import FusionData


class TrainingError(UserError, ValueError):
    """A run that cannot produce a trained model (no known training label, a loss that
    became non-finite): one line naming the dataset, method, seed, epoch or labels (the
    command line prints it as ``error: ...``, exit status 2)."""


@dataclass
class LabelChecks:
    """The findings of :func:`check_labels`: ``warnings`` (one line each) and whether the
    validation split can drive early stopping (else the training loss does)."""

    warnings: list[str] = field(default_factory=list)
    val_usable: bool = True


def output_names(data: FusionData) -> list[str]:
    """One name per output: the labels, or ``{label}_{class}`` (multiclass)."""
    if data.task_type == "multiclass":
        return [f"{data.label_names[0]}_{c}" for c in (data.class_names or [])]
    return list(data.label_names)


def class_counts(data: FusionData, split: str) -> tuple[int, list[tuple[int, int]]]:
    """Rows of ``split`` and, per output, (known labels, positives) among them."""
    rows = data.split == split
    y = data.y.cpu().numpy()[rows]
    if data.task_type == "multiclass":
        known = y >= 0
        return int(rows.sum()), [
            (int(known.sum()), int((y[known] == c).sum())) for c in range(data.n_outputs)
        ]
    known = np.isfinite(y)  # (rows, labels)
    pos = np.where(known, y, 0) > 0.5
    return int(rows.sum()), [
        (int(known[:, j].sum()), int(pos[:, j].sum())) for j in range(y.shape[1])
    ]


def _names(names: list[str]) -> str:
    return ", ".join(names)


def check_labels(data: FusionData, method: str = "") -> LabelChecks:
    """The label findings of ``data`` for a training run (see the module docstring).

    Raises :class:`TrainingError` when the train split has no known label at all.
    """
    who = f"{data.dataset} {method}".strip()
    names = output_names(data)
    out = LabelChecks()
    n_train, train = class_counts(data, "train")
    if n_train and not any(n for n, _ in train):
        raise TrainingError(
            f"{who}: the train split has {n_train} rows but no known label "
            f"({_names(names)}): there is nothing to train on"
        )
    multiclass = data.task_type == "multiclass"
    for name, (n, pos) in zip(names, train, strict=True):
        if n and pos in (0, n):
            what = (
                ("never occurs" if pos == 0 else "is the only class")
                if multiclass
                else f"has only {'negatives' if pos == 0 else 'positives'}"
            )
            out.warnings.append(
                f"{who}: label {name} {what} among the {n} known labels of the train split: the "
                "model can only learn a constant for it (test AUROC of a constant, 0.5)"
            )
        elif not n:
            out.warnings.append(
                f"{who}: label {name} has no known value in the train split: the model cannot "
                "learn it"
            )
    n_val, val = class_counts(data, "val")
    if not n_val or not any(n for n, _ in val):
        out.val_usable = False
        where = (
            "no validation split"
            if not n_val
            else f"the val split has {n_val} rows but no known label ({_names(names)})"
        )
        out.warnings.append(
            f"{who}: {where}: early stopping on the training loss, decision thresholds 0.5"
        )
        return out
    unknown = [name for name, (n, _) in zip(names, val, strict=True) if not n]
    if unknown:
        out.warnings.append(
            f"{who}: label(s) {_names(unknown)} have no known value in the val split: left out "
            "of early stopping, decision threshold 0.5"
        )
    if not multiclass:
        single = [name for name, (n, p) in zip(names, val, strict=True) if n and p in (0, n)]
        if single:
            out.warnings.append(
                f"{who}: label(s) {_names(single)} have a single class in the val split: "
                "decision threshold 0.5"
            )
    return out


__all__ = ["LabelChecks", "TrainingError", "check_labels", "class_counts", "output_names"]
