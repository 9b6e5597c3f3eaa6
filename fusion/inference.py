"""A fusion model at inference: its outputs over whole tensors, and a model loaded to predict.

:func:`predict_tensors` (whole tensors) and :func:`predict_data` (a :class:`fusion.data.FusionData`,
its rows read a batch at a time) run any fusion model (or a linear probe's
:class:`fusion.probe.ProbeModule`) in eval mode over per-expert inputs and their availability
δ, in batches, and return
:class:`Predictions` (probabilities, logits, and α / β where the model has them).
:class:`LoadedModel` is a model rebuilt from a checkpoint (:func:`fusion.checkpoint.load_model`)
with the standardisation statistics its inputs must be scaled by; :func:`save_model_folder` and
:func:`read_model_config` write and read the folder both checkpoint formats share
(``model.safetensors`` + ``config.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fusion.data import Standardization

if TYPE_CHECKING:
    from fusion.data import FusionData
    from fusion.medmix import FusionModel
    from fusion.registry import ModelSpec


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C)
    logits: np.ndarray  # (N, C)
    alpha: np.ndarray | None  # (N, M, E_max), 0 where missing
    beta: np.ndarray | None  # (N, M), 0 where missing


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[list[torch.Tensor], torch.Tensor]],
    task_type: str,
) -> Predictions:
    """Eval-mode outputs of ``model`` over ``batches`` of (per-expert inputs, δ), in order."""
    model.eval()
    device = model.prior.device
    logits, alphas, betas = [], [], []
    for xs, delta in batches:
        dtype = torch.bfloat16 if device.type == "cuda" else None
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model([x.to(device) for x in xs], delta.to(device))
        logits.append(out.logits.float().cpu())
        if out.alpha is not None:
            alphas.append(out.alpha.float().cpu())
        if out.beta is not None:
            betas.append(out.beta.float().cpu())
    c = model.spec.n_outputs
    lg = torch.cat(logits) if logits else torch.zeros(0, c)
    probs = torch.softmax(lg, dim=-1) if task_type == "multiclass" else torch.sigmoid(lg)
    return Predictions(
        probs=probs.numpy(),
        logits=lg.numpy(),
        alpha=torch.cat(alphas).numpy() if alphas else None,
        beta=torch.cat(betas).numpy() if betas else None,
    )


def predict_tensors(
    model: torch.nn.Module,
    xs: list[torch.Tensor],
    delta: torch.Tensor,
    task_type: str,
    batch_size: int = 8192,
) -> Predictions:
    """Eval-mode outputs of ``model`` for per-expert inputs ``xs`` and availability ``delta``."""
    n = delta.shape[0]
    batches = (
        ([x[s : s + batch_size] for x in xs], delta[s : s + batch_size])
        for s in range(0, n, batch_size)
    )
    return predict_batches(model, batches, task_type)


def predict_data(model: torch.nn.Module, data: FusionData, batch_size: int = 8192) -> Predictions:
    """Eval-mode outputs for every sample of a :class:`fusion.data.FusionData`, its rows read
    ``batch_size`` at a time (:meth:`fusion.data.FusionData.batch`)."""
    idx = torch.arange(data.n, device=data.delta.device)
    batches = (data.batch(idx[s : s + batch_size]) for s in range(0, data.n, batch_size))
    return predict_batches(model, batches, data.task_type)


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with the statistics its inputs must be scaled by."""

    model: FusionModel
    spec: ModelSpec
    standardization: Standardization
    info: dict[str, Any]

    def predict(self, data: FusionData, batch_size: int = 8192) -> Predictions:
        """Probabilities (and α/β where the model has them) for every sample of ``data``.

        ``data`` must have been loaded with ``standardization=self.standardization``.
        """
        return predict_data(self.model, data, batch_size=batch_size)

    @classmethod
    def from_config(cls, model: Any, spec: ModelSpec, cfg: dict[str, Any]) -> LoadedModel:
        """``model`` with the statistics and info of its folder's ``config.json`` (``cfg``)."""
        return cls(
            model, spec, Standardization.from_dict(cfg["standardization"]), cfg.get("info", {})
        )


def save_model_folder(
    directory: str | os.PathLike,
    fmt: str,
    save: Callable[..., Any],
    tensors: dict[str, Any],
    spec: ModelSpec,
    standardization: Standardization,
    info: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """``model.safetensors`` (``save(tensors, path, metadata=...)``, a safetensors writer) and
    ``config.json`` (format ``fmt``, spec, standardisation statistics, info and ``extra``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save(tensors, str(directory / "model.safetensors"), metadata={"format": fmt})
    cfg = {
        "format": fmt,
        "spec": spec.to_dict(),
        "standardization": standardization.to_dict(),
        **extra,
        "info": info or {},
    }
    (directory / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))


def read_model_config(directory: Path) -> dict[str, Any]:
    """The ``config.json`` of a saved model folder."""
    return json.loads((directory / "config.json").read_text())


__all__ = [
    "LoadedModel",
    "Predictions",
    "predict_batches",
    "predict_data",
    "predict_tensors",
    "read_model_config",
    "save_model_folder",
]
