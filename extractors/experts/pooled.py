"""Experts that cut a sample into images and mean-pool an inner image expert's embeddings.

The 2.5D CT slicer (``ct-slicer``: axial slices of a volume) and the WSI tiler
(``slide-tiles``: tissue tiles of a slide) both hand their images to an *inner* image expert,
named in their config by a registered name, a preset or a dict spec, through its
``prepare_array``, and average its embeddings per sample. :class:`PooledImageExpert` is what
they share: building the inner expert, describing themselves by it (dim, model id, revision,
packages, its preprocessing config inside theirs) and the pooling.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from extractors.base import Expert
from extractors.experts.image import ImageExpert
from extractors.registry import create_expert


def resolve_inner_expert(spec: str | dict[str, Any], device: str, role: str) -> ImageExpert:
    """Build the inner image expert of a volume/slide expert from a name, preset or dict spec."""
    if isinstance(spec, dict):
        spec = dict(spec)
        type_name = spec.pop("type", None)
        if not type_name:
            raise ValueError(f"{role}: a dict spec needs 'type' naming a registered image expert")
        spec.setdefault("device", device)
        inner = create_expert(str(type_name), **spec)
    else:
        inner = create_expert(str(spec), device=device)
    if inner.kind != "image" or not isinstance(inner, ImageExpert):
        raise ValueError(
            f"{role}: {spec!r} is a {inner.kind!r} expert, not an image expert with prepare_array()"
        )
    return inner


class PooledImageExpert(Expert):
    """Base of an expert whose loaded item holds its inner expert's loaded images
    (:meth:`parts`); the embedding is the mean of their embeddings."""

    inner_key: ClassVar[str] = ""  # the config key that names the inner expert
    own_packages: ClassVar[tuple[str, ...]] = ()  # what reading the samples needs

    def __init__(
        self,
        inner: str | dict[str, Any],
        batch_size: int,
        device: str,
        seed: int,
        **params: Any,
    ) -> None:
        self.inner: ImageExpert = resolve_inner_expert(
            inner, device, role=f"{self.registry_name} {self.inner_key}"
        )
        super().__init__(
            batch_size=batch_size, device=device, seed=seed, **{self.inner_key: inner}, **params
        )

    def parts(self, item: Any) -> list[Any]:
        """The inner expert's loaded images of one loaded sample."""
        raise NotImplementedError

    @property
    def packages(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys((*self.inner.packages, *self.own_packages)))

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def revision(self) -> str | None:
        return self.inner.revision

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        cfg[self.inner_key] = {"name": self.inner.name, **self.inner.preprocess_config()}
        return cfg

    def embed(self, batch: list[Any]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = [part for item in batch for part in self.parts(item)]
        vecs = np.asarray(self.inner.embed(flat), dtype=np.float64)
        out, i = [], 0
        for item in batch:
            k = len(self.parts(item))
            out.append(vecs[i : i + k].mean(axis=0))
            i += k
        return np.stack(out).astype(np.float32)
