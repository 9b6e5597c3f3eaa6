"""Fusion inputs: the manifest plus every (modality, expert) cache, read out of core.

:func:`load_fusion_data` reads the manifest (labels, splits, ids) and the embedding caches
(docs/design.md §3.2), aligns every cache to the manifest's sample order by ``sample_id``, and builds

* ``x``: one :class:`fusion.feature_store.FeatureRows` per expert, in flat (modality, expert)
  order: the cache's raw rows, memory-mapped in the cache's dtype (never the whole cohort as
  float32), with statistics fitted on the TRAIN split's available rows only. Rows are read
  through :meth:`FusionData.rows` (standardised on the fly, zero where δ = 0) or, for
  small-data consumers, :meth:`FusionData.dense`;
* ``delta``: the availability mask δ ``(N, M, E_max)`` (1 iff the expert's cache status is
  ``ok``; padding slots of modalities with fewer experts are 0);
* ``y``: labels, ``(N, C)`` float32 with NaN for unknown (binary / multilabel), or ``(N,)``
  int64 with -1 for unknown (multiclass);
* ``teacher`` (optional, distillation only): one teacher embedding ``(N, D_T)`` per modality
  that has a teacher cache (``results/{dataset}/teachers/{modality}.parquet``, the cache
  format), read and standardised on the train split like the experts, and its availability.

A teacher cache used as a model *input* (AdaCoMed, ``<modality>-large``) is loaded as an
ordinary expert named ``teacher`` instead (see :func:`medmix.plan.method_inputs`).

Protocols (missing-modality masks) act on a loaded :class:`FusionData` through
:func:`fusion.protocols.apply_protocol`: they change δ only (the rows are shared).
:func:`load_fusion_data_cached` keeps loaded data, so several methods (or the seeds of one)
trained in one process open the caches once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from cohorts.manifest import read_manifest
from extractors.cache import CacheError, read_meta
from extractors.cache_checks import meta_problem
from fusion.feature_store import FeatureRows, cache_rows, fit_stats, open_rows
from medmix.errors import UserError
from medmix.methods import TEACHER_EXPERT

log = logging.getLogger("medmix.fusion.data")


class FusionDataError(UserError, ValueError):
    """Caches that do not fit the manifest (unknown ids, wrong dims, duplicates)."""


@dataclass
class Standardization:
    """Per-expert feature mean and std (fitted on the train split's available rows)."""

    mean: dict[str, dict[str, np.ndarray]]  # modality -> expert -> (D,)
    std: dict[str, dict[str, np.ndarray]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": {
                m: {e: v.astype(float).tolist() for e, v in ev.items()}
                for m, ev in self.mean.items()
            },
            "std": {
                m: {e: v.astype(float).tolist() for e, v in ev.items()}
                for m, ev in self.std.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardization:
        def arr(tree: dict) -> dict[str, dict[str, np.ndarray]]:
            return {
                m: {e: np.asarray(v, dtype=np.float32) for e, v in ev.items()}
                for m, ev in tree.items()
            }

        return cls(arr(d["mean"]), arr(d["std"]))

    def subset(self, modalities: list[str]) -> Standardization:
        return Standardization(
            {m: self.mean[m] for m in modalities}, {m: self.std[m] for m in modalities}
        )


@dataclass
class TeacherData:
    """Teacher embeddings for distillation: ``(N, D_T)`` rows per teacher modality."""

    modalities: list[str]  # modalities with a teacher, in data.modalities order
    x: list[FeatureRows]  # standardised on the train split when read
    ok: torch.Tensor  # (N, M_T) bool: the teacher embedding exists
    dims: dict[str, int]

    def __post_init__(self) -> None:
        self.x = [_as_rows(x) for x in self.x]

    def rows(self, j: int, idx: torch.Tensor) -> torch.Tensor:
        """``(b, D_T)`` float32: teacher ``j``'s rows ``idx``, standardised, zero where not ok."""
        return self.x[j].rows(idx, self.ok[:, j].index_select(0, idx))

    def dense(self, j: int) -> torch.Tensor:
        """Teacher ``j``'s ``(N, D_T)`` rows at once (small data only)."""
        return self.rows(j, torch.arange(self.ok.shape[0], device=self.ok.device))

    def take(self, idx: torch.Tensor) -> TeacherData:
        """The rows ``idx`` (views over the same raw rows)."""
        return replace(self, x=[x.take(idx) for x in self.x], ok=self.ok[idx].clone())

    def to(self, device: str | torch.device) -> TeacherData:
        return replace(self, x=[x.to(device) for x in self.x], ok=self.ok.to(device))

    def select(self, modalities: list[str]) -> TeacherData | None:
        keep = [i for i, m in enumerate(self.modalities) if m in modalities]
        if not keep:
            return None
        return TeacherData(
            [self.modalities[i] for i in keep],
            [self.x[i] for i in keep],
            self.ok[:, keep].clone(),
            {self.modalities[i]: self.dims[self.modalities[i]] for i in keep},
        )


@dataclass
class FusionData:
    """Everything a fusion model trains and predicts on (see module docstring).

    ``x`` may be given as standardised ``(N, D)`` tensors (hand-made data): they are wrapped
    as in-memory :class:`FeatureRows`, read back unchanged (zero where δ = 0)."""

    dataset: str
    task_type: str
    label_names: list[str]
    class_names: list[str] | None
    modalities: list[str]
    experts: dict[str, list[str]]
    dims: dict[str, dict[str, int]]
    sample_ids: np.ndarray  # (N,) object
    split: np.ndarray  # (N,) object: train / val / test / external
    x: list[FeatureRows]  # flat (modality, expert) order, each N rows of D_e
    delta: torch.Tensor  # (N, M, E_max) float32 in {0, 1}
    y: torch.Tensor  # (N, C) float32 (NaN = unknown) or (N,) int64 (-1 = unknown)
    standardization: Standardization
    teacher: TeacherData | None = None
    # the manifest as read (its own columns, e.g. a severity score): read once per run
    manifest: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.x = [_as_rows(x) for x in self.x]

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    def slot(self, k: int) -> tuple[int, int]:
        """(modality index, expert index) of flat expert ``k``: its δ column."""
        for mi, m in enumerate(self.modalities):
            if k < len(self.experts[m]):
                return mi, k
            k -= len(self.experts[m])
        raise IndexError("flat expert index out of range")

    def rows(self, k: int, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(b, D_k)`` float32: expert ``k``'s rows ``idx`` standardised, zero where δ = 0
        (written into ``out`` when given)."""
        mi, ei = self.slot(k)
        mask = self.delta[:, mi, ei].index_select(0, idx.to(self.delta.device)) > 0
        return self.x[k].rows(idx, mask, out)

    def dense(self, k: int) -> torch.Tensor:
        """Expert ``k``'s ``(N, D_k)`` float32 standardised rows, all at once: for consumers
        that need the whole matrix (a scikit-learn probe) on data that fits in memory."""
        return self.rows(k, torch.arange(self.n, device=self.delta.device))

    @property
    def flat_experts(self) -> list[tuple[str, str]]:
        return [(m, e) for m in self.modalities for e in self.experts[m]]

    @property
    def modality_mask(self) -> torch.Tensor:
        """(N, M) bool: modality available iff any of its experts is."""
        return self.delta.amax(dim=-1) > 0

    @property
    def n_outputs(self) -> int:
        if self.task_type == "multiclass":
            return len(self.class_names or [])
        return len(self.label_names)

    def split_index(self, split: str) -> torch.Tensor:
        return torch.as_tensor(
            np.flatnonzero(self.split == split), dtype=torch.long, device=self.delta.device
        )

    def splits(self) -> list[str]:
        order = ["train", "val", "test", "external"]
        present = set(self.split.tolist())
        return [s for s in order if s in present]

    def batch(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Inputs of rows ``idx``: (per-expert float32 tensors, δ)."""
        return [self.rows(k, idx) for k in range(len(self.x))], self.delta.index_select(0, idx)

    def take(self, idx: torch.Tensor) -> FusionData:
        """The samples ``idx`` (in that order): row views, δ / labels / ids cut to them."""
        keep = idx.cpu().numpy()
        return replace(
            self,
            sample_ids=self.sample_ids[keep].copy(),
            split=self.split[keep].copy(),
            x=[x.take(idx) for x in self.x],
            delta=self.delta.index_select(0, idx),
            y=self.y.index_select(0, idx),
            teacher=self.teacher.take(idx) if self.teacher is not None else None,
        )

    def to(self, device: str | torch.device) -> FusionData:
        return replace(
            self,
            x=[x.to(device) for x in self.x],
            delta=self.delta.to(device),
            y=self.y.to(device),
            teacher=self.teacher.to(device) if self.teacher is not None else None,
        )

    def select_modalities(self, modalities: list[str]) -> FusionData:
        """The same samples restricted to ``modalities`` (their experts only)."""
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise FusionDataError(f"{self.dataset}: no modality {unknown} (have {self.modalities})")
        flat = self.flat_experts
        x = [self.x[flat.index((m, e))] for m in modalities for e in self.experts[m]]
        mi = [self.modalities.index(m) for m in modalities]
        e_max = max(len(self.experts[m]) for m in modalities)
        delta = self.delta[:, mi, :e_max].clone()
        return replace(
            self,
            modalities=list(modalities),
            experts={m: list(self.experts[m]) for m in modalities},
            dims={m: dict(self.dims[m]) for m in modalities},
            x=x,
            delta=delta,
            standardization=self.standardization.subset(list(modalities)),
            teacher=self.teacher.select(list(modalities)) if self.teacher is not None else None,
        )


def _labels(
    df: pd.DataFrame, task_type: str, label_names: list[str], extra: dict
) -> tuple[torch.Tensor, list[str] | None]:
    cols = [f"label_{n}" for n in label_names]
    if task_type == "multiclass":
        if len(cols) != 1:
            raise FusionDataError(f"multiclass task needs exactly one label column, got {cols}")
        v = pd.to_numeric(df[cols[0]], errors="coerce").to_numpy(dtype=np.float64)
        known = np.isfinite(v)
        n_classes = int(extra.get("n_classes") or (int(v[known].max()) + 1 if known.any() else 0))
        names = extra.get("class_names") or [str(k) for k in range(n_classes)]
        if len(names) != n_classes:
            raise FusionDataError(f"class_names {names} do not match n_classes={n_classes}")
        y = np.where(known, v, -1).astype(np.int64)
        return torch.from_numpy(y), [str(c) for c in names]
    y = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    return torch.from_numpy(np.array(y, dtype=np.float32, copy=True)), None


def _as_rows(x: FeatureRows | torch.Tensor) -> FeatureRows:
    return x if isinstance(x, FeatureRows) else FeatureRows.from_dense(x)


def _read_aligned(
    path: Path,
    id_index: pd.Index,
    ids: np.ndarray,
    dataset: str,
    modality: str,
    expert: str | None = None,
    others: Sequence[str] = (),
    standardization: tuple[np.ndarray, np.ndarray] | None = None,
    train_rows: np.ndarray | None = None,
) -> tuple[FeatureRows, np.ndarray, int, tuple[np.ndarray, np.ndarray]]:
    """A cache aligned to the manifest order: (rows, ok (N,), dim, (mean, std)).

    The cache must be the one the run expects: its metadata's dataset and modality must be
    the manifest's and ``modality``, and its rows follow the contract (checked by
    :func:`extractors.cache.read_cache` when its memmap is built: a one-line ``CacheError``
    naming the file). The expert key is the caller's label (a cache written by an unnamed
    expert may sit under any key), but a cache that names *another* expert of this modality
    (``others``) is a mix-up. The statistics are ``standardization`` (mean, std) when given,
    else fitted on the ``train_rows`` samples that are ok."""
    if not path.exists():
        raise CacheError(f"{path}: cache not found")
    meta = read_meta(path)
    problem = meta_problem(meta, dataset=dataset or None, modality=modality)
    if problem is not None:
        raise CacheError(f"{path}: {problem}")
    if expert is not None and meta.expert != expert and meta.expert in others:
        raise FusionDataError(
            f"{path}: cache of expert {meta.expert!r} given as expert {expert!r} of "
            f"{modality!r} (two experts' caches mixed up?)"
        )
    if standardization is not None and standardization[0].shape[0] != meta.dim:
        raise FusionDataError(
            f"{path}: dim {meta.dim} but statistics have dim {standardization[0].shape[0]}"
        )
    source = cache_rows(path, meta.dtype)  # the first read checks the whole contract
    table = pq.read_table(path, columns=["sample_id", "status"])
    cids = pd.Index(np.asarray(table.column("sample_id").to_pylist(), dtype=object).astype(str))
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    if not cids.is_unique:
        raise FusionDataError(f"{path}: duplicate sample ids in cache")
    extra_ids = cids.difference(id_index)
    if len(extra_ids):
        log.warning(
            "%s: %d sample id(s) not in the manifest ignored (e.g. %s)",
            path,
            len(extra_ids),
            list(extra_ids[:3]),
        )
    n = len(ids)
    pos = cids.get_indexer(ids)
    found = pos >= 0
    if not found.all():
        log.warning(
            "%s: %d manifest sample(s) absent from the cache, treated as missing",
            path,
            int((~found).sum()),
        )
    ok = np.zeros(n, dtype=bool)
    ok[found] = status[pos[found]] == "ok"
    if standardization is None:
        fit = ok if train_rows is None else ok & train_rows
        standardization = fit_stats(source, pos[fit])  # manifest order, as the rows are read
    identity = len(cids) == n and bool((pos == np.arange(n)).all())
    rows = open_rows(source, *standardization, None if identity else pos)
    return rows, ok, int(meta.dim), standardization


def _absent(
    modality: str, expert: str, n: int, standardization: Standardization | None
) -> tuple[FeatureRows, np.ndarray, int, tuple[np.ndarray, np.ndarray]]:
    """An expert with no cache in this cohort: every sample missing, dim from the model's
    statistics (only a saved model's data can lack a modality: it fixes the dims)."""
    if standardization is None:
        raise FusionDataError(
            f"{modality}/{expert}: no cache; a missing modality needs a saved model's statistics"
        )
    try:
        mu = standardization.mean[modality][expert]
        sd = standardization.std[modality][expert]
    except KeyError as exc:
        raise FusionDataError(f"no standardisation statistics for {modality}/{expert}") from exc
    dim = int(mu.shape[0])
    rows = open_rows(np.zeros((0, dim), np.float32), mu, sd, np.full(n, -1, np.int64))
    return rows, np.zeros(n, dtype=bool), dim, (mu, sd)


def load_fusion_data(
    manifest: str | os.PathLike,
    caches: dict[str, dict[str, str | os.PathLike | None]],
    standardization: Standardization | None = None,
    teachers: dict[str, str | os.PathLike] | None = None,
) -> FusionData:
    """Load the manifest and the caches ``{modality: {expert: path}}`` (config order kept).

    A path of ``None`` is an expert of a modality this cohort does not have: missing for
    every sample (external validation on a cohort with fewer modalities; needs
    ``standardization``, which fixes its dim).

    Statistics are fitted on the train split unless ``standardization`` is given (e.g. the
    statistics saved with a model, to predict on another cohort). ``teachers``
    (``{modality: path}``, distillation only) adds :attr:`FusionData.teacher`.
    """
    df, meta = read_manifest(manifest)
    ids = df["sample_id"].astype(str).to_numpy(dtype=object)
    split = df["split"].astype(str).to_numpy(dtype=object)
    train_rows = split == "train"
    id_index = pd.Index(ids)
    modalities = list(caches)
    if not modalities:
        raise FusionDataError(f"{manifest}: no caches given")
    undeclared = [m for m in modalities if m not in meta.modalities]
    if undeclared:
        log.warning("modalities %s are not declared in the manifest metadata", undeclared)
    experts = {m: list(caches[m]) for m in modalities}
    e_max = max(len(v) for v in experts.values())
    n = len(ids)
    delta = np.zeros((n, len(modalities), e_max), dtype=np.float32)
    xs: list[FeatureRows] = []
    dims: dict[str, dict[str, int]] = {}
    mean: dict[str, dict[str, np.ndarray]] = {}
    std: dict[str, dict[str, np.ndarray]] = {}
    for mi, m in enumerate(modalities):
        dims[m], mean[m], std[m] = {}, {}, {}
        for ei, e in enumerate(experts[m]):
            if caches[m][e] is None:  # a modality this cohort lacks (external validation)
                x, ok, dim, stats = _absent(m, e, n, standardization)
            else:
                path = Path(caches[m][e])
                given = None
                if standardization is not None:
                    try:
                        given = (standardization.mean[m][e], standardization.std[m][e])
                    except KeyError as exc:
                        raise FusionDataError(f"no standardisation statistics for {m}/{e}") from exc
                # a teacher cache used as a model input may be any preset, one of the
                # modality's own experts included: no mix-up check for it
                label = None if e == TEACHER_EXPERT else e
                others = [o for o in experts[m] if o != e]
                x, ok, dim, stats = _read_aligned(
                    path, id_index, ids, meta.dataset, m, label, others, given, train_rows
                )
            xs.append(x)
            delta[:, mi, ei] = ok
            dims[m][e] = dim
            mean[m][e], std[m][e] = stats
            log.info("%s/%s: dim %d, %d/%d ok", m, e, dim, int(ok.sum()), n)
    teacher = None
    if teachers:
        unknown = [m for m in teachers if m not in modalities]
        if unknown:
            raise FusionDataError(f"teacher caches for modalities {unknown} not among {modalities}")
        t_mods = [m for m in modalities if m in teachers]
        t_x, t_ok, t_dims = [], [], {}
        for m in t_mods:
            path = Path(teachers[m])
            x, ok, dim, _ = _read_aligned(
                path, id_index, ids, meta.dataset, m, train_rows=train_rows
            )
            t_x.append(x)
            t_ok.append(ok)
            t_dims[m] = dim
            log.info("teacher %s: dim %d, %d/%d ok", m, dim, int(ok.sum()), n)
        teacher = TeacherData(t_mods, t_x, torch.from_numpy(np.stack(t_ok, axis=1)), t_dims)
    y, class_names = _labels(df, meta.task_type, list(meta.labels), meta.extra)
    return FusionData(
        dataset=meta.dataset,
        task_type=meta.task_type,
        label_names=list(meta.labels),
        class_names=class_names,
        modalities=modalities,
        experts=experts,
        dims=dims,
        sample_ids=ids,
        split=split,
        x=xs,
        delta=torch.from_numpy(delta),
        y=y,
        standardization=Standardization(mean, std),
        teacher=teacher,
        manifest=df,
    )


_LOADED: dict[tuple, FusionData] = {}
_LOADED_MAX = 4


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def load_fusion_data_cached(
    manifest: str | os.PathLike,
    caches: dict[str, dict[str, str | os.PathLike]],
    teachers: dict[str, str | os.PathLike] | None = None,
) -> FusionData:
    """:func:`load_fusion_data` (train-fitted statistics), memoised on the files' identity.

    Several methods or protocols trained in one process share one set of mapped rows.
    Callers must not modify the returned tensors in place (protocols build a new δ).
    """
    key = (
        _file_key(manifest),
        tuple((m, e, _file_key(p)) for m, ev in caches.items() for e, p in ev.items()),
        tuple((m, _file_key(p)) for m, p in (teachers or {}).items()),
    )
    if key not in _LOADED:
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_fusion_data(manifest, caches, teachers=teachers)
    return _LOADED[key]
