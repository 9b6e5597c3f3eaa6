"""The expert interface every registered expert implements.

An expert turns one sample's raw value (a file path or a note's text) into one vector:
``load`` reads and preprocesses a sample (cheap to run in DataLoader workers, raises
``SampleError`` with a specific reason for a bad sample), ``embed`` runs a batch of loaded
samples through the model. Experts that learn from data (TF-IDF+SVD) implement ``fit``; the
driver calls it on the training split only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from extractors.cache import CacheMeta, config_hash, package_versions


class SampleError(Exception):
    """A bad sample. The message becomes the cache's ``reason``; it must not contain patient text."""


class Expert(ABC):
    kind: ClassVar[str] = ""  # image | volume | slide | text | timeseries
    registry_name: ClassVar[str] = ""
    requires_fit: ClassVar[bool] = False
    needs_gpu: ClassVar[bool] = False
    packages: ClassVar[tuple[str, ...]] = ("numpy",)

    def __init__(
        self, batch_size: int = 16, device: str = "cpu", seed: int = 0, **params: Any
    ) -> None:
        self.name = self.registry_name
        self.batch_size = int(batch_size)
        self.device = device
        self.seed = int(seed)
        self.params = params

    # -- description ------------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str:
        return f"offline:{self.registry_name}"

    @property
    def revision(self) -> str | None:
        return None

    @property
    def pooling(self) -> str:
        return "none"

    def preprocess_config(self) -> dict[str, Any]:
        """Everything that changes the output; hashed into the cache metadata."""
        return {"type": self.registry_name, "seed": self.seed, **self.params}

    def cache_meta(
        self, dataset: str = "", modality: str = "", dtype: str = "float32"
    ) -> CacheMeta:
        return CacheMeta(
            expert=self.name,
            model_id=self.model_id,
            revision=self.revision,
            dim=self.dim,
            pooling=self.pooling,
            preprocess_hash=config_hash(self.preprocess_config()),
            dtype=dtype,
            dataset=dataset,
            modality=modality,
            packages=package_versions(self.packages),
        )

    # -- work -------------------------------------------------------------------------
    def fit(self, loaded: list[Any]) -> None:  # noqa: B027 - optional hook
        """Learn from loaded training samples (only for ``requires_fit`` experts)."""

    @abstractmethod
    def load(self, value: str, root: Path) -> Any:
        """Read and preprocess one sample; raise SampleError for a bad one."""

    @abstractmethod
    def embed(self, batch: list[Any]) -> np.ndarray:
        """Embed a batch of loaded samples; returns (B, dim) float32."""
