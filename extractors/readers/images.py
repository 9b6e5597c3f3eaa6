"""2-D image reading: PNG/JPEG/TIFF/BMP (Pillow), single-frame DICOM and ``.npy``.

Every reader returns ``float32`` in [0, 1], shape (H, W) for grayscale or (H, W, 3) for colour.
An RGB file whose three channels are identical (a grayscale X-ray saved as RGB) is returned as
(H, W). Bit depth:

* 8-bit and 1-bit images are divided by 255 (1).
* Integer images deeper than 8 bits (16-bit PNG/TIFF, Pillow modes ``I;16*`` and ``I``) and
  float images outside [0, 1] are rescaled by ``high_bit``: ``"range"`` (default) maps the
  image's own min..max to 0..1, because medical 16-bit files rarely use the full range (12-bit
  detectors, arbitrary offsets); ``"dtype"`` divides by 65535 (absolute, comparable across files).
* DICOM: modality LUT (RescaleSlope/Intercept), then the VOI LUT / window when the file has one,
  then min..max to 0..1 (always: after the LUTs there is no fixed full scale), MONOCHROME1
  inverted.

* 16-bit colour (48-bit RGB / 64-bit RGBA): Pillow would keep only the top 8 bits of each
  channel, so a 16-bit RGB / RGBA TIFF is read with tifffile (all 16 bits, then ``high_bit`` as
  for 16-bit grayscale); 16-bit colour in any other format (PNG, CMYK TIFF) is a failed sample.
* Integer pixels outside 0..65535 (32-bit ``I`` images, signed 16-bit) with
  ``high_bit: "dtype"`` are a failed sample (clipping them would be silent); ``"range"`` reads
  them.

What the file holds must be one picture, and all of it:

* a multi-frame file (multi-page TIFF, animated GIF / PNG / WebP, multi-frame DICOM) is a failed
  sample naming the frame count (only the first frame would be read). Reduced-resolution pages
  of a TIFF (thumbnails, pyramid levels: NewSubfileType bit 0) are not frames;
* an alpha channel (RGBA, LA, PA, a transparent palette index / grey level / colour as in GIF
  and PNG ``tRNS``, a 4-channel ``.npy``) is
  dropped only when it is constant (it holds no information); an image with transparent and
  opaque pixels is a failed sample ("transparent pixels"), since what lies under a transparent
  pixel is arbitrary;
* a complex-valued ``.npy`` is a failed sample (its imaginary part would be dropped).

EXIF orientation is applied (JPEG from phones and scanners).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from extractors.base import SampleError
from extractors.readers import suffix_of

HIGH_BIT_MODES = ("range", "dtype")


def _scale_high_bit(arr: np.ndarray, high_bit: str, full_scale: float = 65535.0) -> np.ndarray:
    if high_bit == "dtype" and arr.size and (arr.min() < 0 or arr.max() > full_scale):
        raise SampleError(
            f"pixel values {arr.min()}..{arr.max()} outside 0..{full_scale:.0f} "
            '(high_bit: "dtype" would clip them; use "range")'
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise SampleError("non-finite pixel values")
    if high_bit == "dtype":
        return np.clip(arr / full_scale, 0.0, 1.0)
    if high_bit != "range":
        raise ValueError(f"high_bit must be one of {HIGH_BIT_MODES}, got {high_bit!r}")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def _collapse_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) with equal channels -> (H, W); otherwise unchanged."""
    if (
        rgb.ndim == 3
        and np.array_equal(rgb[..., 0], rgb[..., 1])
        and np.array_equal(rgb[..., 0], rgb[..., 2])
    ):
        return rgb[..., 0]
    return rgb


TRANSPARENT = "transparent pixels (the alpha channel varies; flatten the image first)"


def check_alpha(alpha: np.ndarray) -> None:
    """An alpha channel may be dropped only when it is constant (it then holds nothing)."""
    if alpha.size and alpha.min() != alpha.max():
        raise SampleError(TRANSPARENT)


def pil_to_array(im: Image.Image, high_bit: str = "range") -> np.ndarray:
    """A loaded Pillow image -> float32 [0, 1], (H, W) or (H, W, 3)."""
    mode = im.mode
    if "A" in im.getbands() or "a" in im.getbands():  # RGBA, LA, PA, RGBa, La
        check_alpha(np.asarray(im.getchannel(im.getbands()[-1])))
    elif "transparency" in im.info and mode in ("P", "L", "RGB", "1"):
        # a transparent palette index / grey level / colour (GIF, PNG tRNS)
        check_alpha(np.asarray(im.convert("RGBA").getchannel("A")))
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        return _scale_high_bit(arr, high_bit)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0:
            return arr
        return _scale_high_bit(arr, "range")  # a float image has no full scale to divide by
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode != "RGB":
        im = im.convert("RGB")  # RGBA (constant alpha dropped), CMYK, YCbCr, LAB, HSV
    rgb = np.asarray(im, dtype=np.uint8)
    return _collapse_gray(rgb).astype(np.float32) / 255.0


def full_frames(im: Image.Image) -> int:
    """Frames of an opened image (pages of a TIFF, frames of a GIF / APNG / WebP), not counting
    a TIFF's reduced-resolution pages (NewSubfileType bit 0: thumbnails, pyramid levels)."""
    n = int(getattr(im, "n_frames", 1) or 1)
    if n <= 1 or im.format != "TIFF":
        return n
    full = 0
    for i in range(n):
        im.seek(i)
        full += not int(im.tag_v2.get(254, 0)) & 1
    im.seek(0)
    return full


def _is_deep_colour(im: Image.Image) -> bool:
    """A colour image with 16 bits per channel, which Pillow would decode to 8."""
    return im.mode in ("RGB", "RGBA", "RGBX", "CMYK") and any(
        ";16" in str(t.args[0] if isinstance(t.args, tuple) else t.args) for t in im.tile or []
    )


def _read_deep_tiff(path: Path, im: Image.Image, high_bit: str) -> np.ndarray:
    """A 16-bit colour TIFF through tifffile (all 16 bits), scaled like 16-bit grayscale."""
    import tifffile

    if int(im.getexif().get(0x0112, 1) or 1) != 1:
        raise SampleError("16-bit colour TIFF with an EXIF orientation is not supported")
    try:
        arr = np.asarray(tifffile.imread(path, key=0))
    except Exception as exc:
        raise SampleError(f"unreadable 16-bit colour TIFF ({type(exc).__name__})") from exc
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise SampleError(f"16-bit colour TIFF has shape {arr.shape}, expected (H, W, 3 or 4)")
    if arr.shape[-1] == 4:
        check_alpha(arr[..., 3])
    return _collapse_gray(_scale_high_bit(arr[..., :3], high_bit))


def _read_pil(path: Path, high_bit: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            frames = full_frames(im)
            if frames > 1:
                raise SampleError(
                    f"multi-frame image ({frames} frames; only one 2-D image is read)"
                )
            if _is_deep_colour(im):
                if im.format != "TIFF" or im.mode not in ("RGB", "RGBA"):
                    raise SampleError(
                        f"16-bit {im.mode} {im.format} (Pillow reads only 8 bits per channel; "
                        "save it as 16-bit grayscale or 16-bit RGB TIFF)"
                    )
                return _read_deep_tiff(path, im, high_bit)
            im.load()
            im = ImageOps.exif_transpose(im)
            return pil_to_array(im, high_bit)
    except SampleError:
        raise
    except UnidentifiedImageError as exc:
        raise SampleError("not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise SampleError("image too large (decompression bomb guard)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SampleError(
            f"truncated or corrupt image ({type(exc).__name__}: {exc})"[:200]
        ) from exc


def _read_dicom_image(path: Path, high_bit: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise SampleError(f"unreadable DICOM ({type(exc).__name__})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise SampleError(f"multi-frame DICOM ({frames} frames), not a 2-D image")
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or arr.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        return _collapse_gray(
            arr.astype(np.float32) / float(2 ** int(ds.get("BitsStored", 8)) - 1)
        ).clip(0, 1)
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)
    # After the modality/VOI LUTs the values have no fixed full scale: always min..max.
    out = _scale_high_bit(np.asarray(arr, dtype=np.float32), "range")
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def read_image(path: str | Path, high_bit: str = "range") -> np.ndarray:
    """Read a 2-D image file as float32 [0, 1], (H, W) or (H, W, 3). Raises SampleError."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix == ".dcm":
        return _read_dicom_image(path, high_bit)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise SampleError(f"unreadable .npy ({type(exc).__name__})") from exc
        if np.iscomplexobj(arr):
            raise SampleError(
                f"complex-valued image (dtype {arr.dtype}); its imaginary part would be lost"
            )
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise SampleError(f"non-numeric image dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] == 4:
            check_alpha(arr[..., 3])
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3]
        elif arr.ndim != 2:
            raise SampleError(f"expected a 2-D image array, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        arr = arr.astype(np.float32)
        if np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            return arr
        return _scale_high_bit(arr, "range")
    out = _read_pil(path, high_bit)
    if min(out.shape[:2]) < 2:
        raise SampleError(f"image too small ({out.shape[1]}x{out.shape[0]} px)")
    return out


def as_unit_array(arr: np.ndarray) -> np.ndarray:
    """Validate an in-memory image: float32, (H, W) or (H, W, 3), finite, clipped to [0, 1]."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:  # an 8-bit image passed as is
        arr = arr.astype(np.float32) / 255.0
    elif not np.issubdtype(arr.dtype, np.floating):
        raise SampleError(f"expected a float image in [0, 1], got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        check_alpha(arr[..., 3])
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise SampleError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    if min(arr.shape[:2]) < 2:
        raise SampleError(f"image too small ({arr.shape[1]}x{arr.shape[0]} px)")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise SampleError("non-finite pixel values")
    return np.clip(arr, 0.0, 1.0)


def to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) by ITU-R BT.601 luma; (H, W) unchanged."""
    if arr.ndim == 2:
        return arr
    return (arr @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) by replication; (H, W, 3) unchanged."""
    if arr.ndim == 3:
        return arr
    return np.repeat(arr[..., None], 3, axis=-1)


def resize_float(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic (antialiased when shrinking, as Pillow does) resize of a float image to (h, w).

    Works per channel in Pillow's 32-bit float mode, so no 8-bit quantisation; the result is
    clipped back to [0, 1] (bicubic overshoots at edges).
    """
    h, w = int(size[0]), int(size[1])
    if arr.shape[0] == h and arr.shape[1] == w:
        return arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
        out = np.asarray(im.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    else:
        chans = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32)).resize(
                    (w, h), Image.Resampling.BICUBIC
                ),
                dtype=np.float32,
            )
            for c in range(arr.shape[-1])
        ]
        out = np.stack(chans, axis=-1)
    return np.clip(out, 0.0, 1.0)
