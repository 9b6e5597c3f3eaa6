"""Fusion inputs: the manifest plus every (modality, expert) cache, loaded once into tensors.

:func:`load_fusion_data` reads the manifest (labels, splits, ids) and the embedding caches
(docs/design.md §3.2), aligns every cache to the manifest's sample order by ``sample_id``, and builds

* ``x``: one float32 tensor ``(N, D_e)`` per expert, in flat (modality, expert) order,
  standardised with statistics fitted on the TRAIN split's available rows only; rows of
  unavailable experts stay zero;
* ``delta``: the availability mask δ ``(N, M, E_max)`` (1 iff the expert's cache status is
  ``ok``; padding slots of modalities with fewer experts are 0);
* ``y``: labels, ``(N, C)`` float32 with NaN for unknown (binary / multilabel), or ``(N,)``
  int64 with -1 for unknown (multiclass);
* ``teacher`` (optional, distillation only): one teacher embedding ``(N, D_T)`` per modality
  that has a teacher cache (``results/{dataset}/teachers/{modality}.parquet``, the cache
  format), standardised on the train split like the experts, and its availability.

A teacher cache used as a model *input* (AdaCoMed, ``<modality>-large``) is loaded as an
ordinary expert named ``teacher`` instead (see :func:`medmix.plan.method_inputs`).

Protocols (missing-modality masks) act on a loaded :class:`FusionData` through
:func:`fusion.protocols.apply_protocol`. :func:`load_fusion_data_cached` keeps loaded data in memory, so
several methods (or the seeds of one) trained in one process read the caches once.
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
import torch

from cohorts.manifest import read_manifest
from extractors.cache import read_cache
from medmix.errors import UserError
from medmix.methods import TEACHER_EXPERT

log = logging.getLogger("medmix.fusion.data")

STD_FLOOR = 1e-6


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
    """Teacher embeddings for distillation: one ``(N, D_T)`` tensor per teacher modality."""

    modalities: list[str]  # modalities with a teacher, in data.modalities order
    x: list[torch.Tensor]  # standardised on the train split, zero rows where not ok
    ok: torch.Tensor  # (N, M_T) bool: the teacher embedding exists
    dims: dict[str, int]

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
    """Everything a fusion model trains and predicts on, as tensors (see module docstring)."""

    dataset: str
    task_type: str
    label_names: list[str]
    class_names: list[str] | None
    modalities: list[str]
    experts: dict[str, list[str]]
    dims: dict[str, dict[str, int]]
    sample_ids: np.ndarray  # (N,) object
    split: np.ndarray  # (N,) object: train / val / test / external
    x: list[torch.Tensor]  # flat (modality, expert) order, each (N, D_e) float32
    delta: torch.Tensor  # (N, M, E_max) float32 in {0, 1}
    y: torch.Tensor  # (N, C) float32 (NaN = unknown) or (N,) int64 (-1 = unknown)
    standardization: Standardization
    teacher: TeacherData | None = None
    # the manifest as read (its own columns, e.g. a severity score): read once per run
    manifest: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return len(self.sample_ids)

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
        """Inputs of rows ``idx``: (per-expert tensors, δ)."""
        return [x.index_select(0, idx) for x in self.x], self.delta.index_select(0, idx)

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


def _fit_stats(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not rows.any():
        return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    sub = x[rows].astype(np.float64)
    mean = sub.mean(axis=0)
    std = sub.std(axis=0)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def _read_aligned(
    path: Path,
    id_index: pd.Index,
    ids: np.ndarray,
    dataset: str,
    modality: str,
    expert: str | None = None,
    others: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, int]:
    """A cache aligned to the manifest order: (embeddings (N, D), ok (N,), dim).

    The cache must be the one the run expects: its metadata's dataset and modality must be
    the manifest's and ``modality``, and its rows follow the contract
    (:func:`extractors.cache.read_cache`: a one-line ``CacheError`` naming the file). The
    expert key is the caller's label (a cache written by an unnamed expert may sit under any
    key), but a cache that names *another* expert of this modality (``others``) is a mix-up."""
    cache = read_cache(path, dataset=dataset or None, modality=modality)
    if expert is not None and cache.meta.expert != expert and cache.meta.expert in others:
        raise FusionDataError(
            f"{path}: cache of expert {cache.meta.expert!r} given as expert {expert!r} of "
            f"{modality!r} (two experts' caches mixed up?)"
        )
    cids = pd.Index(cache.sample_ids.astype(str))
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
    ok[found] = cache.status[pos[found]] == "ok"
    x = np.zeros((n, cache.meta.dim), dtype=np.float32)
    x[found] = cache.embeddings[pos[found]]  # read_cache refused non-finite ok rows
    return x, ok, int(cache.meta.dim)


def _standardise(x: np.ndarray, ok: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> torch.Tensor:
    out = np.where(ok[:, None], (x - mu) / sd, 0.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out))


def _absent(
    modality: str, expert: str, n: int, standardization: Standardization | None
) -> tuple[np.ndarray, np.ndarray, int, Path]:
    """An expert with no cache in this cohort: every sample missing, dim from the model's
    statistics (only a saved model's data can lack a modality: it fixes the dims)."""
    if standardization is None:
        raise FusionDataError(
            f"{modality}/{expert}: no cache; a missing modality needs a saved model's statistics"
        )
    try:
        dim = int(standardization.mean[modality][expert].shape[0])
    except KeyError as exc:
        raise FusionDataError(f"no standardisation statistics for {modality}/{expert}") from exc
    path = Path(f"<{modality}/{expert}: absent in this cohort>")
    return np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool), dim, path


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
    xs: list[torch.Tensor] = []
    dims: dict[str, dict[str, int]] = {}
    mean: dict[str, dict[str, np.ndarray]] = {}
    std: dict[str, dict[str, np.ndarray]] = {}
    for mi, m in enumerate(modalities):
        dims[m], mean[m], std[m] = {}, {}, {}
        for ei, e in enumerate(experts[m]):
            if caches[m][e] is None:  # a modality this cohort lacks (external validation)
                x, ok, dim, path = _absent(m, e, n, standardization)
            else:
                path = Path(caches[m][e])
                # a teacher cache used as a model input may be any preset, one of the
                # modality's own experts included: no mix-up check for it
                label = None if e == TEACHER_EXPERT else e
                x, ok, dim = _read_aligned(
                    path, id_index, ids, meta.dataset, m, label, [o for o in experts[m] if o != e]
                )
            if standardization is None:
                mu, sd = _fit_stats(x, ok & train_rows)
            else:
                try:
                    mu, sd = standardization.mean[m][e], standardization.std[m][e]
                except KeyError as exc:
                    raise FusionDataError(f"no standardisation statistics for {m}/{e}") from exc
                if mu.shape[0] != dim:
                    raise FusionDataError(
                        f"{path}: dim {dim} but statistics have dim {mu.shape[0]}"
                    )
            xs.append(_standardise(x, ok, mu, sd))
            delta[:, mi, ei] = ok
            dims[m][e] = dim
            mean[m][e], std[m][e] = mu, sd
            log.info("%s/%s: dim %d, %d/%d ok", m, e, dim, int(ok.sum()), n)
    teacher = None
    if teachers:
        unknown = [m for m in teachers if m not in modalities]
        if unknown:
            raise FusionDataError(f"teacher caches for modalities {unknown} not among {modalities}")
        t_mods = [m for m in modalities if m in teachers]
        t_x, t_ok, t_dims = [], [], {}
        for m in t_mods:
            x, ok, dim = _read_aligned(Path(teachers[m]), id_index, ids, meta.dataset, m, None)
            mu, sd = _fit_stats(x, ok & train_rows)
            t_x.append(_standardise(x, ok, mu, sd))
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

    Several methods or protocols trained in one process share one copy of the embeddings.
    Callers must not modify the returned tensors in place (protocols build new tensors).
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
