"""Checkpoints: a fusion model saved as ``model.safetensors`` + ``config.json``, and rebuilt.

``model.safetensors`` holds the state dict and ``config.json`` the spec
(:class:`fusion.registry.ModelSpec`) and the standardisation statistics;
:func:`load_model` rebuilds the model from these two files alone (a linear probe's, format
``medmix-linear-probe/1``, through :func:`fusion.probe.load_probe`). Distillation heads are
training-only: they are never part of a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file

from fusion.data import Standardization
from fusion.inference import LoadedModel, read_model_config, save_model_folder
from fusion.probe import load_probe
from fusion.registry import ModelSpec, build_model
from medmix.methods import MethodError

if TYPE_CHECKING:
    import torch

    from fusion.medmix import FusionModel

CHECKPOINT_FORMAT = "medmix-fusion/2"


def save_model(
    directory: str | os.PathLike,
    model: FusionModel,
    standardization: Standardization,
    info: dict[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_model_folder(
        directory, CHECKPOINT_FORMAT, save_file, state, model.spec, standardization, info
    )


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a saved model from ``model.safetensors`` + ``config.json`` (eval mode)."""
    directory = Path(directory)
    cfg = read_model_config(directory)
    if str(cfg.get("format", "")).startswith("medmix-linear-probe/"):
        return load_probe(directory, device)
    if cfg.get("format") != CHECKPOINT_FORMAT:
        raise MethodError(
            f"{directory}: checkpoint format {cfg.get('format')!r}, this code reads "
            f"{CHECKPOINT_FORMAT!r} (retrain the run: the expert encoder's layout changed)"
        )
    spec = ModelSpec.from_dict(cfg["spec"])
    model = build_model(spec)
    model.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(device)))
    model.to(device).eval()
    return LoadedModel.from_config(model, spec, cfg)


__all__ = ["CHECKPOINT_FORMAT", "load_model", "save_model"]
