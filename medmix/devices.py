"""The compute device a config names: ``cpu``, ``cuda``, ``cuda:1``, or ``auto``."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values unchanged.

    torch is imported only for ``auto``, so planning a run never loads it."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "cpu"
