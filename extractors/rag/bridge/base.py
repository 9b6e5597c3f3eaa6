"""What every bridge shares: its error, the rows it fills, the inputs it reads and its base class."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cohorts.manifest import ManifestMeta
from extractors.base import SampleError
from medmix.errors import UserError


class BridgeError(UserError, ValueError):
    pass


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def sample_reason(exc: BaseException) -> str:
    """A failed sample's reason: a ``SampleError`` says it plainly, anything else with its type."""
    return str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"[:300]


@dataclass
class BridgeRows:
    sample_ids: list[str]
    text: list[str | None]
    source: list[str | None]
    status: list[str]
    reason: list[str | None]

    @classmethod
    def missing(cls, sample_ids: list[str]) -> BridgeRows:
        """Every row ``missing``; a bridge overwrites the rows of the samples that have the modality."""
        n = len(sample_ids)
        return cls(
            sample_ids, [None] * n, [None] * n, ["missing"] * n, ["modality not recorded"] * n
        )

    def set_row(
        self, i: int, text: str | None, source: str | None, status: str, reason: str | None
    ) -> None:
        self.text[i], self.source[i], self.status[i], self.reason[i] = text, source, status, reason

    def set_failed(self, i: int, source: str, reason: str) -> None:
        """Row ``i`` failed; its text stays as it was (None)."""
        self.source[i], self.status[i], self.reason[i] = source, "failed", reason

    def fill_each(self, inputs: BridgeInputs, fn: Callable[[Any], str], source: str) -> None:
        """``fn(value)`` for each sample with the modality; an exception fails that sample only."""
        for i in range(len(self.sample_ids)):
            if not inputs.present[i]:
                continue
            try:
                self.text[i] = fn(inputs.values[i])
                self.source[i], self.status[i], self.reason[i] = source, "ok", None
            except Exception as exc:
                self.set_failed(i, source, sample_reason(exc))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "sample_id": self.sample_ids,
                "text": self.text,
                "source": self.source,
                "status": self.status,
                "reason": self.reason,
            }
        )


@dataclass(frozen=True)
class BridgeInputs:
    """One modality of a manifest as a bridge reads it, plus the files the nearest-report
    bridge reads beside it (the image expert's cache; for an external-validation target, the
    source cohort's manifest and image cache)."""

    manifest: pd.DataFrame
    manifest_meta: ManifestMeta
    modality: str
    kind: str
    root: Path  # the dataset root that the modality's paths are relative to
    sample_ids: list[str]
    values: list[Any]
    present: list[bool]
    image_cache: str | os.PathLike | None = None
    fit_manifest: str | os.PathLike | None = None
    fit_image_cache: str | os.PathLike | None = None


class Bridge:
    """Turns one modality into text. Subclasses register under a name with ``register_bridge``,
    which sets ``name``; ``create_bridge(name, **cfg)`` builds one from its config."""

    name: ClassVar[str] = "bridge"
    input_kind: ClassVar[str | None] = None  # the one modality kind it takes (None: any)
    generative: ClassVar[bool] = False  # a report-generation model (weights, maybe a GPU)

    def __init__(self, cfg: Mapping[str, Any] | None = None, device: str = "cpu") -> None:
        self.cfg = dict(cfg or {})
        self.device = device

    def check_kind(self, inputs: BridgeInputs) -> None:
        if self.input_kind is not None and inputs.kind != self.input_kind:
            raise BridgeError(
                f"{self.name} bridge needs a {self.input_kind} modality; "
                f"{inputs.modality!r} is {inputs.kind!r}"
            )

    def fill(self, inputs: BridgeInputs, rows: BridgeRows) -> dict[str, Any]:
        """Fill the rows of the samples that have the modality; returns metadata to record."""
        raise NotImplementedError
