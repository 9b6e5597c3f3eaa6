"""Inference API: ``fusion.predict(model_dir, inputs)`` — no training code, no teacher cache.

A saved model is ``model.safetensors`` + ``config.json`` (:func:`fusion.checkpoint.save_model`).
:func:`predict` rebuilds it (the model class, its spec and the standardisation statistics
fitted on the training split) and scores samples given as embedding caches or as arrays::

    from fusion.predict import predict
    res = predict("results/demo-openi/runs/full/medmix/seed0", {
        "frontal": {"radiomics": "results/demo-openi/embeddings/frontal/radiomics.parquet"},
        "report": {"minilm": emb_minilm},          # (N, D) array; NaN rows = missing
    }, sample_ids=ids)
    res.probs, res.alpha, res.beta, res.to_frame()

Any subset of the model's modalities and experts may be given: what is not given (or whose
cache status is not ``ok``, or whose array row is not finite) is *missing* for that sample,
exactly as in training (masked softmax, the prior when nothing at all is available). Every
input is standardised with the saved statistics and its missing rows set to zero.
Distillation heads are training-only and never part of a checkpoint, so a MedMIX model
trained with distillation predicts from its student experts alone. Methods that read a
teacher as an input (AdaCoMed, ``<modality>-large``) take it as the expert ``teacher``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from extractors.cache import CacheError, read_cache
from fusion.checkpoint import load_model
from fusion.inference import LoadedModel, predict_tensors
from medmix.errors import UserError

Source = str | os.PathLike | np.ndarray | torch.Tensor | tuple


class PredictInputError(UserError, ValueError):
    """Inputs that do not fit the model (unknown modality / expert, wrong dim, no ids)."""


@dataclass
class PredictionResult:
    """Probabilities with the router weights α and modality weights β, per sample."""

    sample_ids: np.ndarray  # (N,)
    output_names: list[str]
    probs: np.ndarray  # (N, C): sigmoid (binary / multilabel) or softmax (multiclass)
    logits: np.ndarray  # (N, C)
    alpha: np.ndarray | None  # (N, M, E_max): expert weights, 0 where missing (MedMIX)
    beta: np.ndarray | None  # (N, M): modality weights, 0 where missing
    modalities: list[str]
    experts: dict[str, list[str]]
    n_no_modality: int  # samples with nothing available (prior prediction)

    def to_frame(self) -> pd.DataFrame:
        """``sample_id``, ``prob_*``, ``alpha_{m}_{e}``, ``beta_{m}`` (the run's columns)."""
        cols: dict[str, Any] = {"sample_id": self.sample_ids.astype(str)}
        for j, name in enumerate(self.output_names):
            cols[f"prob_{name}"] = self.probs[:, j].astype(np.float32)
        if self.alpha is not None:
            for mi, m in enumerate(self.modalities):
                for ei, e in enumerate(self.experts[m]):
                    cols[f"alpha_{m}_{e}"] = self.alpha[:, mi, ei].astype(np.float32)
        if self.beta is not None:
            for mi, m in enumerate(self.modalities):
                cols[f"beta_{m}"] = self.beta[:, mi].astype(np.float32)
        return pd.DataFrame(cols)


def _read_source(
    src: Source, modality: str, expert: str, others: list[str], datasets: dict[str, Path]
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(sample ids or None, embeddings (N, D), ok mask or None) of one input.

    A cache must follow the cache contract, be of ``modality``, not name another of the
    model's experts of it (``others``), and come from the same dataset as every other cache
    given (``datasets``: dataset -> the first cache seen of it): caches of two cohorts would
    otherwise be joined by ``sample_id``."""
    if isinstance(src, str | os.PathLike):
        path = Path(src)
        cache = read_cache(path, modality=modality)
        if cache.meta.expert != expert and cache.meta.expert in others:
            raise CacheError(
                f"{path}: cache of expert {cache.meta.expert!r} given as expert {expert!r} "
                f"of {modality!r} (two experts' caches mixed up?)"
            )
        dataset = cache.meta.dataset
        if dataset:
            datasets.setdefault(dataset, path)
            if len(datasets) > 1:
                (d0, p0), (d1, p1) = list(datasets.items())[:2]
                raise CacheError(
                    f"{p1}: cache of dataset {d1!r}, but {p0} is of dataset {d0!r}; "
                    "predict scores one cohort at a time (caches are joined by sample_id)"
                )
        return cache.sample_ids.astype(str), cache.embeddings, cache.status == "ok"
    if isinstance(src, tuple):
        if len(src) == 2:
            x, ok = src
            return None, _array(x), np.asarray(ok, dtype=bool)
        ids, x, ok = src
        return np.asarray(ids).astype(str), _array(x), np.asarray(ok, dtype=bool)
    return None, _array(src), None


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise PredictInputError(f"embeddings must be (N, D), got shape {x.shape}")
    return x


def build_inputs(
    lm: LoadedModel,
    inputs: Mapping[str, Mapping[str, Source]],
    sample_ids: Any | None = None,
) -> tuple[np.ndarray, list[torch.Tensor], torch.Tensor]:
    """Standardised per-expert tensors (zero where missing) and δ for ``inputs``."""
    spec, stats = lm.spec, lm.standardization
    unknown = [m for m in inputs if m not in spec.modalities]
    if unknown:
        raise PredictInputError(f"the model has no modality {unknown} (has {spec.modalities})")
    read: dict[tuple[str, str], tuple] = {}
    datasets: dict[str, Path] = {}
    for m, ev in inputs.items():
        for e, src in ev.items():
            if e not in spec.experts[m]:
                raise PredictInputError(
                    f"modality {m!r} of the model has no expert {e!r} (has {spec.experts[m]})"
                )
            others = [o for o in spec.experts[m] if o != e]
            read[(m, e)] = _read_source(src, m, e, others, datasets)
    if not read:
        raise PredictInputError("no inputs given")
    if sample_ids is not None:
        ids = np.asarray(sample_ids).astype(str)
    else:
        with_ids = [r[0] for r in read.values() if r[0] is not None]
        if with_ids:
            seen: dict[str, None] = {}
            for arr in with_ids:
                seen.update(dict.fromkeys(arr.tolist()))
            ids = np.asarray(list(seen), dtype=object)
            if any(r[0] is None for r in read.values()):
                raise PredictInputError("arrays without ids next to caches: give sample_ids")
        else:
            lengths = {r[1].shape[0] for r in read.values()}
            if len(lengths) != 1:
                raise PredictInputError(f"arrays of different lengths {sorted(lengths)}")
            ids = np.arange(lengths.pop()).astype(str)
    n = len(ids)
    index = pd.Index(ids)
    if not index.is_unique:
        raise PredictInputError("sample ids are not unique")
    xs: list[torch.Tensor] = []
    delta = torch.zeros(n, len(spec.modalities), spec.max_experts)
    for mi, m in enumerate(spec.modalities):
        for ei, e in enumerate(spec.experts[m]):
            dim = spec.dims[m][e]
            x = np.zeros((n, dim), dtype=np.float32)
            ok = np.zeros(n, dtype=bool)
            if (m, e) in read:
                src_ids, emb, src_ok = read[(m, e)]
                if emb.shape[1] != dim:
                    raise PredictInputError(f"{m}/{e}: dim {emb.shape[1]}, the model expects {dim}")
                if src_ids is None:
                    if emb.shape[0] != n:
                        raise PredictInputError(f"{m}/{e}: {emb.shape[0]} rows for {n} sample ids")
                    x, ok = emb.copy(), np.ones(n, dtype=bool)
                    if src_ok is not None:
                        ok &= src_ok
                else:
                    pos = pd.Index(src_ids).get_indexer(ids)
                    found = pos >= 0
                    x[found] = emb[pos[found]]
                    ok[found] = src_ok[pos[found]] if src_ok is not None else True
                ok &= np.isfinite(x).all(axis=1)
            mu, sd = stats.mean[m][e], stats.std[m][e]
            x = np.where(ok[:, None], (x - mu) / sd, 0.0).astype(np.float32)
            xs.append(torch.from_numpy(np.ascontiguousarray(x)))
            delta[:, mi, ei] = torch.from_numpy(ok.astype(np.float32))
    return ids, xs, delta


def predict(
    model_dir: str | os.PathLike | LoadedModel,
    inputs: Mapping[str, Mapping[str, Source]],
    sample_ids: Any | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8192,
) -> PredictionResult:
    """Score samples with a saved model.

    ``inputs``: ``{modality: {expert: source}}`` for any subset of the model's modalities and
    experts. A source is a cache path (Parquet, docs/design.md §3.2), an ``(N, D)`` array or tensor
    (non-finite rows = missing), ``(array, ok_mask)`` or ``(ids, array, ok_mask)``. Samples
    are ``sample_ids`` in that order when given, else the union of the caches' ids in
    first-seen order, else ``0..N-1`` for arrays.
    """
    lm = model_dir if isinstance(model_dir, LoadedModel) else load_model(model_dir, device)
    ids, xs, delta = build_inputs(lm, inputs, sample_ids)
    pred = predict_tensors(lm.model, xs, delta, lm.spec.task_type, batch_size)
    has_alpha = pred.alpha is not None
    return PredictionResult(
        sample_ids=ids,
        output_names=lm.spec.output_names,
        probs=pred.probs,
        logits=pred.logits,
        alpha=np.nan_to_num(pred.alpha) if has_alpha else None,
        beta=np.nan_to_num(pred.beta) if pred.beta is not None else None,
        modalities=list(lm.spec.modalities),
        experts={m: list(lm.spec.experts[m]) for m in lm.spec.modalities},
        n_no_modality=int((delta.amax(dim=(1, 2)) == 0).sum()),
    )
