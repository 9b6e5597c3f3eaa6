"""Volume expert: the 2.5D CT slicer (paper App. A).

K axial slice indices are sampled uniformly over the full depth (``np.linspace(0, D-1, K)``
rounded; a volume with fewer than K slices repeats some), each slice is clipped to the HU
window and rescaled to [0, 1], handed to the inner image expert's ``prepare_array`` (which
replicates grayscale to RGB where its model wants RGB and bicubic-resizes to its input size),
encoded, and the K slice embeddings are mean-pooled.

Voxels that are NaN or inf make the sample fail (``SampleError("NaN voxels")``) rather than being
filled: a volume with undefined voxels is a conversion error upstream, and a silent fill would
hide it. A volume with a single slice (a 2-D image) fails too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.pooled import PooledImageExpert
from extractors.readers import resolve_path
from extractors.readers.volumes import AXIS_ORDERS, Volume, read_volume
from extractors.registry import register_expert


@dataclass
class VolumeItem:
    slices: list[Any]  # the inner expert's loaded items, one per sampled slice
    indices: np.ndarray  # sampled slice indices along the axial axis (D, H, W order)
    shape: tuple[int, int, int]  # (D, H, W)
    spacing: tuple[float, float, float] | None


def slice_indices(depth: int, k: int) -> np.ndarray:
    """K indices spread uniformly over [0, depth-1], first and last included."""
    return np.round(np.linspace(0, depth - 1, k)).astype(np.int64)


def slicing_window(role: str, hu_window: Any, k_slices: int) -> tuple[float, float]:
    """The (lo, hi) HU window of a slicer's config, checked with ``k_slices``."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    if not hi > lo:
        raise ValueError(f"{role}: hu_window {hu_window} must be [lo, hi] with hi > lo")
    if int(k_slices) < 1:
        raise ValueError(f"{role}: k_slices must be >= 1")
    return lo, hi


def windowed_slices(
    arr: np.ndarray, k: int, hu_window: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The indices of K axial slices of a (D, H, W) volume and the slices, HU-windowed to [0, 1]."""
    idx = slice_indices(arr.shape[0], k)
    lo, hi = hu_window
    return idx, (np.clip(arr[idx], lo, hi) - lo) / (hi - lo)


def check_volume(arr: np.ndarray) -> None:
    """A (D, H, W) volume is refused when it has one slice (a 2-D image) or undefined voxels."""
    if arr.shape[0] < 2:
        raise SampleError(f"volume has {arr.shape[0]} slice(s), expected a 3-D volume")
    if not np.isfinite(arr).all():
        raise SampleError("NaN voxels")


@register_expert("ct-slicer")
class CTSlicerExpert(PooledImageExpert):
    """2.5D slicer over an inner image expert (``image_expert``: registered/preset name or dict)."""

    kind = "volume"
    inner_key = "image_expert"
    own_packages = ("nibabel", "pydicom", "numpy")

    def __init__(
        self,
        image_expert: str | dict[str, Any] = "texture-glcm-lbp",
        k_slices: int = 8,
        hu_window: tuple[float, float] | list[float] = (-160.0, 240.0),
        axis_order: str = "auto",
        npz_key: str | None = None,
        batch_size: int = 8,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        lo, hi = slicing_window("ct-slicer", hu_window, k_slices)
        if axis_order not in AXIS_ORDERS:
            raise ValueError(f"ct-slicer: axis_order must be one of {AXIS_ORDERS}")
        super().__init__(
            image_expert,
            batch_size=batch_size,
            device=device,
            seed=seed,
            k_slices=int(k_slices),
            hu_window=[lo, hi],
            axis_order=axis_order,
            npz_key=npz_key,
        )

    def parts(self, item: VolumeItem) -> list[Any]:
        return item.slices

    @property
    def pooling(self) -> str:
        return f"mean over {self.params['k_slices']} axial slices ({self.inner.pooling} per slice)"

    def read(self, value: str, root: Path) -> Volume:
        path = resolve_path(root, value, allow_dir=True)
        return read_volume(
            path, axis_order=self.params["axis_order"], npz_key=self.params["npz_key"]
        )

    def prepare_volume(self, vol: Volume) -> VolumeItem:
        arr = vol.array
        check_volume(arr)
        idx, unit = windowed_slices(arr, self.params["k_slices"], self.params["hu_window"])
        slices = [self.inner.prepare_array(s) for s in unit]
        return VolumeItem(slices, idx, tuple(int(s) for s in arr.shape), vol.spacing)  # type: ignore[arg-type]

    def load(self, value: str, root: Path) -> VolumeItem:
        return self.prepare_volume(self.read(value, root))
