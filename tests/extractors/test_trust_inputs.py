"""Inputs that would be read silently wrong, run through the real extraction driver.

Each case is a real file (or note) written here and extracted by the real offline experts with
``extractors.extract.extract``; the cache must hold the exact failure reason, or, where the
input is handled as documented (docs/experts.md, "Inputs"), the documented value: a date-time
time column gives the same embedding as the same series in numeric hours, a constant alpha
channel the same embedding as the image without it, a 16-bit colour TIFF all of its 16 bits.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cohorts.manifest import ManifestMeta
from extractors.base import Expert
from extractors.cache import read_cache
from extractors.experts.text import NO_VOCABULARY
from extractors.extract import extract
from extractors.readers.images import TRANSPARENT
from extractors.readers.notes import EMPTY_TEXT, ONLY_REPLACEMENT
from extractors.registry import create_expert
from tests.extractors.test_bad_inputs import _write_raw_manifest, minilm_expert

OK = "ok"


def run_cases(
    tmp_path: Path, kind: str, cases: dict[str, tuple[str, str]], expert: Expert, tag: str = ""
) -> dict[str, np.ndarray | None]:
    """One manifest of ``cases`` = {sample_id: (value, expected)} through ``extract``;
    ``expected`` is ``"ok"`` or the exact failure reason. Returns the ok embeddings."""
    meta = ManifestMeta(
        dataset="trust",
        task_type="binary",
        modalities={"m": kind},
        labels=["y"],
        adapter="test",
        root=str(tmp_path / "data"),
    )
    rows = [
        {
            "sample_id": sid,
            "patient_id": f"p{i}",
            "split": "test" if sid.startswith("test_") else "train",  # tfidf fits on train
            "m": v,
            "label_y": i % 2,
        }
        for i, (sid, (v, _)) in enumerate(cases.items())
    ]
    mpath = _write_raw_manifest(tmp_path / f"manifest{tag}.parquet", rows, meta)
    out = tmp_path / f"cache{tag}.parquet"
    summary = extract(
        mpath, "m", expert, out, shard_size=64, max_failed_fraction=1.0, progress=False
    )
    data = read_cache(summary.path)
    got = {}
    problems = []
    for sid, status, reason, emb in zip(
        data.sample_ids, data.status, data.reason, data.embeddings, strict=True
    ):
        want = cases[str(sid)][1]
        if want == OK:
            good = status == "ok" and np.isfinite(emb).all() and np.any(emb != 0)
        else:
            good = status == "failed" and reason == want
        if not good:
            problems.append(f"{sid}: want {want!r}, got {status!r} {reason!r}")
        got[str(sid)] = emb if status == "ok" else None
    assert not problems, "\n".join(problems)
    assert set(got) == set(cases)
    return got


# -- notes -----------------------------------------------------------------------------------

INVISIBLE_NOTES = {
    "zero_width_space": "\u200b\u200b\u200b",
    "zero_width_joiners": "\u200c\u200d\u200c",
    "word_joiner": "\u2060",
    "bom_only": "\ufeff",
    "invisible_mix": " \u200b\u00a0\ufeff\u2060\n\t\u200d ",
    "unicode_spaces": "\u3000\u2028\u2029\u2003\u202f\u205f",
    "control_chars": "\x00\x01\x1f\x7f\x85",
    "bidi_and_soft_hyphen": "\u200e\u200f\u202e\u00ad",
    "lone_combining_mark": "\u0301\u0308",
    "hangul_filler_braille_blank": "\u3164\u2800",
}


def _note_cases() -> dict[str, tuple[str, str]]:
    cases = {sid: (text, EMPTY_TEXT) for sid, text in INVISIBLE_NOTES.items()}
    cases["nbsp_only"] = ("\u00a0\u00a0", EMPTY_TEXT)  # the case that already failed: same reason
    cases["replacement_only"] = ("\ufffd \ufffd\u200b", ONLY_REPLACEMENT)
    cases["zero_width_inside_words"] = ("\ufeffchest pain\u200b resolved, fever", OK)
    return cases


def test_invisible_notes_fail_as_empty_text_minilm(tmp_path: Path) -> None:
    cases = _note_cases()
    cases["good"] = ("chest pain resolved, discharged home", OK)
    run_cases(tmp_path, "text", cases, minilm_expert())


def test_invisible_notes_fail_as_empty_text_tfidf(tmp_path: Path) -> None:
    cases = {f"train{i}": (f"patient {i} chest pain fever cough stable", OK) for i in range(5)}
    cases.update(_note_cases())
    # every word unknown to the vocabulary fitted on the training split: no zero vector
    cases["test_out_of_vocabulary"] = ("unremarkable radiograph", NO_VOCABULARY)
    cases["test_known_words"] = ("fever and cough", OK)
    got = run_cases(tmp_path, "text", cases, create_expert("tfidf-svd", n_components=3, min_df=1))
    assert got["zero_width_inside_words"] is not None


# -- EHR time series -------------------------------------------------------------------------

HOURS = np.arange(12, dtype=float)
HR = 80.0 + 2.0 * HOURS  # +2 per hour
SBP = 120.0 - 0.5 * HOURS + np.random.default_rng(0).normal(0, 1, 12)
START = pd.Timestamp("2150-03-01 08:00")


def _series_files(d: Path) -> dict[str, tuple[str, str]]:
    d.mkdir()
    base = pd.DataFrame({"hour": HOURS, "hr": HR, "sbp": SBP})
    base.to_parquet(d / "numeric.parquet")
    stamps = START + pd.to_timedelta(HOURS, unit="h")
    base.assign(hour=stamps).to_parquet(d / "datetime.parquet")
    base.assign(hour=stamps.tz_localize("Europe/Paris")).to_parquet(d / "datetime_tz.parquet")
    base.assign(hour=pd.to_timedelta(HOURS, unit="h")).to_parquet(d / "timedelta.parquet")
    base.assign(hour=stamps.strftime("%Y-%m-%dT%H:%M:%S")).to_csv(d / "iso.csv", index=False)
    base.assign(hour=[f"t{i}" for i in range(12)]).to_csv(d / "words.csv", index=False)
    partly = base.astype({"hour": object})
    partly.loc[4, "hour"] = "4h?"
    partly.to_csv(d / "one_bad_cell.csv", index=False)
    base.assign(hour=stamps.strftime("%m/%d/%Y %H:%M")).to_csv(d / "us_dates.csv", index=False)
    base.assign(hour=HOURS % 2 == 0).to_parquet(d / "bool_time.parquet")
    base.assign(charttime=stamps).to_parquet(d / "extra_datetime.parquet")
    pd.DataFrame({"hour": HOURS, "temp": 37.0 + HOURS / 10}).to_parquet(d / "other_vars.parquet")
    neither = "values are neither numbers nor ISO 8601 date-times or durations"
    return {
        "numeric": ("numeric.parquet", OK),
        "datetime": ("datetime.parquet", OK),
        "datetime_tz": ("datetime_tz.parquet", OK),
        "timedelta": ("timedelta.parquet", OK),
        "iso_strings": ("iso.csv", OK),
        "words": ("words.csv", f"time column 'hour': 12 of 12 {neither}"),
        "one_bad_cell": ("one_bad_cell.csv", f"time column 'hour': 1 of 12 {neither}"),
        "us_dates": ("us_dates.csv", f"time column 'hour': 12 of 12 {neither}"),
        "bool_time": (
            "bool_time.parquet",
            "time column 'hour' has dtype bool, not times or numbers",
        ),
        "extra_datetime": (
            "extra_datetime.parquet",
            "column 'charttime' holds date-times; only the time column 'hour' may "
            "(drop it or set time_column)",
        ),
        "no_configured_variable": (
            "other_vars.parquet",
            "none of the expert's 2 variables is observed in the file",
        ),
    }


@pytest.mark.parametrize("name", ["ts-stats", "catch22"])
def test_time_columns_are_hours(tmp_path: Path, name: str) -> None:
    cases = _series_files(tmp_path / "data")
    got = run_cases(tmp_path, "timeseries", cases, create_expert(name, variables=["hr", "sbp"]))
    for sid in ("datetime", "datetime_tz", "timedelta", "iso_strings"):
        np.testing.assert_allclose(got[sid], got["numeric"], rtol=1e-6, atol=1e-6, err_msg=sid)
    if name == "ts-stats":  # hr rises 2 per hour: the slope is per hour, not per nanosecond
        slope = create_expert(name, variables=["hr", "sbp"]).per_var_names.index("slope")
        assert got["datetime"][slope] == pytest.approx(2.0, rel=1e-6)


# -- images ----------------------------------------------------------------------------------


def _texture(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 48-bit RGB PNG, written chunk by chunk (Pillow cannot write one)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _image_files(d: Path) -> dict[str, tuple[str, str]]:
    d.mkdir()
    gray = _texture()
    rgb = np.stack([_texture(seed=s) for s in (1, 2, 3)], -1)
    Image.fromarray(rgb).save(d / "rgb.png")
    tifffile.imwrite(
        d / "pages.tif", np.stack([gray, gray[::-1], gray.T]), photometric="minisblack"
    )
    frames = [Image.fromarray(_texture(seed=s)).convert("P") for s in range(4)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    rgb_frames = [Image.fromarray(np.stack([_texture(seed=s)] * 3, -1)) for s in range(2)]
    rgb_frames[0].save(d / "anim.png", save_all=True, append_images=rgb_frames[1:])
    with tifffile.TiffWriter(d / "thumb.tif") as tif:  # full page + reduced-resolution page
        tif.write(gray)
        tif.write(gray[::4, ::4], subfiletype=1)
    Image.fromarray(gray).save(d / "gray.png")
    alpha = np.full(gray.shape, 255, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(d / "rgba_opaque.png")
    alpha[:10] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(d / "rgba_holes.png")
    Image.fromarray(np.dstack([gray, alpha])).save(d / "la_holes.png")
    pal = Image.fromarray(gray).convert("P")
    pal.save(d / "transparent.gif", transparency=int(np.asarray(pal)[0, 0]))
    np.save(d / "alpha4.npy", np.dstack([rgb, alpha]))
    np.save(d / "complex.npy", (gray + 1j * gray.T).astype(np.complex64))
    narrow = (gray.astype(np.uint16) * 16 + 1000).astype(np.uint16)  # 12-bit data in 16 bits
    (d / "rgb16.png").write_bytes(_png16_rgb(np.stack([narrow] * 3, -1)))
    tifffile.imwrite(d / "rgb16.tif", np.stack([narrow] * 3, -1), photometric="rgb")
    Image.fromarray(narrow).save(d / "gray16.png")
    return {
        "gray": ("gray.png", OK),
        "rgb": ("rgb.png", OK),
        "multipage_tiff": ("pages.tif", "multi-frame image (3 frames; only one 2-D image is read)"),
        "animated_gif": ("anim.gif", "multi-frame image (4 frames; only one 2-D image is read)"),
        "animated_png": ("anim.png", "multi-frame image (2 frames; only one 2-D image is read)"),
        "tiff_with_thumbnail": ("thumb.tif", OK),
        "rgba_opaque": ("rgba_opaque.png", OK),
        "rgba_transparent": ("rgba_holes.png", TRANSPARENT),
        "la_transparent": ("la_holes.png", TRANSPARENT),
        "palette_transparent": ("transparent.gif", TRANSPARENT),
        "npy_alpha": ("alpha4.npy", TRANSPARENT),
        "complex_npy": (
            "complex.npy",
            "complex-valued image (dtype complex64); its imaginary part would be lost",
        ),
        "png_16bit_colour": (
            "rgb16.png",
            "16-bit RGB PNG (Pillow reads only 8 bits per channel; save it as 16-bit "
            "grayscale or 16-bit RGB TIFF)",
        ),
        "tiff_16bit_colour": ("rgb16.tif", OK),
        "gray16": ("gray16.png", OK),
    }


def test_images_multiframe_alpha_and_deep_colour(tmp_path: Path) -> None:
    cases = _image_files(tmp_path / "data")
    got = run_cases(tmp_path, "image", cases, create_expert("texture-glcm-lbp"))
    np.testing.assert_array_equal(got["rgba_opaque"], got["rgb"])  # constant alpha: dropped
    np.testing.assert_array_equal(got["tiff_with_thumbnail"], got["gray"])  # the full page
    # a 16-bit colour TIFF keeps all 16 bits: the same as the 16-bit grayscale of its data
    np.testing.assert_array_equal(got["tiff_16bit_colour"], got["gray16"])


def test_high_bit_dtype_refuses_to_clip(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(_texture().astype(np.int32) * 1000).save(d / "wide.tif")  # mode I
    Image.fromarray(_texture().astype(np.uint16) * 200).save(d / "ok16.png")
    cases = {
        "mode_i_beyond_16_bits": (
            "wide.tif",
            'pixel values 0..255000 outside 0..65535 (high_bit: "dtype" would clip them; '
            'use "range")',
        ),
        "sixteen_bit": ("ok16.png", OK),
    }
    run_cases(tmp_path, "image", cases, create_expert("texture-glcm-lbp", high_bit="dtype"))


# -- volumes ---------------------------------------------------------------------------------


def test_complex_and_multivalued_volumes(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.normal(40, 80, (24, 24, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "real.nii.gz")
    cplx = (vol + 1j * rng.normal(0, 10, vol.shape)).astype(np.complex64)
    nib.save(nib.Nifti1Image(cplx, np.eye(4)), d / "complex.nii.gz")
    np.save(d / "complex.npy", cplx.transpose(2, 0, 1))
    np.savez(d / "complex.npz", volume=cplx.astype(np.complex128))
    rgb = np.zeros(vol.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), d / "rgb.nii.gz")
    lost = "its imaginary part would be lost (save the magnitude or the phase as a real volume)"
    cases = {
        "real_nifti": ("real.nii.gz", OK),
        "complex_nifti": ("complex.nii.gz", f"complex-valued volume (dtype complex64); {lost}"),
        "complex_npy": ("complex.npy", f"complex-valued volume (dtype complex64); {lost}"),
        "complex_npz": ("complex.npz", f"complex-valued volume (dtype complex128); {lost}"),
        "rgb_nifti": (
            "rgb.nii.gz",
            "volume has several values per voxel (dtype [('R', 'u1'), ('G', 'u1'), ('B', 'u1')]), "
            "expected one intensity",
        ),
    }
    expert = create_expert("ct-slicer", image_expert="texture-glcm-lbp", k_slices=3)
    run_cases(tmp_path, "volume", cases, expert)


def test_png_writer_helper_is_a_real_48_bit_png() -> None:
    """The hand-written 16-bit colour PNG is what Pillow reads as 8-bit RGB (the lossy case)."""
    arr = np.stack([np.full((4, 4), v, np.uint16) for v in (1000, 2000, 40000)], -1)
    with Image.open(io.BytesIO(_png16_rgb(arr))) as im:
        assert im.mode == "RGB" and "16" in str(im.tile[0].args)
