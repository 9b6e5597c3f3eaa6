"""Fusion stage: data loading, MedMIX, baselines, training, metrics (docs/design.md §6, §7).

Entry points: ``python -m fusion train …`` and ``python -m fusion evaluate …``.
"""

from fusion.registry import (
    MethodPlan,
    ModelSpec,
    list_methods,
    load_model,
    register_method,
    resolve_method,
    save_model,
)

__all__ = [
    "MethodPlan",
    "ModelSpec",
    "list_methods",
    "load_model",
    "register_method",
    "resolve_method",
    "save_model",
]
