"""Slide expert: tissue tiles at a target resolution through an inner tile (image) expert.

Per slide: resolution from the file (:func:`extractors.readers.slides.slide_mpp`), a tissue mask
on a thumbnail, a grid of ``tile_px`` tiles at ``target_mpp`` µm/px (level-0 side
``tile_px * target_mpp / mpp``), tiles with tissue fraction >= ``min_tissue`` kept and thinned to
``max_tiles`` evenly in raster order, each read from the best pyramid level and resized, encoded
by ``tile_expert``, and the tile embeddings mean-pooled. The loaded item keeps the level-0
coordinates of the kept tiles (and the mask) for later use (attention pooling, heat maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.pooled import PooledImageExpert
from extractors.readers import resolve_path
from extractors.readers.slides import (
    TISSUE_METHODS,
    open_slide,
    read_tile,
    slide_mpp,
    thumbnail,
    tile_grid,
    tissue_mask,
)
from extractors.registry import register_expert


@dataclass
class SlideItem:
    tiles: list[Any]  # the inner expert's loaded items, one per kept tile
    coords: np.ndarray  # (N, 2) int64 level-0 (x, y) of each tile's top-left corner
    tile_size0: float  # tile side in level-0 pixels
    tissue: np.ndarray  # (N,) tissue fraction per kept tile
    n_candidates: int  # tissue tiles before the max_tiles cap
    mpp: float
    mpp_source: str
    dims: tuple[int, int]  # level-0 (W, H)
    mask: (
        np.ndarray
    )  # thumbnail tissue mask (bool); level-0 px per mask px = dims / mask.shape[::-1]


@register_expert("slide-tiles")
class SlideTilesExpert(PooledImageExpert):
    """Tile-and-pool WSI expert over an inner image expert (``tile_expert``: name, preset or dict)."""

    kind = "slide"
    inner_key = "tile_expert"
    own_packages = ("openslide-python", "openslide-bin", "scipy", "numpy")

    def __init__(
        self,
        tile_expert: str | dict[str, Any] = "texture-glcm-lbp",
        target_mpp: float = 0.5,
        tile_px: int = 224,
        min_tissue: float = 0.5,
        max_tiles: int | None = 64,
        default_mpp: float | None = None,
        tissue_method: str = "saturation",
        mask_px_per_tile: int = 8,
        batch_size: int = 2,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        if tissue_method not in TISSUE_METHODS:
            raise ValueError(f"slide-tiles: tissue_method must be one of {TISSUE_METHODS}")
        if float(target_mpp) <= 0 or int(tile_px) < 8:
            raise ValueError("slide-tiles: target_mpp must be > 0 and tile_px >= 8")
        super().__init__(
            tile_expert,
            batch_size=batch_size,
            device=device,
            seed=seed,
            target_mpp=float(target_mpp),
            tile_px=int(tile_px),
            min_tissue=float(min_tissue),
            max_tiles=int(max_tiles) if max_tiles is not None else None,
            default_mpp=float(default_mpp) if default_mpp is not None else None,
            tissue_method=tissue_method,
            mask_px_per_tile=int(mask_px_per_tile),
        )

    def parts(self, item: SlideItem) -> list[Any]:
        return item.tiles

    @property
    def pooling(self) -> str:
        return (
            f"mean over <= {self.params['max_tiles']} tissue tiles ({self.inner.pooling} per tile)"
        )

    def load(self, value: str, root: Path) -> SlideItem:
        path = resolve_path(root, value)
        p = self.params
        slide = open_slide(path)
        try:
            mpp, source = slide_mpp(slide, path, p["default_mpp"])
            dims = tuple(int(v) for v in slide.dimensions)
            size0 = p["tile_px"] * p["target_mpp"] / mpp
            if dims[0] < size0 or dims[1] < size0:
                raise SampleError(
                    f"slide ({dims[0]}x{dims[1]} px) is smaller than one tile ({size0:.0f} px)"
                )
            thumb = thumbnail(slide, dims, size0 / p["mask_px_per_tile"])
            mask = tissue_mask(
                thumb,
                method=p["tissue_method"],
                min_object_px=max(4, p["mask_px_per_tile"] ** 2 // 4),
            )
            if not mask.any():
                raise SampleError("no tissue found")
            grid = tile_grid(
                dims, size0, mask, min_tissue=p["min_tissue"], max_tiles=p["max_tiles"]
            )
            if len(grid.coords) == 0:
                raise SampleError("no tissue found")
            tiles = [
                self.inner.prepare_array(
                    read_tile(slide, x, y, size0, p["tile_px"]).astype(np.float32) / 255.0
                )
                for x, y in grid.coords
            ]
        finally:
            slide.close()
        return SlideItem(
            tiles, grid.coords, size0, grid.tissue, grid.n_candidates, mpp, source, dims, mask
        )  # type: ignore[arg-type]
