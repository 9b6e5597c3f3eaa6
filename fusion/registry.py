"""Method registry: method names -> fusion model classes, and checkpoints that rebuild them.

A fusion method is one :class:`torch.nn.Module` subclass of
:class:`fusion.medmix.FusionModel`, registered with ``@register_method("name")``; its
constructor takes a :class:`ModelSpec` (everything that fixes the architecture). Later
baselines (Max, Attention, M3Care, AdaCoMed) plug in as one registered class each.

Method strings used by the workflow are resolved by :func:`resolve_method`:
``medmix``, ``meanavg``, ``concat`` and ``<base>-only-<modality>`` (the base method restricted
to one modality's experts, e.g. ``medmix-only-frontal``).

A checkpoint is ``model.safetensors`` (the state dict) plus ``config.json`` (the spec and the
standardisation statistics); :func:`load_model` rebuilds the model from these two files alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from fusion.data import FusionData, Standardization
    from fusion.medmix import FusionModel

CHECKPOINT_FORMAT = "medmix-fusion/1"
ONLY_SEP = "-only-"

_METHODS: dict[str, type] = {}


class MethodError(ValueError):
    """An unknown method name or a method that does not fit the dataset."""


def register_method(name: str):
    """Class decorator: make a FusionModel subclass available under ``name``."""

    def deco(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise MethodError(
                f"method {name!r} registered twice ({_METHODS[name].__name__}, {cls.__name__})"
            )
        if ONLY_SEP in name:
            raise MethodError(f"method name {name!r} may not contain {ONLY_SEP!r}")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register_method decorators.
    import fusion.baselines  # noqa: F401
    import fusion.medmix  # noqa: F401


def list_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def method_class(name: str) -> type[FusionModel]:
    _load_builtin()
    if name not in _METHODS:
        raise MethodError(f"unknown fusion method {name!r}; registered: {sorted(_METHODS)}")
    return _METHODS[name]


@dataclass(frozen=True)
class MethodPlan:
    """A resolved method string: the registered model and the modalities it sees."""

    name: str  # the full method string, e.g. medmix-only-frontal
    base: str  # the registered model name, e.g. medmix
    modalities: list[str]


def resolve_method(method: str, modalities: list[str]) -> MethodPlan:
    """``medmix`` -> all modalities; ``medmix-only-frontal`` -> MedMIX on ``frontal`` alone."""
    if ONLY_SEP in method:
        base, only = method.split(ONLY_SEP, 1)
        method_class(base)
        if only not in modalities:
            raise MethodError(f"method {method!r}: no modality {only!r} (have {modalities})")
        return MethodPlan(method, base, [only])
    method_class(method)
    return MethodPlan(method, method, list(modalities))


@dataclass
class ModelSpec:
    """Everything that fixes a fusion model's architecture (saved as config.json)."""

    method: str  # registered base method
    modalities: list[str]
    experts: dict[str, list[str]]  # modality -> expert names, in order
    dims: dict[str, dict[str, int]]  # modality -> expert -> input dim
    task_type: str  # multilabel / binary / multiclass
    label_names: list[str]
    n_outputs: int  # C: labels (binary / multilabel) or classes (multiclass)
    class_names: list[str] | None = None  # multiclass only
    d: int = 64
    adapter_bottleneck: int = 32
    dropout: float = 0.2
    run_method: str = ""  # the method string the run was started with (e.g. medmix-only-ct)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flat_experts(self) -> list[tuple[str, str]]:
        return [(m, e) for m in self.modalities for e in self.experts[m]]

    @property
    def max_experts(self) -> int:
        return max(len(self.experts[m]) for m in self.modalities)

    @property
    def output_names(self) -> list[str]:
        """One name per output column: the labels, or ``{label}_{class}`` for multiclass."""
        if self.task_type == "multiclass":
            return [f"{self.label_names[0]}_{c}" for c in (self.class_names or [])]
        return list(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(**d)


def build_model(spec: ModelSpec) -> FusionModel:
    return method_class(spec.method)(spec)


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
        from fusion.train import predict

        return predict(self.model, data, batch_size=batch_size)


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C)
    logits: np.ndarray  # (N, C)
    alpha: np.ndarray | None  # (N, M, E_max), 0 where missing
    beta: np.ndarray | None  # (N, M), 0 where missing


def save_model(
    directory: str | os.PathLike,
    model: FusionModel,
    standardization: Standardization,
    info: dict[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": CHECKPOINT_FORMAT})
    cfg = {
        "format": CHECKPOINT_FORMAT,
        "spec": model.spec.to_dict(),
        "standardization": standardization.to_dict(),
        "info": info or {},
    }
    (directory / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a saved model from ``model.safetensors`` + ``config.json`` (eval mode)."""
    from safetensors.torch import load_file

    from fusion.data import Standardization

    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    if cfg.get("format") != CHECKPOINT_FORMAT:
        raise MethodError(f"{directory}: unknown checkpoint format {cfg.get('format')!r}")
    spec = ModelSpec.from_dict(cfg["spec"])
    model = build_model(spec)
    model.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(device)))
    model.to(device).eval()
    return LoadedModel(
        model, spec, Standardization.from_dict(cfg["standardization"]), cfg.get("info", {})
    )
