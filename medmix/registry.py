"""A registry of named classes, after timm's ``@register_model`` / ``create_model``.

:class:`Registry` is the shared part of the expert registry (``extractors.registry``) and the
bridge registry (``extractors.rag.bridge.registry``): a class decorator that files a class under
a name (refusing a second class under a name already taken) and a lookup whose error lists the
registered names. Project-free: it imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Classes by name; ``what`` names the thing in messages, ``attr`` is the class attribute
    that learns the registered name, ``sort_listing`` sorts the names an unknown-name error
    lists (else registration order)."""

    def __init__(self, what: str, attr: str, sort_listing: bool = False) -> None:
        self.what = what
        self.attr = attr
        self.sort_listing = sort_listing
        self.classes: dict[str, C] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: file the class under ``name`` and set its ``attr`` to ``name``."""

        def deco(cls: C) -> C:
            if name in self.classes and self.classes[name] is not cls:
                raise ValueError(
                    f"{self.what} {name!r} registered twice "
                    f"({self.classes[name].__name__}, {cls.__name__})"
                )
            setattr(cls, self.attr, name)
            self.classes[name] = cls
            return cls

        return deco

    def get(self, name: str) -> C:
        """The class registered as ``name``; a ``KeyError`` listing the names otherwise."""
        if name not in self.classes:
            names = sorted(self.classes) if self.sort_listing else list(self.classes)
            raise KeyError(f"unknown {self.what} {name!r}; registered: {', '.join(names)}")
        return self.classes[name]
