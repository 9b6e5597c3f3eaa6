"""Volume readers (npy/npz/NIfTI/DICOM, orientation, HU) and the 2.5D CT slicer."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from extractors.base import SampleError
from extractors.experts.volume import CTSlicerExpert, slice_indices
from extractors.readers.volumes import depth_axis, read_volume
from extractors.registry import create_expert, register_preset


def _phantom(d: int = 20, h: int = 24, w: int = 28) -> np.ndarray:
    """(D, H, W) HU-like volume: air background, a soft-tissue box, bone-bright slice marks."""
    z, y, x = np.mgrid[0:d, 0:h, 0:w]
    vol = np.full((d, h, w), -1000.0, np.float32)
    vol[(abs(y - h / 2) < h / 3) & (abs(x - w / 2) < w / 3)] = 40.0
    vol += (z * 10).astype(np.float32) * ((x < 4) & (y < 4))  # depth-dependent corner
    return vol


def test_depth_axis_rules() -> None:
    assert depth_axis((120, 512, 512)) == 0
    assert depth_axis((512, 512, 120)) == 2
    assert depth_axis((100, 90, 30)) == 2
    assert depth_axis((30, 90, 100)) == 0
    assert depth_axis((64, 64, 64), "hwd") == 2


def test_npy_npz_axis_orders_agree(tmp_path: Path) -> None:
    vol = _phantom()
    np.save(tmp_path / "dhw.npy", vol)
    np.save(tmp_path / "hwd.npy", vol.transpose(1, 2, 0))
    np.savez(tmp_path / "v.npz", volume=vol, spacing=np.array([3.0, 0.7, 0.7]))
    a = read_volume(tmp_path / "dhw.npy", axis_order="dhw").array
    b = read_volume(tmp_path / "hwd.npy", axis_order="hwd").array
    v = read_volume(tmp_path / "v.npz", axis_order="dhw")
    np.testing.assert_array_equal(a, vol)
    np.testing.assert_array_equal(b, vol)
    np.testing.assert_array_equal(v.array, vol)
    assert v.spacing == (3.0, 0.7, 0.7)
    e = CTSlicerExpert(k_slices=4, axis_order="hwd")
    f = CTSlicerExpert(k_slices=4, axis_order="dhw")
    np.testing.assert_array_equal(
        e.embed([e.load("hwd.npy", tmp_path)]), f.embed([f.load("dhw.npy", tmp_path)])
    )


def test_nifti_orientation_is_canonicalised(tmp_path: Path) -> None:
    """The same physical volume stored RAS, flipped (LAS) or with permuted axes reads the same."""
    ras = np.random.default_rng(0).normal(size=(10, 12, 14)).astype(np.float32)  # (x=R, y=A, z=S)
    nib.save(nib.Nifti1Image(ras, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "ras.nii.gz")
    las_aff = np.diag([-2.0, 2.0, 3.0, 1.0])
    las_aff[0, 3] = 2.0 * (
        ras.shape[0] - 1
    )  # voxel i of the flipped array sits where voxel n-1-i was
    nib.save(nib.Nifti1Image(ras[::-1].copy(), las_aff), tmp_path / "las.nii.gz")
    perm = np.zeros((4, 4))
    perm[0, 2], perm[1, 1], perm[2, 0], perm[3, 3] = 2.0, 2.0, 3.0, 1.0  # voxel axes (S, A, R)
    nib.save(nib.Nifti1Image(ras.transpose(2, 1, 0).copy(), perm), tmp_path / "sar.nii")
    ref = read_volume(tmp_path / "ras.nii.gz")
    assert ref.array.shape == (14, 12, 10)  # (S, A, R): axial slices first
    assert ref.spacing == (3.0, 2.0, 2.0)
    # radiological layout: slice rows anterior -> posterior, columns patient right -> left
    np.testing.assert_array_equal(ref.array[5], ras[::-1, ::-1, 5].T)
    for name in ("las.nii.gz", "sar.nii"):
        np.testing.assert_array_equal(read_volume(tmp_path / name).array, ref.array)


def test_real_ct_orientation_hu_and_slices(realdata: Path) -> None:
    vol = read_volume(realdata / "ct" / "example_ct.nii.gz")
    d, h, w = vol.array.shape
    assert (d, h, w) == (112, 101, 122) and vol.spacing == (3.0, 3.0, 3.0)
    assert vol.array.min() <= -1000 and vol.array.max() > 1000  # HU: air ... bone/contrast
    assert -200 < np.median(vol.array[vol.array > -500]) < 200  # soft tissue around 0-100 HU
    # anatomy on the canonical grid: the left kidney is on the image right (radiological view),
    # the right kidney on the image left, both in the posterior half
    for side, right_half in (("left", True), ("right", False)):
        mask = read_volume(realdata / "ct" / "kidney_masks" / f"kidney_{side}.nii.gz").array > 0.5
        _, ys, xs = np.nonzero(mask)
        assert (xs.mean() > w / 2) == right_half
        assert ys.mean() > h / 2
    expert = CTSlicerExpert(k_slices=8)
    item = expert.load("ct/example_ct.nii.gz", realdata)
    assert len(item.slices) == 8 and item.shape == (112, 101, 122)
    np.testing.assert_array_equal(item.indices, slice_indices(112, 8))
    assert item.indices[0] == 0 and item.indices[-1] == 111 and np.all(np.diff(item.indices) > 0)
    out = expert.embed([item])
    assert out.shape == (1, 181) and np.isfinite(out).all()


def test_dicom_hu_and_series_sorting(realdata: Path, tmp_path: Path) -> None:
    src = realdata / "dicom" / "CT_small.dcm"
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(src, one / "IM0001.dcm")
    vol = read_volume(one)
    assert vol.array.shape == (1, 128, 128)
    np.testing.assert_allclose(vol.array[0], expected)
    assert vol.array.min() < -500  # intercept -1024 applied
    with pytest.raises(SampleError, match="1 slice"):
        CTSlicerExpert().load("one", tmp_path)
    # a 5-slice series written out of order, each slice with its own intercept
    series = tmp_path / "series"
    series.mkdir()
    z0 = float(ds.ImagePositionPatient[2])
    for k, file_order in enumerate([3, 0, 4, 1, 2]):
        s = pydicom.dcmread(src)
        s.ImagePositionPatient = [
            s.ImagePositionPatient[0],
            s.ImagePositionPatient[1],
            z0 + 5.0 * k,
        ]
        s.InstanceNumber = 5 - k  # deliberately disagrees with position: position wins
        s.RescaleIntercept = -1024 + 100 * k
        s.save_as(series / f"file{file_order}.dcm")
    (series / "notes.txt").write_text("not a DICOM file")
    v = read_volume(series)
    assert v.array.shape == (5, 128, 128)
    offsets = [float(np.mean(v.array[k] - ds.pixel_array)) for k in range(5)]
    np.testing.assert_allclose(offsets, [-1024 + 100 * k for k in range(5)])
    assert v.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    expert = CTSlicerExpert(k_slices=3)
    assert expert.embed([expert.load("series", tmp_path)]).shape == (1, 181)


def test_slicer_window_rescale_and_pooling(tmp_path: Path) -> None:
    levels = np.linspace(-400, 600, 16).astype(np.float32)  # one constant HU value per slice
    vol = np.broadcast_to(levels[:, None, None], (16, 32, 32)).copy()
    np.save(tmp_path / "v.npy", vol)
    e = CTSlicerExpert(k_slices=5, hu_window=[-160, 240], axis_order="dhw")
    out = e.embed([e.load("v.npy", tmp_path)])[0]
    idx = slice_indices(16, 5)
    expect = np.mean(np.clip((levels[idx] + 160) / 400, 0, 1))
    assert out[e.inner.feature_names.index("mean")] == pytest.approx(expect, abs=1e-5)


def test_slicer_bad_inputs(tmp_path: Path) -> None:
    e = CTSlicerExpert()
    np.save(tmp_path / "flat.npy", np.zeros((32, 32), np.float32))
    with pytest.raises(SampleError, match="2-D array"):
        e.load("flat.npy", tmp_path)
    vol = _phantom()
    vol[3, 4, 5] = np.nan
    np.save(tmp_path / "nan.npy", vol)
    with pytest.raises(SampleError, match="NaN voxels"):
        e.load("nan.npy", tmp_path)
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    with pytest.raises(SampleError, match="empty file"):
        e.load("zero.nii.gz", tmp_path)
    (tmp_path / "junk.nii.gz").write_bytes(b"garbage, not gzip")
    with pytest.raises(SampleError, match="unreadable NIfTI"):
        e.load("junk.nii.gz", tmp_path)
    (tmp_path / "v.mha").write_bytes(b"x")
    with pytest.raises(SampleError, match="unsupported volume format"):
        e.load("v.mha", tmp_path)


def test_slicer_inner_experts_config_and_determinism(
    tmp_path: Path, tiny_dinov2_spec: dict
) -> None:
    np.save(tmp_path / "v.npy", _phantom())
    register_preset("test-dinov2-tiny", tiny_dinov2_spec)
    by_preset = create_expert("ct-slicer", image_expert="test-dinov2-tiny", k_slices=4)
    by_dict = CTSlicerExpert(image_expert=dict(tiny_dinov2_spec), k_slices=4)
    assert by_preset.dim == by_dict.dim == 64
    a = by_preset.embed([by_preset.load("v.npy", tmp_path), by_preset.load("v.npy", tmp_path)])
    b = by_dict.embed([by_dict.load("v.npy", tmp_path)])
    assert a.shape == (2, 64) and np.isfinite(a).all()
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[0], a[1], atol=1e-5)
    cfg = by_preset.preprocess_config()
    assert cfg["image_expert"]["type"] == "dinov2" and cfg["image_expert"]["hidden_size"] == 64
    assert cfg["k_slices"] == 4 and cfg["hu_window"] == [-160.0, 240.0]
    assert by_preset.model_id.startswith("offline:dinov2-random-init(")
    assert "nibabel" in by_preset.packages and "transformers" in by_preset.packages
    other = CTSlicerExpert(image_expert=dict(tiny_dinov2_spec), k_slices=4, hu_window=[-1000, 1000])
    assert other.cache_meta().preprocess_hash != by_dict.cache_meta().preprocess_hash
    with pytest.raises(ValueError, match="not an image expert"):
        CTSlicerExpert(image_expert="minilm")
