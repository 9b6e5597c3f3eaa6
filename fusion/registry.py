"""Method registry: method names -> fusion model classes.

A fusion method is one :class:`torch.nn.Module` subclass of
:class:`fusion.medmix.FusionModel`, registered with ``@register_method("name")``; its
constructor takes a :class:`ModelSpec` (everything that fixes the architecture). The built-in
methods (:mod:`fusion.medmix`, :mod:`fusion.medmix_sum`, :mod:`fusion.baselines` and the
ablation variant :mod:`fusion.medmix_uniform`) are loaded on the first lookup.

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
Checkpoints (``model.safetensors`` + ``config.json``) are written and rebuilt by
:mod:`fusion.checkpoint`.

Torch-free at import: the model modules are imported on the first lookup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from medmix.methods import LARGE, METHODS, PROBE, MethodError, parse_method

if TYPE_CHECKING:
    from fusion.data import FusionData
    from fusion.medmix import FusionModel

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


def load_builtin_methods() -> None:
    """Register the built-in methods (importing their modules runs ``@register_method``)."""
    import fusion.baselines  # noqa: F401
    import fusion.medmix  # noqa: F401
    import fusion.medmix_sum  # noqa: F401
    import fusion.medmix_uniform  # noqa: F401


def list_methods() -> list[str]:
    """The methods a config's ``methods:`` may name (registered ablation variants such as
    ``medmix-uniform`` are left out), and the linear probe."""
    load_builtin_methods()
    return sorted([*(m for m in _METHODS if METHODS[m].in_config), PROBE])


def method_class(name: str) -> type[FusionModel]:
    if name == PROBE:
        raise MethodError(
            f"{PROBE!r} is a scikit-learn logistic regression, not a torch fusion model "
            "(fusion.probe.run_probe trains it; fusion.probe.load_probe loads it)"
        )
    load_builtin_methods()
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

    @classmethod
    def of_data(cls, data: FusionData, method: str, run_method: str, **arch: Any) -> ModelSpec:
        """The spec of a ``method`` model on ``data``'s modalities, experts, dims and labels
        (``arch``: the architecture fields, e.g. ``d``, ``dropout``, ``extra``)."""
        return cls(
            method=method,
            modalities=list(data.modalities),
            experts={m: list(data.experts[m]) for m in data.modalities},
            dims={m: dict(data.dims[m]) for m in data.modalities},
            task_type=data.task_type,
            label_names=list(data.label_names),
            n_outputs=data.n_outputs,
            class_names=data.class_names,
            run_method=run_method,
            **arch,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(**d)


def build_model(spec: ModelSpec) -> FusionModel:
    return method_class(spec.method)(spec)
