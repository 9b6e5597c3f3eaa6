"""Small builders shared by tests (tiny manifests, a deterministic toy expert)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd

from cohorts.manifest import ManifestMeta, write_manifest
from extractors.base import Expert, SampleError


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
