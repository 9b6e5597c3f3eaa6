"""Missing-modality protocols (docs/design.md §7, paper §4.3): seeded availability masks on top of δ.

A protocol *setting* is one string, usable as the Snakemake ``{protocol}`` wildcard and as the
run folder name (``results/{dataset}/runs/{setting}/{method}/``)::

    full                              all available data, unchanged
    train_drop_one-{modality}-{r}     drop one modality in a fraction r of the TRAINING samples
    test_drop_one-{modality}-{r}      ... of the TEST samples                (paper E2, E3)
    train_random-{p} / test_random-{p}
                                      every modality dropped independently, rate p (E4, E5)
    mnar-{label|severity}-{p}         missing not at random: the chance of losing a modality
                                      grows with the label / a severity score (beyond the paper)
    replay-{p}                        a fraction p of the complete samples receive an observed
                                      incomplete pattern of the cohort (beyond the paper)

Every kind takes a scope prefix: ``train_`` (the development splits ``train`` and ``val``:
the model is trained, early-stopped and thresholded on corrupted data and tested on the
standard test split), ``test_`` (the evaluation splits ``test`` and ``external`` only: the
model never sees a corrupted sample before testing) or none (every split: the whole cohort is
corrupted, e.g. ``mnar-label-0.5``). Rates are written canonically (``0.3``, ``0.5``,
``1.0``); :func:`format_protocol` builds a setting and :func:`parse_protocol` rejects
non-canonical spellings, so one setting has one folder.

Masks are a deterministic function of (dataset, sample ids, labels, protocol setting, seed):

* every (protocol kind, modality, seed) has its own random stream, seeded by a hash of those
  names (never by the process, the method or the row order: the uniforms are drawn in sorted
  ``sample_id`` order), so every method — and every rerun — sees the same missing samples,
  and a method restricted to some modalities sees the same masks on those modalities;
* the rate only sets a threshold on the same uniforms, so the dropped set at r = 0.3 is a
  subset of the one at r = 0.5 and at 0.7 (common random numbers: the sweeps compare nested
  corruptions, not independent draws);
* ``drop_one`` and ``random`` drop an exact count ``round(r · n)`` of each affected split's
  samples (per modality), whether or not the modality was available — the achieved rate is r
  up to rounding; ``mnar`` draws Bernoulli(p_i) with a mean of p per split; ``replay`` an
  exact count of the complete samples.

A sample left with no modality keeps its row and gets the model's learned prior (the
fusion model handles it, never NaN); :class:`ProtocolMasks` counts these samples
(``all_dropped``) per split, and :func:`write_masks` saves the masks with the run as
``masks.parquet`` (one row per sample: ``drop_{m}``, ``avail_{m}``, ``all_dropped``).

MNAR (``mnar-label-p``, ``mnar-severity-p``): a score s_i is ranked within each affected
split (ties broken at random), q_i ∈ [0, 1] is the rank fraction and sample i loses each
modality independently with probability ``p_i = p · (1 + κ (2 q_i − 1))``, κ = min(1, (1−p)/p),
so the mean rate is p and the sickest samples lose modalities most often. Scores:

* ``label``: the fraction of positive labels (a single binary task: the label itself;
  multiclass: class index / (K − 1)); labels named like ``normal`` / ``no_finding`` are left out;
* ``severity``: a manifest column named by ``datasets.<name>.severity_column`` (e.g. an
  acuity score; :func:`protocol_severity` reads it, the trainer and the test-time evaluation
  pass it as ``severity=``), or, when none is named, the rarity-weighted label burden
  ``Σ_j y_ij · (−log π_j)`` (π_j: the label's training prevalence; multiclass: −log π of the
  class).

Replay (``replay-p``): donors are the cohort's own incomplete samples (the observed
availability before any protocol, at least one modality present; train/val samples draw from
train/val donors only, test samples from every split's); a fraction p of
the complete samples in the affected splits each take the pattern of one donor drawn from
the donors of the same label stratum (any positive label, or the class), so the cohort's
structured missingness — who tends to miss what — is replayed onto complete samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cohorts.manifest import read_manifest
from medmix.config import dataset_paths
from medmix.io import atomic_path
from medmix.protocol_names import ProtocolError, parse_protocol

if TYPE_CHECKING:
    from fusion.data import FusionData

log = logging.getLogger("medmix.fusion.protocols")

NORMAL_LABELS = frozenset({"normal", "no_finding", "nofinding", "no finding", "healthy"})


# -- random streams -------------------------------------------------------------------------


def _stream(*key: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32).tolist())


def _uniforms(sample_ids: np.ndarray, *key: object) -> np.ndarray:
    """One U(0,1) per sample from the stream ``key``, drawn in sorted sample-id order."""
    ids = np.asarray(sample_ids).astype(str)
    order = np.argsort(ids, kind="stable")
    u = np.empty(len(ids), dtype=np.float64)
    u[order] = _stream(*key).random(len(ids))
    return u


def _lowest(u: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Indices (into the full array) of the ``k`` rows of ``rows`` with the smallest ``u``."""
    if k <= 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    return rows[np.argsort(u[rows], kind="stable")[:k]]


# -- scores for MNAR / replay ---------------------------------------------------------------


def _label_matrix(data: FusionData) -> np.ndarray:
    """(N, C) float labels with NaN unknown (binary / multilabel) or (N,) class ids."""
    y = data.y.detach().cpu().numpy()
    return y


def _abnormal_columns(data: FusionData) -> list[int]:
    cols = [
        j
        for j, n in enumerate(data.label_names)
        if n.lower().replace("-", "_") not in NORMAL_LABELS
    ]
    return cols or list(range(len(data.label_names)))


def label_score(data: FusionData) -> np.ndarray:
    """Fraction of positive (abnormal) labels per sample; multiclass: class / (K − 1)."""
    y = _label_matrix(data)
    if data.task_type == "multiclass":
        k = max(1, data.n_outputs - 1)
        return np.where(y >= 0, y / k, 0.0).astype(np.float64)
    sub = y[:, _abnormal_columns(data)].astype(np.float64)
    known = np.isfinite(sub)
    n = known.sum(axis=1)
    pos = np.where(known, sub, 0.0).sum(axis=1)
    return np.divide(pos, n, out=np.zeros(len(sub)), where=n > 0)


def severity_score(data: FusionData) -> np.ndarray:
    """Rarity-weighted positive burden ``Σ_j y_ij · (−log π_j)`` (π_j on the train split)."""
    y = _label_matrix(data)
    train = data.split == "train"
    if not train.any():
        train = np.ones(len(y), dtype=bool)
    if data.task_type == "multiclass":
        counts = np.bincount(y[train & (y >= 0)], minlength=data.n_outputs) + 1.0
        w = -np.log(counts / counts.sum())
        return np.where(y >= 0, w[np.clip(y, 0, None)], 0.0).astype(np.float64)
    cols = _abnormal_columns(data)
    sub = y[:, cols].astype(np.float64)
    known = np.isfinite(sub)
    tr = sub[train]
    prev = (np.nansum(tr, axis=0) + 0.5) / (np.isfinite(tr).sum(axis=0) + 1.0)
    w = -np.log(np.clip(prev, 1e-4, 1.0))
    return (np.where(known, sub, 0.0) * w).sum(axis=1)


def manifest_severity(
    cfg: dict[str, Any],
    dataset: str,
    sample_ids: Sequence[str],
    manifest: pd.DataFrame | None = None,
) -> np.ndarray | None:
    """The manifest column ``datasets.<dataset>.severity_column`` (e.g. an acuity score) as
    floats aligned to ``sample_ids``; None when the dataset names no column.

    ``manifest``: the dataset's manifest when the caller has already read it (a loaded
    :class:`fusion.data.FusionData` keeps it), else it is read here.

    A missing value counts as the least severe (with a warning naming the samples); a column
    that is absent, not numeric, or a sample the manifest lacks is an error.
    """
    column = cfg["datasets"][dataset].get("severity_column")
    if not column:
        return None
    path = dataset_paths(cfg, dataset).manifest
    df = manifest if manifest is not None else read_manifest(path)[0]
    if column not in df.columns:
        raise ProtocolError(
            f"{path}: no column {column!r} (datasets.{dataset}.severity_column); "
            f"the manifest has {list(df.columns)}"
        )
    raw = df.set_index(df["sample_id"].astype(str))[column]
    ids = [str(s) for s in sample_ids]
    absent = [s for s in ids if s not in raw.index]
    if absent:
        raise ProtocolError(f"{path}: samples {absent[:5]} have no row (severity {column!r})")
    raw = raw.loc[ids]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & values.isna()
    if bad.any():
        shown = [f"{s}={raw[s]!r}" for s in raw.index[bad][:5]]
        raise ProtocolError(f"{path}: column {column!r} is not numeric for samples {shown}")
    if values.isna().any():
        log.warning(
            "%s: %d sample(s) have no %s (e.g. %s): counted as the least severe",
            dataset, int(values.isna().sum()), column, list(raw.index[values.isna()][:3]),
        )  # fmt: skip
    return values.to_numpy(dtype=np.float64)


def protocol_severity(
    cfg: dict[str, Any], dataset: str, data: FusionData, protocol: str
) -> np.ndarray | None:
    """The ``severity=`` a setting needs on ``data``: the configured manifest column for an
    ``mnar-severity`` setting, else None (the label-derived score is the fallback)."""
    spec = parse_protocol(protocol)
    if spec.kind != "mnar" or spec.score != "severity":
        return None
    return manifest_severity(cfg, dataset, data.sample_ids, manifest=data.manifest)


def label_strata(data: FusionData) -> np.ndarray:
    """Replay strata: the class (multiclass) or whether any abnormal label is positive."""
    y = _label_matrix(data)
    if data.task_type == "multiclass":
        return np.where(y >= 0, y, -1).astype(np.int64)
    sub = y[:, _abnormal_columns(data)]
    return (np.nan_to_num(sub, nan=0.0) > 0).any(axis=1).astype(np.int64)


def mnar_probabilities(score: np.ndarray, rate: float, tiebreak: np.ndarray) -> np.ndarray:
    """Per-sample drop probabilities with mean ``rate`` rising linearly with the score's rank."""
    n = len(score)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.full(1, rate)
    order = np.lexsort((tiebreak, score))  # by score, ties at random
    q = np.empty(n)
    q[order] = np.arange(n) / (n - 1)
    kappa = 1.0 if rate <= 0.5 else (1.0 - rate) / rate
    return np.clip(rate * (1.0 + kappa * (2.0 * q - 1.0)), 0.0, 1.0)


# -- masks ----------------------------------------------------------------------------------


@dataclass
class ProtocolMasks:
    """The outcome of a protocol on one dataset and seed.

    ``drop`` (N, M): the protocol removed modality m of sample i (whether or not it was
    available); ``before`` / ``after`` (N, M): modality availability without / with it.
    """

    protocol: str
    seed: int
    dataset: str
    modalities: list[str]
    sample_ids: np.ndarray
    split: np.ndarray
    drop: np.ndarray
    before: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def after(self) -> np.ndarray:
        return self.before & ~self.drop

    @property
    def all_dropped(self) -> np.ndarray:
        """(N,) samples that had a modality and have none left: they get the prior."""
        return self.before.any(axis=1) & ~self.after.any(axis=1)

    def report(self) -> dict[str, Any]:
        """Per affected split: size, achieved drop rate per modality, all-dropped count."""
        spec = parse_protocol(self.protocol)
        out: dict[str, Any] = {"protocol": self.protocol, "seed": self.seed, "splits": {}}
        for s in spec.splits:
            rows = self.split == s
            n = int(rows.sum())
            if n == 0:
                continue
            entry: dict[str, Any] = {
                "n": n,
                "n_all_dropped": int(self.all_dropped[rows].sum()),
                "n_no_modality": int((~self.after[rows].any(axis=1)).sum()),
                "modalities": {},
            }
            for mi, m in enumerate(self.modalities):
                d, b = self.drop[rows, mi], self.before[rows, mi]
                entry["modalities"][m] = {
                    "dropped": int(d.sum()),
                    "rate": float(d.mean()),
                    "available_before": int(b.sum()),
                    "available_after": int((b & ~d).sum()),
                    "effective_rate": float((b & d).sum() / b.sum()) if b.any() else 0.0,
                }
            out["splits"][s] = entry
        out.update(self.stats)
        return out

    def frame(self) -> pd.DataFrame:
        cols: dict[str, Any] = {
            "sample_id": self.sample_ids.astype(str),
            "split": self.split.astype(str),
        }
        for mi, m in enumerate(self.modalities):
            cols[f"drop_{m}"] = self.drop[:, mi]
        for mi, m in enumerate(self.modalities):
            cols[f"avail_{m}"] = self.after[:, mi]
        cols["all_dropped"] = self.all_dropped
        return pd.DataFrame(cols)


def _modality_availability(data: FusionData) -> np.ndarray:
    return data.modality_mask.detach().cpu().numpy().astype(bool)


def protocol_masks(
    data: FusionData, protocol: str, seed: int, severity: np.ndarray | None = None
) -> ProtocolMasks:
    """The masks of ``protocol`` (a setting string) with ``seed`` on ``data`` (not applied)."""
    spec = parse_protocol(protocol)
    ids = np.asarray(data.sample_ids).astype(str)
    split = np.asarray(data.split).astype(str)
    n, mods = len(ids), list(data.modalities)
    before = _modality_availability(data)
    drop = np.zeros((n, len(mods)), dtype=bool)
    stats: dict[str, Any] = {}
    masks = ProtocolMasks(spec.name, int(seed), data.dataset, mods, ids, split, drop, before, stats)
    if spec.kind == "full":
        return masks
    affected = [s for s in spec.splits if (split == s).any()]
    key = (data.dataset, spec.kind, int(seed))

    if spec.kind == "drop_one":
        if spec.modality not in mods:
            log.warning(
                "%s: %s names modality %r, absent here (have %s): nothing dropped",
                data.dataset, spec.name, spec.modality, mods,
            )  # fmt: skip
            return masks
        mi = mods.index(spec.modality)
        u = _uniforms(ids, *key, spec.modality)
        for s in affected:
            rows = np.flatnonzero(split == s)
            drop[_lowest(u, rows, round(spec.rate * len(rows))), mi] = True

    elif spec.kind == "random":
        for mi, m in enumerate(mods):
            u = _uniforms(ids, *key, m)
            for s in affected:
                rows = np.flatnonzero(split == s)
                drop[_lowest(u, rows, round(spec.rate * len(rows))), mi] = True

    elif spec.kind == "mnar":
        if spec.score == "severity":
            score = severity_score(data) if severity is None else np.asarray(severity, float)
        else:
            score = label_score(data)
        if len(score) != n:
            raise ProtocolError(f"severity has {len(score)} values for {n} samples")
        score = np.nan_to_num(score, nan=float(np.nanmin(score)) if np.isfinite(score).any() else 0)
        tie = _uniforms(ids, *key, "tiebreak")
        prob = np.zeros(n)
        for s in affected:
            rows = np.flatnonzero(split == s)
            prob[rows] = mnar_probabilities(score[rows], spec.rate, tie[rows])
        for mi, m in enumerate(mods):
            drop[:, mi] = _uniforms(ids, *key, m) < prob
        stats["mnar_score"] = spec.score
        if spec.score == "severity":
            stats["severity_source"] = "given" if severity is not None else "label burden"

    elif spec.kind == "replay":
        complete = before.all(axis=1)
        donors = np.flatnonzero(~complete & before.any(axis=1))
        donors = donors[np.argsort(ids[donors], kind="stable")]  # row order never matters
        if len(donors) == 0:
            log.warning(
                "%s: %s: no incomplete sample to replay; nothing dropped", data.dataset, spec.name
            )
            return masks
        strata = label_strata(data)
        u_target = _uniforms(ids, *key, "target")
        u_donor = _uniforms(ids, *key, "donor")
        # Train/val targets draw from train/val donors only: a donor's label stratum must not
        # carry test labels into training masks (tests/fusion/test_leakage.py).
        dev_donors = donors[np.isin(split[donors], ("train", "val"))]
        used = 0
        for s in affected:
            rows = np.flatnonzero((split == s) & complete)
            targets = _lowest(u_target, rows, round(spec.rate * len(rows)))
            s_donors = dev_donors if s in ("train", "val") and len(dev_donors) else donors
            for i in targets:
                pool = s_donors[strata[s_donors] == strata[i]]
                if len(pool) == 0:
                    pool = s_donors
                j = pool[min(int(u_donor[i] * len(pool)), len(pool) - 1)]
                drop[i] = ~before[j]
                used += 1
        stats["replay"] = {"donors": int(len(donors)), "targets": used}
    return masks


def apply_masks(data: FusionData, masks: ProtocolMasks) -> FusionData:
    """``data`` with the masks' dropped modalities unavailable: δ = 0 there. The rows are
    shared, not copied: every read (:meth:`fusion.data.FusionData.rows`) zeroes a row whose
    δ is 0, so a dropped modality's features read as zero."""
    import torch

    if list(masks.modalities) != list(data.modalities) or len(masks.sample_ids) != data.n:
        raise ProtocolError("masks were made for other data (modalities or samples differ)")
    if not masks.drop.any():
        return data
    keep = torch.from_numpy(~masks.drop).to(device=data.delta.device)
    delta = data.delta * keep.unsqueeze(-1).to(data.delta.dtype)
    teacher = getattr(data, "teacher", None)
    if teacher is not None:  # a dropped modality has no teacher embedding either
        cols = [data.modalities.index(m) for m in teacher.modalities]
        ok = teacher.ok & keep[:, cols].to(teacher.ok.device)
        return replace(data, delta=delta, teacher=replace(teacher, ok=ok))
    return replace(data, delta=delta)


def apply_protocol(
    data: FusionData, protocol: str, seed: int, severity: np.ndarray | None = None
) -> FusionData:
    """``data`` under ``protocol`` with ``seed`` (``full``: ``data`` itself)."""
    return mask_seed(data, protocol, seed, severity)[0]


def mask_seed(
    data: FusionData, protocol: str, seed: int, severity: np.ndarray | None = None
) -> tuple[FusionData, ProtocolMasks | None]:
    """``data`` under ``protocol`` with ``seed``, and the masks that did it (``full``: ``data``
    itself and no masks). The masks are computed once: a run applies them and saves them
    (:func:`write_masks` with ``masks=``)."""
    if protocol == "full":
        return data, None
    masks = protocol_masks(data, protocol, seed, severity=severity)
    rep = masks.report()
    for s, entry in rep["splits"].items():
        rates = (
            ", ".join(
                f"{m} {v['rate']:.2f}" for m, v in entry["modalities"].items() if v["dropped"]
            )
            or "nothing"
        )
        log.info(
            "%s seed %d, %s (n=%d): dropped %s; %d sample(s) left with no modality (prior)",
            protocol, seed, s, entry["n"], rates, entry["n_all_dropped"],
        )  # fmt: skip
    return apply_masks(data, masks), masks


def write_masks(
    data: FusionData,
    protocol: str,
    seed: int,
    directory: str | os.PathLike,
    severity: np.ndarray | None = None,
    masks: ProtocolMasks | None = None,
) -> Path:
    """Save the masks of (protocol, seed) on ``data`` (the UNMASKED data) as
    ``{directory}/masks.parquet``; the report (achieved rates, all-dropped counts) goes into the
    Parquet metadata under ``medmix_masks``. Returns the path.

    ``masks``: those masks when the caller already has them (:func:`mask_seed`), so they are
    not computed again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if masks is None:
        masks = protocol_masks(data, protocol, seed, severity=severity)
    table = pa.Table.from_pandas(masks.frame(), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"medmix_masks"] = json.dumps(
        {"dataset": data.dataset, "modalities": masks.modalities, **masks.report()}
    ).encode()
    table = table.replace_schema_metadata(meta)
    path = Path(directory) / "masks.parquet"
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def read_masks(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A ``masks.parquet`` and its report."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"medmix_masks", b"{}"))
    return table.to_pandas(), meta


def read_masks_report(path: str | os.PathLike) -> dict[str, Any]:
    """The report of a ``masks.parquet`` (achieved rates, all-dropped counts per split),
    read from its metadata without loading the masks."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"medmix_masks", b"{}"))
