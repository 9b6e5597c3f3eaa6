"""3-D volume reading: ``.npy``, ``.npz``, NIfTI (``.nii``, ``.nii.gz``) and DICOM series.

Every reader returns a :class:`Volume` whose array is (D, H, W) float32 with the **axial axis
first** and slices ordered inferior -> superior where the file says where they are:

* NIfTI: the image is reoriented to the closest canonical orientation (RAS+, nibabel's
  ``as_closest_canonical``), so the third voxel axis is inferior->superior whatever the
  acquisition; then each axial slice is laid out radiologically (rows anterior->posterior,
  columns patient right->left) and the array is transposed to (S, A, R) order. Intensities
  are ``get_fdata`` (scl_slope/scl_inter applied): HU for CT.
* DICOM series: a folder of ``.dcm`` files (or a multi-frame file). Files without pixel data are
  skipped; when the folder holds several series the one with the most slices is read. Slices
  are sorted by their position along the slice normal (ImagePositionPatient ·
  (row x column direction cosines)), or by InstanceNumber when positions are absent, and
  converted to HU per slice with RescaleSlope / RescaleIntercept. Rows/columns stay as stored.
  A series with a missing slice, uneven (mixed) slice spacing, duplicate slice positions or
  slices of different pixel spacing is a bad sample (``SampleError`` naming which).
* Voxels must be one real number each: a complex-valued volume (any format: MR raw data,
  phase images) would lose its imaginary part and is a failed sample, as are RGB / structured
  NIfTI and colour DICOM (``SamplesPerPixel`` > 1: a colour image is not a CT volume).
* ``.npy`` / ``.npz``: no orientation is stored. ``axis_order`` says which axis is depth:
  ``"dhw"``, ``"hwd"`` or ``"auto"`` (default): the axis whose size differs when the other two
  are equal (512x512x120 -> last), else the smallest axis if it is last, else the first. Values
  are taken as they are (HU for CT). ``.npz``: key ``npz_key`` or the only array, or
  ``volume``/``image``/``ct``/``arr_0``; an optional ``spacing`` array is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extractors.base import SampleError
from extractors.readers import is_inside, suffix_of

AXIS_ORDERS = ("auto", "dhw", "hwd")


@dataclass
class Volume:
    array: np.ndarray  # (D, H, W) float32, axial axis first
    spacing: tuple[float, float, float] | None  # (dz, dy, dx) in mm when known
    source: str  # "nifti", "dicom", "npy", "npz"
    orientation: str = ""  # e.g. "RAS (canonical)" for NIfTI, "as stored" otherwise


def depth_axis(shape: tuple[int, ...], axis_order: str = "auto") -> int:
    if axis_order == "dhw":
        return 0
    if axis_order == "hwd":
        return 2
    if axis_order != "auto":
        raise ValueError(f"axis_order must be one of {AXIS_ORDERS}, got {axis_order!r}")
    d0, d1, d2 = shape
    if d1 == d2 and d0 != d1:
        return 0
    if d0 == d1 and d2 != d0:
        return 2
    if d2 < d0 and d2 < d1:
        return 2
    return 0


def _check_3d(arr: np.ndarray) -> np.ndarray:
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 2:
        raise SampleError(f"2-D array {arr.shape}, expected a 3-D volume")
    if arr.ndim != 3:
        raise SampleError(f"{arr.ndim}-D array {arr.shape}, expected a 3-D volume")
    if min(arr.shape) < 1:
        raise SampleError(f"empty volume {arr.shape}")
    return arr


def check_voxel_dtype(dtype: np.dtype) -> None:
    """Voxels must be real numbers: a complex volume would lose its imaginary part (MR raw
    data, phase images), a structured one (RGB NIfTI) has no single intensity."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise SampleError(
            f"complex-valued volume (dtype {dtype}); its imaginary part would be lost "
            "(save the magnitude or the phase as a real volume)"
        )
    if dtype.fields is not None:
        raise SampleError(
            f"volume has several values per voxel (dtype {dtype}), expected one intensity"
        )
    if not np.issubdtype(dtype, np.number):
        raise SampleError(f"non-numeric volume dtype {dtype}")


def _from_array(
    arr: np.ndarray, axis_order: str, source: str, spacing: np.ndarray | None = None
) -> Volume:
    arr = _check_3d(np.asarray(arr))
    check_voxel_dtype(arr.dtype)
    ax = depth_axis(arr.shape, axis_order)
    arr = np.moveaxis(arr, ax, 0).astype(np.float32)
    sp = None
    if spacing is not None and np.asarray(spacing).size == 3:
        s = [float(v) for v in np.asarray(spacing).ravel()]
        sp = (s[ax], *[s[i] for i in range(3) if i != ax])
    return Volume(
        np.ascontiguousarray(arr), sp, source, f"as stored ({'DHW' if ax == 0 else 'HWD'} -> DHW)"
    )


def read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        check_voxel_dtype(img.get_data_dtype())
        can = nib.as_closest_canonical(img)
        data = can.get_fdata(dtype=np.float32)
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(f"unreadable NIfTI ({type(exc).__name__}: {exc})"[:200]) from exc
    data = _check_3d(data)
    zooms = tuple(float(z) for z in can.header.get_zooms()[:3])
    # (R, A, S) -> radiological slice layout: rows anterior first, columns patient right first
    arr = data[::-1, ::-1, :].transpose(2, 1, 0)
    return Volume(
        np.ascontiguousarray(arr, dtype=np.float32),
        (zooms[2], zooms[1], zooms[0]),
        "nifti",
        f"RAS canonical (file: {''.join(nib.aff2axcodes(img.affine))})",
    )


def _dicom_files(path: Path) -> list:
    import pydicom

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if path.is_dir() and not all(is_inside(path, f) for f in files):
        # the folder passed the dataset-root check; a link in it must not lead elsewhere
        raise SampleError("DICOM series folder links to a file outside it (symbolic link)")
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=False)
        except Exception:
            continue  # DICOMDIR, notes, thumbnails …
        if "PixelData" in ds:
            out.append(ds)
    return out


def read_dicom(path: Path) -> Volume:
    """A folder of single-slice DICOM files, or one (multi-frame) DICOM file -> Volume in HU."""
    from pydicom.pixels import apply_modality_lut

    datasets = _dicom_files(path)
    if not datasets:
        raise SampleError("no readable DICOM image in the series")
    colour = {int(ds.get("SamplesPerPixel", 1) or 1) for ds in datasets} - {1}
    if colour:
        raise SampleError(
            f"colour DICOM (SamplesPerPixel {max(colour)}), expected a grayscale volume"
        )
    if len(datasets) == 1:
        ds = datasets[0]
        try:
            arr = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
        except Exception as exc:
            raise SampleError(f"unreadable DICOM pixel data ({type(exc).__name__})") from exc
        if arr.ndim == 2:
            arr = arr[None]
        return Volume(_check_3d(arr), None, "dicom", "as stored")
    by_series: dict[str, list] = {}
    for ds in datasets:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    series = max(by_series.values(), key=len)

    def position(ds) -> float | None:
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is None or iop is None:
            return None
        row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        return float(np.dot(np.cross(row, col), np.asarray(ipp, float)))

    pos = [position(ds) for ds in series]
    if all(p is not None for p in pos):
        order = np.argsort(np.asarray(pos), kind="stable")
    else:
        order = np.argsort([int(ds.get("InstanceNumber", 0) or 0) for ds in series], kind="stable")
    slices = []
    try:
        for i in order:
            ds = series[int(i)]
            slices.append(np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32))
    except Exception as exc:
        raise SampleError(f"unreadable DICOM pixel data ({type(exc).__name__})") from exc
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise SampleError(f"DICOM slices differ in size: {sorted(shapes)}")
    arr = np.stack(slices)
    spacing = None
    px = series[0].get("PixelSpacing")
    pxs = {
        tuple(round(float(v), 4) for v in ds.get("PixelSpacing"))
        for ds in series
        if ds.get("PixelSpacing") is not None
    }
    if len(pxs) > 1:
        raise SampleError(f"DICOM slices differ in pixel spacing: {sorted(pxs)[:4]}")
    if all(p is not None for p in pos) and len(pos) > 2:
        _check_slice_gaps(np.diff(np.sort(np.asarray(pos, dtype=np.float64))))
    if px is not None and all(p is not None for p in pos):
        dz = float(np.median(np.diff(np.sort(np.asarray(pos))))) if len(pos) > 1 else 0.0
        spacing = (dz, float(px[0]), float(px[1]))
    return Volume(_check_3d(arr), spacing, "dicom", "as stored, sorted along the slice normal")


def _check_slice_gaps(gaps: np.ndarray, rtol: float = 0.1) -> None:
    """Raise SampleError unless consecutive slice positions are evenly spaced (a missing slice
    leaves a gap of about twice the spacing; mixed spacing, e.g. two series merged, varies)."""
    if (gaps <= 1e-6).any():
        raise SampleError(
            f"DICOM series has {int((gaps <= 1e-6).sum())} duplicate slice position(s)"
        )
    step = float(np.min(gaps))
    if np.allclose(gaps, step, rtol=rtol, atol=0.01):
        return
    ratio = gaps / step
    near_int = np.abs(ratio - np.round(ratio)) <= rtol
    if near_int.all():
        n = int(np.round(ratio).sum() - len(ratio))
        raise SampleError(
            f"DICOM series has {n} missing slice(s) (gaps up to {float(gaps.max()):.3g} mm, "
            f"spacing {step:.3g} mm)"
        )
    raise SampleError(
        f"DICOM series has mixed slice spacing ({step:.3g} to {float(gaps.max()):.3g} mm)"
    )


def read_volume(path: str | Path, axis_order: str = "auto", npz_key: str | None = None) -> Volume:
    """Read a volume file or DICOM folder (see the module docstring). Raises SampleError."""
    path = Path(path)
    suffix = suffix_of(path)
    if path.is_dir() or suffix == ".dcm":
        return read_dicom(path)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise SampleError(f"unreadable .npy ({type(exc).__name__})") from exc
        return _from_array(arr, axis_order, "npy")
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = npz_key
                if key is None:
                    cands = [k for k in keys if k != "spacing"]
                    key = (
                        cands[0]
                        if len(cands) == 1
                        else next(
                            (k for k in ("volume", "image", "ct", "arr_0") if k in keys), None
                        )
                    )
                if key is None or key not in keys:
                    raise SampleError(f".npz has no volume array (keys {keys[:8]}); set npz_key")
                arr = z[key]
                spacing = z["spacing"] if "spacing" in keys else None
        except SampleError:
            raise
        except Exception as exc:
            raise SampleError(f"unreadable .npz ({type(exc).__name__})") from exc
        return _from_array(arr, axis_order, "npz", spacing)
    raise SampleError(f"unsupported volume format {suffix!r} (.npy, .npz, .nii, .nii.gz, DICOM)")
