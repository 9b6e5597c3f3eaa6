"""Small builders shared by tests (tiny manifests, a deterministic toy expert, hand-made fusion
data)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.base import Expert, SampleError
from fusion.data import FusionData, Standardization, TeacherData


def tiny_text_manifest(
    path: Path, n: int = 40, missing_every: int = 7, empty_every: int = 11
) -> Path:
    """A manifest with one text modality; some notes missing, some empty (-> failed)."""
    rows = []
    for i in range(n):
        note = f"patient {i} note with {i % 5} findings " + "word " * (i % 3)
        if i % missing_every == 3:
            note = None
        elif i % empty_every == empty_every - 1:
            note = "   "
        rows.append(
            {
                "sample_id": f"s{i:03d}",
                "patient_id": f"p{i // 2:03d}",
                "split": ("train", "val", "test")[(i // 2) % 3],
                "note": note,
                "label_y": i % 2,
            }
        )
    meta = ManifestMeta(
        dataset="tiny",
        task_type="binary",
        modalities={"note": "text"},
        labels=["y"],
        adapter="test",
    )
    return write_manifest(pd.DataFrame(rows), path, meta)


class CharCountExpert(Expert):
    """Deterministic toy text expert: letter frequencies. Optionally SIGKILLs itself."""

    kind = "text"
    registry_name = "char-count"

    def __init__(self, kill_after_batches: int | None = None, **kw):
        super().__init__(**kw)
        self.kill_after = kill_after_batches
        self.batches = 0

    @property
    def dim(self) -> int:
        return 26

    def load(self, value: str, root: Path) -> str:
        if not value.strip():
            raise SampleError("empty text")
        return value

    def embed(self, batch: list[str]) -> np.ndarray:
        self.batches += 1
        if self.kill_after is not None and self.batches > self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        out = np.zeros((len(batch), 26), np.float32)
        for i, text in enumerate(batch):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out


def tiny_fusion_data(
    dims: dict[str, dict[str, int]],
    x: list[torch.Tensor],
    delta: torch.Tensor,
    y: torch.Tensor,
    split: np.ndarray,
    *,
    task_type: str = "binary",
    label_names: list[str] | None = None,
    class_names: list[str] | None = None,
    teacher: TeacherData | None = None,
    dataset: str = "tiny",
) -> FusionData:
    """FusionData over hand-made rows ``x`` (one per expert, in ``dims`` order): the
    standardisation is the identity (mean 0, σ 1), sample ids ``s0``, ``s1``, …"""
    n = len(split)
    return FusionData(
        dataset=dataset,
        task_type=task_type,
        label_names=label_names or [f"y{i}" for i in range(y.shape[1] if y.ndim > 1 else 1)],
        class_names=class_names,
        modalities=list(dims),
        experts={m: list(ex) for m, ex in dims.items()},
        dims=dims,
        sample_ids=np.array([f"s{i}" for i in range(n)], dtype=object),
        split=np.asarray(split).astype(object),
        x=x,
        delta=delta,
        y=y,
        standardization=Standardization(
            {m: {e: np.zeros(d, np.float32) for e, d in ex.items()} for m, ex in dims.items()},
            {m: {e: np.ones(d, np.float32) for e, d in ex.items()} for m, ex in dims.items()},
        ),
        teacher=teacher,
    )
