"""Bridge registry, after timm's ``@register_model`` / ``create_model`` and the expert registry
(``extractors.registry``).

A bridge class is registered under the name that ``rag.bridges.<key>.type`` gives;
``create_bridge(name, **cfg)`` builds one. Importing ``extractors.rag.bridge`` registers the
built-in bridges, so every list of bridge names (``BRIDGE_TYPES``, ``GENERATORS``, the config
check of ``bridge_config``) comes from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from extractors.rag.bridge.base import Bridge
from medmix.registry import Registry

B = TypeVar("B", bound=type[Bridge])

_REGISTRY: Registry[type[Bridge]] = Registry("bridge", "name")
_BRIDGES: dict[str, type[Bridge]] = _REGISTRY.classes


def register_bridge(name: str) -> Callable[[B], B]:
    """Class decorator: register a bridge class under ``name`` (its ``name``)."""
    return _REGISTRY.register(name)  # type: ignore[return-value]


def list_bridges(generative: bool | None = None) -> list[str]:
    """Registered names in registration order, which is the order the package imports the
    bridge modules: text, EHR and nearest-report first, then the report generators.

    ``generative``: only the report-generation models (True) or only the others (False).
    """
    return [
        name for name, cls in _BRIDGES.items() if generative is None or cls.generative == generative
    ]


def bridge_class(name: str) -> type[Bridge]:
    return _REGISTRY.get(name)


def create_bridge(name: str, /, device: str = "cpu", **cfg: Any) -> Bridge:
    """Build a registered bridge from its config (the keys of a ``rag.bridges`` entry)."""
    return bridge_class(name)(cfg, device=device)
