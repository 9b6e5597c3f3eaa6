"""What a cohort kind provides to the generator: a plan (who, labels, missingness) and a renderer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import pandas as pd

from cohorts.demo.signal import DOMINANT, INFORMATIVE_MISSINGNESS, Signal, sample_rng
from cohorts.splits import patient_split

# informative-missingness: P(modality dropped) = logistic(MNAR_BASE + MNAR_SLOPE * s), s the
# standardised adverse-outcome burden of the sample (on top of the kind's own missingness)
MNAR_BASE = -2.0
MNAR_SLOPE = 1.5

KIND_CODES = {"openi": 1, "mimic": 2, "ccrcc": 3}
T = TypeVar("T")


@dataclass
class Plan:
    """Everything decided before any file is written; rendering sample i needs only row i."""

    kind: str
    seed: int
    shift: float
    samples: pd.DataFrame  # sample_id, patient_id, split, label_* (one row per sample)
    present: dict[str, np.ndarray]  # modality -> bool per sample
    signal: Signal
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample ancillary values


@dataclass(frozen=True)
class CohortKind:
    name: str
    task_type: str
    modalities: dict[str, str]  # modality -> manifest kind
    labels: tuple[str, ...]
    fractions: dict[str, float]
    plan: Callable[..., Plan]  # (n_patients, seed, shift, evidence="additive") -> Plan
    render: Callable[[Plan, int, Path], dict[str, str | None]]  # -> modality values for row i
    description: str = ""

    @classmethod
    def of(cls, module: ModuleType, task_type: str, description: str) -> CohortKind:
        """The kind a cohort module defines: its ``NAME``, ``MODALITIES``, ``LABELS``,
        ``FRACTIONS``, ``plan``, and ``draw`` (one modality of a row, :class:`Draw`), which
        :func:`render_present` runs over each row's present modalities."""
        return cls(
            name=module.NAME,
            task_type=task_type,
            modalities=module.MODALITIES,
            labels=module.LABELS,
            fractions=module.FRACTIONS,
            plan=module.plan,
            render=partial(render_present, modalities=module.MODALITIES, draw=module.draw),
            description=description,
        )


def logistic(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def severity(
    evidence: np.ndarray | float, threshold: np.ndarray | float, sharpness: float = 4.0
) -> np.ndarray:
    """Soft-thresholded evidence: ~0 below the threshold, ~(evidence - threshold) above."""
    return np.logaddexp(0.0, sharpness * (np.asarray(evidence) - threshold)) / sharpness


def evidence_missingness(
    present: dict[str, np.ndarray],
    sig: Signal,
    weights: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """The evidence setting's part of missingness (in place; nothing for additive/redundant).

    ``dominant``: the dominant modality is always present (else the sample has no signal).
    ``informative-missingness``: each modality is also dropped with probability
    ``logistic(MNAR_BASE + MNAR_SLOPE * s)``, ``s`` the standardised fraction of adverse
    outcomes (``Signal.burden``): sicker samples lose modalities more often. ``rng`` is a
    stream of its own, so the kind's other draws stay those of the additive setting.
    """
    mods = list(present)
    if sig.evidence_setting == DOMINANT and sig.dominant is not None:
        for j, m in enumerate(mods):
            present[m] |= sig.dominant == j
    elif sig.evidence_setting == INFORMATIVE_MISSINGNESS:
        burden = sig.burden(weights)
        s = (burden - burden.mean()) / max(float(burden.std()), 1e-9)
        for m in mods:
            present[m] &= rng.random(len(s)) >= logistic(MNAR_BASE + MNAR_SLOPE * s)


def settle_missingness(
    present: dict[str, np.ndarray],
    sig: Signal,
    weights: np.ndarray,
    kind: str,
    seed: int,
    rng: np.random.Generator,
    prefer: str,
) -> None:
    """The evidence setting's missingness (its own stream, ``(seed, kind, 2)``), then no sample
    left with every modality missing (from ``rng``, the kind's plan stream; ``prefer`` mostly)."""
    evidence_missingness(present, sig, weights, sample_rng(seed, KIND_CODES[kind], 2))
    ensure_one_present(present, rng, prefer)


def ensure_one_present(
    present: dict[str, np.ndarray], rng: np.random.Generator, prefer: str
) -> None:
    """Give samples with every modality missing back one modality (``prefer`` mostly)."""
    mods = list(present)
    none = ~np.any(np.stack([present[m] for m in mods]), axis=0)
    for i in np.nonzero(none)[0]:
        pick = prefer if rng.random() < 0.7 else mods[int(rng.integers(0, len(mods)))]
        present[pick][i] = True


def patient_sites(
    n_patients: int, rng: np.random.Generator, weights: tuple[float, ...]
) -> np.ndarray:
    """A site (hospital) index per patient; some mechanisms of missingness act by site."""
    return rng.choice(len(weights), size=n_patients, p=np.asarray(weights) / sum(weights))


def sample_ids(patient_index: np.ndarray, prefix: str = "S") -> tuple[list[str], list[str]]:
    """Stable ids: patient ``P0007``, its samples ``P0007-S1``, ``P0007-S2``..."""
    pids, sids, count = [], [], {}
    for p in patient_index.tolist():
        count[p] = count.get(p, 0) + 1
        pids.append(f"P{p + 1:04d}")
        sids.append(f"P{p + 1:04d}-{prefix}{count[p]}")
    return pids, sids


def samples_frame(
    patient_index: np.ndarray,
    fractions: dict[str, float],
    seed: int,
    stratify: np.ndarray,
    labels: np.ndarray,
    label_names: Iterable[str],
    prefix: str = "S",
) -> pd.DataFrame:
    """The plan's samples: ``sample_id``, ``patient_id``, a patient-level ``split`` stratified by
    ``stratify``, and ``label_{name}`` (int8) from the columns of ``labels``."""
    pids, sids = sample_ids(patient_index, prefix)
    df = pd.DataFrame({"sample_id": sids, "patient_id": pids})
    df["split"] = patient_split(df["patient_id"], fractions, seed, stratify=stratify)
    for j, name in enumerate(label_names):
        df[f"label_{name}"] = labels[:, j].astype(np.int8)
    return df


def present_draws(
    p: Plan, i: int, modalities: Iterable[str]
) -> Iterator[tuple[str, np.random.Generator, np.ndarray, float]]:
    """Row ``i``'s present modalities, each with its own random stream
    ``(seed, kind, 1, i, j)`` (``j`` its place in ``modalities``), its evidence and quality."""
    for j, mod in enumerate(modalities):
        if p.present[mod][i]:
            rng = sample_rng(p.seed, KIND_CODES[p.kind], 1, i, j)
            yield mod, rng, p.signal.evidence[mod][i], float(p.signal.quality[mod][i])


def write_raw(root: Path, rel: str, write: Callable[[Path, T], object], data: T) -> str:
    """``write(root / rel, data)``; returns ``rel``, the manifest's value for the file."""
    write(root / rel, data)
    return rel


@dataclass(frozen=True)
class Draw:
    """One present modality of row ``row`` to render, with what :func:`present_draws` gives it."""

    plan: Plan
    row: int
    root: Path
    modality: str
    rng: np.random.Generator
    evidence: np.ndarray
    quality: float

    def write(self, suffix: str, write: Callable[[Path, T], object], data: T) -> str:
        """Write ``data`` to ``{modality}/{sample_id}{suffix}`` under the root (:func:`write_raw`)."""
        sid = self.plan.samples["sample_id"].iat[self.row]
        return write_raw(self.root, f"{self.modality}/{sid}{suffix}", write, data)


def render_present(
    p: Plan, i: int, root: Path, modalities: Iterable[str], draw: Callable[[Draw], str | None]
) -> dict[str, str | None]:
    """Row ``i``'s manifest values: ``draw`` of each present modality (in order, on its own
    stream), ``None`` for the missing ones."""
    modalities = list(modalities)
    out: dict[str, str | None] = dict.fromkeys(modalities)
    for mod, rng, evidence, quality in present_draws(p, i, modalities):
        out[mod] = draw(Draw(p, i, root, mod, rng, evidence, quality))
    return out
