"""Method registry: method names -> fusion model classes, and checkpoints that rebuild them.

A fusion method is one :class:`torch.nn.Module` subclass of
:class:`fusion.medmix.FusionModel`, registered with ``@register_method("name")``; its
constructor takes a :class:`ModelSpec` (everything that fixes the architecture).

Method strings used by the workflow are resolved by :func:`resolve_method`:

* a registered name (``medmix``, ``medmix-sum``, ``meanavg``, ``concat``, ``max``, ``attention``, ``m3care``,
  ``adacomed``, ``onellm``) — on every modality;
* ``<base>-only-<modality>``: the base method restricted to one modality's experts
  (e.g. ``medmix-only-frontal``);
* ``<modality>-large``: the single-modality teacher reference (paper Table 1, ``*-Large``):
  a head on that modality's teacher cache (``teachers/{modality}.parquet``);
* ``linear-probe``: a scikit-learn logistic regression on the concatenated expert embeddings
  (:mod:`fusion.probe`); no torch model class, trained by :func:`fusion.probe.run_probe`.

The grammar of method strings and the catalogue of names, labels and row order are in
:mod:`medmix.methods` (torch-free); which caches a run reads is :func:`medmix.plan.method_inputs`.

A checkpoint is ``model.safetensors`` (the state dict) plus ``config.json`` (the spec and the
standardisation statistics); :func:`load_model` rebuilds the model from these two files alone
(a linear probe's, format ``medmix-linear-probe/1``, through :func:`fusion.probe.load_probe`).
Distillation heads are training-only: they are never part of a checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmix.methods import LARGE, METHODS, PROBE, MethodError, parse_method

if TYPE_CHECKING:
    import torch

    from fusion.data import FusionData, Standardization
    from fusion.medmix import FusionModel

CHECKPOINT_FORMAT = "medmix-fusion/2"

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make a FusionModel subclass available under ``name``."""

    def deco(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise MethodError(
                f"method {name!r} registered twice ({_METHODS[name].__name__}, {cls.__name__})"
            )
        if name not in METHODS:
            raise MethodError(
                f"method {name!r} is not in the catalogue (medmix.methods.CATALOGUE): add its "
                "name, table label and row group there"
            )
        if bool(getattr(cls, "uses_teacher_input", False)) != METHODS[name].teacher_input:
            raise MethodError(
                f"method {name!r}: uses_teacher_input of {cls.__name__} differs from its "
                "catalogue entry (medmix.methods.CATALOGUE)"
            )
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register_method decorators.
    import fusion.baselines  # noqa: F401
    import fusion.medmix  # noqa: F401
    import fusion.medmix_sum  # noqa: F401


def list_methods() -> list[str]:
    _load_builtin()
    return sorted([*_METHODS, PROBE])


def method_class(name: str) -> type[FusionModel]:
    if name == PROBE:
        raise MethodError(
            f"{PROBE!r} is a scikit-learn logistic regression, not a torch fusion model "
            "(fusion.probe.run_probe trains it; fusion.probe.load_probe loads it)"
        )
    _load_builtin()
    if name not in _METHODS:
        try:  # ablation variants (e.g. medmix-uniform) register on demand
            from fusion.ablations import register_variants

            register_variants()
        except ImportError:
            pass
    if name not in _METHODS:
        raise MethodError(f"unknown fusion method {name!r}; registered: {sorted(_METHODS)}")
    return _METHODS[name]


@dataclass(frozen=True)
class MethodPlan:
    """A resolved method string: the registered model and the modalities it sees."""

    name: str  # the full method string, e.g. medmix-only-frontal
    base: str  # the registered model name, e.g. medmix
    modalities: list[str]
    teacher_input: bool = False  # the teacher caches are input experts (adacomed, *-large)


def resolve_method(
    method: str, modalities: list[str], teachers: dict[str, Any] | None = None
) -> MethodPlan:
    """``medmix`` -> all modalities; ``medmix-only-frontal`` -> MedMIX on ``frontal`` alone;
    ``report-large`` -> a head on the ``report`` teacher cache (``teachers`` must name one)."""
    base, only = parse_method(method)
    cls = None if base == PROBE else method_class(base)
    teacher_input = bool(getattr(cls, "uses_teacher_input", False))
    if only is not None:
        if only not in modalities:
            raise MethodError(f"method {method!r}: no modality {only!r} (have {modalities})")
        mods = [only]
    else:
        if base == LARGE:
            raise MethodError("the teacher reference is '<modality>-large', e.g. 'report-large'")
        mods = list(modalities)
    if teacher_input:
        have = [m for m in mods if m in (teachers or {})]
        if not have:
            raise MethodError(
                f"method {method!r} reads teacher caches, but no teacher is configured for "
                f"{mods} (datasets.<dataset>.teachers: {{modality: expert}})"
            )
    return MethodPlan(method, base, mods, teacher_input)


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
    # the expert encoder: "paper" (residual adapter, then Dropout(GELU(LN(P h̃ + p)))) or
    # "linear" (u = P h + p: no adapter, norm, activation or dropout; ours, docs/fusion.md)
    projection: str = "paper"
    run_method: str = ""  # the method string the run was started with (e.g. medmix-only-ct)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific settings

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
class Predictions:
    probs: np.ndarray  # (N, C)
    logits: np.ndarray  # (N, C)
    alpha: np.ndarray | None  # (N, M, E_max), 0 where missing
    beta: np.ndarray | None  # (N, M), 0 where missing


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
        from fusion.predict import predict_data

        return predict_data(self.model, data, batch_size=batch_size)


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
    if str(cfg.get("format", "")).startswith("medmix-linear-probe/"):
        from fusion.probe import load_probe

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
    return LoadedModel(
        model, spec, Standardization.from_dict(cfg["standardization"]), cfg.get("info", {})
    )
