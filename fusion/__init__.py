"""Fusion stage: data loading, MedMIX, baselines, training, metrics (docs/design.md §6, §7).

Entry points: ``python -m fusion train …`` and ``python -m fusion evaluate …``. Importing the
package stays torch-free (the report reads some of its modules); checkpoints are written and
loaded by :mod:`fusion.checkpoint`.
"""

from fusion.registry import (
    MethodPlan,
    ModelSpec,
    list_methods,
    register_method,
    resolve_method,
)

__all__ = [
    "MethodPlan",
    "ModelSpec",
    "list_methods",
    "register_method",
    "resolve_method",
]
