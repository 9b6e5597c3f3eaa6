"""Expert registry, after timm's ``@register_model`` / ``create_model``.

An expert class is registered under a name; ``create_expert(name, **overrides)`` builds one.
Config files may also define named *presets* (configs as data, as open_clip does): a preset is
``{"type": <registered name>, **params}``, and ``create_expert`` resolves it through
``register_preset`` / the ``experts:`` section of config.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from extractors.base import Expert
from medmix.registry import Registry

_REGISTRY: Registry[type[Expert]] = Registry("expert", "registry_name", sort_listing=True)
_EXPERTS: dict[str, type[Expert]] = _REGISTRY.classes
_PRESETS: dict[str, dict[str, Any]] = {}


def register_expert(name: str) -> Callable[[type[Expert]], type[Expert]]:
    """Class decorator: register an expert class under ``name`` (its ``registry_name``)."""
    return _REGISTRY.register(name)


def register_preset(name: str, spec: dict[str, Any]) -> None:
    """Register a named configuration of a registered expert type (configs as data)."""
    if "type" not in spec:
        raise ValueError(f"expert preset {name!r} needs a 'type' naming a registered expert")
    _PRESETS[name] = dict(spec)


@contextmanager
def config_presets(experts: Mapping[str, Any]) -> Iterator[None]:
    """Register a config's ``experts:`` presets for the duration of a ``with`` block.

    Library callers (the doctor, the efficiency table) run inside long-lived processes such as
    a test session or a notebook; the presets they register must not leak into later
    ``create_expert`` calls that mean the bare registered type.
    """
    saved = dict(_PRESETS)
    try:
        for name, spec in experts.items():
            if isinstance(spec, dict) and "type" in spec:
                register_preset(name, spec)
        yield
    finally:
        _PRESETS.clear()
        _PRESETS.update(saved)


def _ensure_loaded() -> None:
    # Importing the expert modules registers them.
    import extractors.experts  # noqa: F401


def list_experts(kind: str | None = None) -> list[str]:
    _ensure_loaded()
    names = sorted(_EXPERTS)
    if kind is not None:
        names = [n for n in names if _EXPERTS[n].kind == kind]
    return names


def expert_class(name: str) -> type[Expert]:
    _ensure_loaded()
    return _REGISTRY.get(name)


def create_expert(name: str, **overrides: Any) -> Expert:
    """Build an expert by registered name or preset name; ``overrides`` update its params."""
    _ensure_loaded()
    if name in _PRESETS:
        spec = {**_PRESETS[name], **overrides}
        type_name = spec.pop("type")
        expert = expert_class(type_name)(**spec)
        expert.name = name
        return expert
    cls = expert_class(name)
    expert = cls(**overrides)
    expert.name = name
    return expert


def build_from_spec(name: str, spec: dict[str, Any]) -> Expert:
    """Build from a config.yaml ``experts:`` entry without registering it globally."""
    spec = dict(spec)
    type_name = spec.pop("type", name)
    expert = expert_class(type_name)(**spec)
    expert.name = name
    return expert
