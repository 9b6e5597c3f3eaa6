"""A corpus of broken inputs, generated here, run through the real extraction driver.

Every sample-level case must end as ``status=failed`` with a specific ``reason`` (or be handled
as documented: unsorted / duplicated timestamps are sorted / merged, a long note is chunked),
never as a NaN embedding or a crash of the job. Manifest-level cases must raise ManifestError
naming the column and the first offending ids. The last test prints the figure
"inputs tried: N, handled as specified: H, crashed: C" and asserts C == 0 and H == N.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from cohorts.manifest import (
    META_KEY,
    ManifestError,
    ManifestMeta,
    validate_manifest,
    write_manifest,
)
from extractors.base import Expert
from extractors.cache import read_cache
from extractors.extract import extract
from extractors.registry import create_expert

TALLY = {"tried": 0, "handled": 0, "crashed": 0}


@functools.cache
def minilm_expert() -> Expert:
    """One MiniLM for the session, its model loaded up front (forked loader workers inherit it
    instead of loading their own: the load is most of the cost on a small CPU)."""
    expert = create_expert("minilm", batch_size=8)
    expert._get_model()
    return expert


# -- helpers ---------------------------------------------------------------------------------


def _write_raw_manifest(path: Path, rows: list[dict], meta: ManifestMeta) -> Path:
    """Write a manifest WITHOUT validation (so sample-level checks see what validation would stop)."""
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    table = table.replace_schema_metadata({META_KEY: json.dumps(asdict(meta)).encode()})
    pq.write_table(table, path)
    return path


def _run_kind(
    tmp_path: Path,
    kind: str,
    cases: dict[str, tuple[str | None, str]],
    expert_name: str | Expert,
    expert_params: dict,
    tag: str = "",
) -> dict[str, tuple[str, str, np.ndarray]]:
    """One manifest for ``cases`` = {sample_id: (value, expectation)}; one extract call.

    ``expectation`` is ``"ok"`` or a substring the failure reason must contain. Returns
    {sample_id: (status, reason, embedding)} and counts the cases in TALLY."""
    root = tmp_path / "data"
    meta = ManifestMeta(
        dataset="bad",
        task_type="binary",
        modalities={"m": kind},
        labels=["y"],
        adapter="test",
        root=str(root),
    )
    rows = [
        {"sample_id": sid, "patient_id": f"p{i}", "split": "train", "m": value, "label_y": i % 2}
        for i, (sid, (value, _)) in enumerate(cases.items())
    ]
    mpath = _write_raw_manifest(tmp_path / f"manifest_{kind}{tag}.parquet", rows, meta)
    TALLY["tried"] += len(cases)
    expert = (
        expert_name
        if isinstance(expert_name, Expert)
        else create_expert(expert_name, **expert_params)
    )
    try:
        summary = extract(
            mpath,
            "m",
            expert,
            tmp_path / f"cache_{kind}{tag}.parquet",
            shard_size=64,
            max_failed_fraction=1.0,
            progress=False,
            # the manifest validator would stop escaping paths up front (tested below);
            # here the readers' own defence is exercised
            validate=False,
        )
    except Exception:
        TALLY["crashed"] += len(cases)
        raise
    data = read_cache(summary.path)
    got = {
        str(s): (str(st), str(r), e)
        for s, st, r, e in zip(
            data.sample_ids, data.status, data.reason, data.embeddings, strict=True
        )
    }
    assert set(got) == set(cases)
    problems = []
    for sid, (_, want) in cases.items():
        status, reason, emb = got[sid]
        fine = np.isfinite(emb).all()
        if want == "ok":
            fine = fine and status == "ok" and bool(np.any(emb != 0))
        elif want == "missing":
            fine = fine and status == "missing"
        else:
            fine = fine and status == "failed" and want.lower() in reason.lower()
        if fine:
            TALLY["handled"] += 1
        else:
            problems.append(f"{sid}: want {want!r}, got status={status!r} reason={reason!r}")
    assert not problems, "\n".join(problems)
    return got


def _png_bytes(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _texture(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


# -- images ----------------------------------------------------------------------------------


def test_bad_images(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (tmp_path / "outside.png").write_bytes(_png_bytes(_texture()))
    good = _png_bytes(_texture())
    (d / "good.png").write_bytes(good)
    (d / "zero.png").write_bytes(b"")
    (d / "trunc.png").write_bytes(good[: len(good) // 2])
    jpg = _png_bytes(np.stack([_texture(seed=1)] * 3, -1), "JPEG", quality=90)
    (d / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (d / "text.png").write_text("this is not an image")
    Image.fromarray(_texture()).convert("CMYK").save(d / "cmyk.tif")
    Image.fromarray(_texture()).convert("P").save(d / "palette.png")
    Image.fromarray(_texture()).convert("LA").save(d / "la.png")
    Image.fromarray(_texture()).convert("1").save(d / "bilevel.png")
    twelve = (_texture().astype(np.uint16) * 16 + 1000).astype(np.uint16)  # 12-bit data in 16 bits
    Image.fromarray(twelve).save(d / "range16.png")
    Image.fromarray(np.full((48, 48), 3000, np.uint16)).save(d / "flat16.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(d / "tiny.png")
    np.save(d / "nan.npy", np.full((32, 32), np.nan, np.float32))
    # symbolic links inside the root: one to a file outside it, one to a folder outside it
    # (lexically both paths stay inside), and a harmless one to a file inside it
    (d / "link_out.png").symlink_to(tmp_path / "outside.png")
    (d / "linkdir").symlink_to(tmp_path)
    (d / "link_in.png").symlink_to(d / "good.png")
    cases = {
        "good": ("good.png", "ok"),
        "symlink_inside_root": ("link_in.png", "ok"),
        "symlink_to_outside_file": ("link_out.png", "outside the dataset root"),
        "symlinked_folder_to_outside": ("linkdir/outside.png", "outside the dataset root"),
        "zero_byte": ("zero.png", "empty file"),
        "truncated_png": ("trunc.png", "truncated or corrupt image"),
        "truncated_jpeg": ("trunc.jpg", "truncated or corrupt image"),
        "not_an_image": ("text.png", "not a recognised image format"),
        "mode_cmyk": ("cmyk.tif", "ok"),
        "mode_palette": ("palette.png", "ok"),
        "mode_la": ("la.png", "ok"),
        "one_bit": ("bilevel.png", "ok"),
        "sixteen_bit_range": ("range16.png", "ok"),
        "sixteen_bit_flat": ("flat16.png", "ok"),
        "too_small": ("tiny.png", "image too small"),
        "nan_pixels": ("nan.npy", "non-finite pixel values"),
        "no_such_file": ("nope/missing.png", "file not found"),
        "escaping_root": ("../outside.png", "outside the dataset root"),
        "absolute_path": (str(tmp_path / "outside.png"), "outside the dataset root"),
        "not_recorded": (None, "missing"),  # a null value is a missing modality, not a failure
    }
    _run_kind(tmp_path, "image", cases, "image-radiomics", {})


# -- volumes ---------------------------------------------------------------------------------


def _write_dicom_series(
    folder: Path, zs: list[float], pixel_spacings: list[float] | None = None
) -> None:
    import pydicom  # noqa: F401
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series_uid = generate_uid()
    rng = np.random.default_rng(len(zs))
    for k, z in enumerate(zs):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        px = pixel_spacings[k] if pixel_spacings else 0.7
        ds.PixelSpacing = [px, px]
        ds.InstanceNumber = k + 1
        ds.PixelData = rng.integers(800, 1300, (32, 32)).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


def test_bad_volumes(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.normal(40, 80, (12, 32, 32)).astype(np.float32)
    np.save(d / "good.npy", vol)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), d / "good.nii.gz")
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), d / "corrupt.nii")
    raw = bytearray((d / "corrupt.nii").read_bytes())
    raw[0:4] = b"\xff\x13\x00\x7f"  # sizeof_hdr: neither 348 nor byte-swapped 348
    raw[40:56] = bytes(rng.integers(0, 256, 16, dtype=np.uint8))  # dim[] garbage
    (d / "corrupt.nii").write_bytes(bytes(raw))
    (d / "zero.nii.gz").write_bytes(b"")
    np.save(d / "flat.npy", vol[0])
    nan = vol.copy()
    nan[3, 5:9, 5:9] = np.nan
    np.save(d / "nan.npy", nan)
    _write_dicom_series(d / "dcm_good", [0.0, 2.0, 4.0, 6.0, 8.0])
    _write_dicom_series(d / "dcm_missing", [0.0, 2.0, 4.0, 8.0, 10.0])  # z=6 missing
    _write_dicom_series(d / "dcm_mixed", [0.0, 1.0, 2.0, 4.5, 7.0])  # 1 mm then 2.5 mm
    _write_dicom_series(d / "dcm_pixels", [0.0, 2.0, 4.0, 6.0], [0.7, 0.7, 0.9, 0.9])
    _write_dicom_series(tmp_path / "elsewhere", [0.0, 2.0, 4.0, 6.0, 8.0])
    (d / "dcm_linked").mkdir()  # a series folder whose slices link outside the root
    for f in sorted((tmp_path / "elsewhere").iterdir()):
        (d / "dcm_linked" / f.name).symlink_to(f)
    cases = {
        "good_npy": ("good.npy", "ok"),
        "good_nifti": ("good.nii.gz", "ok"),
        "good_dicom": ("dcm_good", "ok"),
        "zero_byte": ("zero.nii.gz", "empty file"),
        "corrupt_header": ("corrupt.nii", "unreadable NIfTI"),
        "two_d_array": ("flat.npy", "2-D array"),
        "nan_voxels": ("nan.npy", "NaN voxels"),
        "dicom_missing_slice": ("dcm_missing", "1 missing slice"),
        "dicom_mixed_spacing": ("dcm_mixed", "mixed slice spacing"),
        "dicom_mixed_pixel_spacing": ("dcm_pixels", "differ in pixel spacing"),
        "no_such_file": ("none.nii.gz", "file not found"),
        "escaping_root": ("../data/good.npy/..", "outside the dataset root"),
        "dicom_slices_linked_outside": ("dcm_linked", "outside it (symbolic link)"),
    }
    params = {"image_expert": "image-radiomics", "k_slices": 3, "hu_window": [-160, 240]}
    got = _run_kind(tmp_path, "volume", cases, "ct-slicer", params)
    # the good volume read three ways embeds the same picture: all ok and finite
    assert all(got[k][0] == "ok" for k in ("good_npy", "good_nifti", "good_dicom"))


# -- slides ----------------------------------------------------------------------------------


def _tissue_rgb(h: int = 512, w: int = 512) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 238, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h / 2) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 < 1
    tissue = np.stack(
        [
            rng.integers(150, 220, (h, w)),
            rng.integers(60, 140, (h, w)),
            rng.integers(140, 200, (h, w)),
        ],
        -1,
    ).astype(np.uint8)
    img[blob] = tissue[blob]
    return img


def test_bad_slides(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    res = {"resolution": (10000.0, 10000.0), "resolutionunit": "CENTIMETER"}  # 1 µm/px
    tifffile.imwrite(d / "good.tif", _tissue_rgb(), tile=(256, 256), photometric="rgb", **res)
    white = np.full((512, 512, 3), 255, np.uint8)
    tifffile.imwrite(d / "white.tif", white, tile=(256, 256), photometric="rgb", **res)
    (d / "zero.svs").write_bytes(b"")
    (d / "garbage.svs").write_bytes(np.random.default_rng(1).bytes(4096))
    trunc = (d / "good.tif").read_bytes()
    (d / "trunc.svs").write_bytes(trunc[:200])
    cases = {
        "good": ("good.tif", "ok"),
        "no_tissue": ("white.tif", "no tissue found"),
        "zero_byte": ("zero.svs", "empty file"),
        "openslide_cannot_open": ("garbage.svs", "unreadable slide"),
        "truncated_svs": ("trunc.svs", "unreadable slide"),
        "no_such_file": ("missing.svs", "file not found"),
    }
    params = {"tile_expert": "image-radiomics", "target_mpp": 2.0, "tile_px": 64, "max_tiles": 8}
    _run_kind(tmp_path, "slide", cases, "slide-tiles", params)


# -- notes -----------------------------------------------------------------------------------

LATIN1 = "Patient févr. 39°C, état stable, né à Genève; pièce jointe ½."


def test_bad_notes_minilm(tmp_path: Path) -> None:
    long_note = " ".join(f"finding{i % 50} stable" for i in range(600))  # ~10 model windows
    cases = {
        "good": ("chest pain resolved, discharged home", "ok"),
        "empty": ("", "empty text"),
        "whitespace": (" \n\t  ", "empty text"),
        "control_chars_only": ("\x00\x01\x02", "empty text"),
        # latin-1 bytes carried through a UTF-8 manifest: U+FFFD replacement characters
        "latin1_replaced": (LATIN1.encode("latin-1").decode("utf-8", errors="replace"), "ok"),
        # latin-1 bytes decoded as cp1252 / latin-1 (mojibake), and lone surrogates escaped
        "latin1_mojibake": (LATIN1.encode("utf-8").decode("latin-1"), "ok"),
        "long_note": (long_note, "ok"),
    }
    expert = minilm_expert()
    _run_kind(tmp_path, "text", cases, expert, {})
    chunks = expert.load(long_note, tmp_path)
    assert len(chunks.chunks) > 5 and max(chunks.n_tokens) <= expert.window
    assert sum(chunks.n_tokens) > 5 * expert.window


def test_bad_notes_tfidf(tmp_path: Path) -> None:
    cases = {
        f"train{i}": (f"patient {i} chest pain fever cough stable {i % 3}", "ok") for i in range(6)
    }
    cases.update(
        {
            "empty": ("", "empty text"),
            "whitespace": ("   ", "empty text"),
            "latin1_replaced": (LATIN1.encode("latin-1").decode("utf-8", errors="replace"), "ok"),
            "odd_bytes": ("\ufffd\ufffd fever \x7f\x1b[0m cough \u202e stable", "ok"),
        }
    )
    _run_kind(tmp_path, "text", cases, "tfidf-svd", {"n_components": 4, "min_df": 1})


# -- EHR time series -------------------------------------------------------------------------


def test_bad_timeseries(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    hours = np.arange(12, dtype=float)
    rng = np.random.default_rng(0)
    hr, sbp = 80 + rng.normal(0, 5, 12), 120 + rng.normal(0, 8, 12)
    base = pd.DataFrame({"hour": hours, "hr": hr, "sbp": sbp})
    base.to_parquet(d / "good.parquet")
    base.iloc[rng.permutation(12)].to_parquet(d / "unsorted.parquet")
    # duplicated timestamps: each row twice, values +-1 around the original -> mean = original
    up, down = base.copy(), base.copy()
    up[["hr", "sbp"]] += 1.0
    down[["hr", "sbp"]] -= 1.0
    pd.concat([up, down]).to_parquet(d / "dup.parquet")
    pd.DataFrame({"hour": hours, "hr": np.nan, "sbp": np.nan}).to_parquet(d / "allnan.parquet")
    pd.DataFrame({"hour": hours, "hr": np.inf, "sbp": -np.inf}).to_parquet(d / "allinf.parquet")
    some_inf = base.copy()
    some_inf.loc[3, "hr"] = np.inf
    some_inf.to_parquet(d / "someinf.parquet")
    pd.DataFrame({"hour": [np.nan] * 3, "hr": [1.0, 2, 3], "sbp": [1.0, 2, 3]}).to_parquet(
        d / "notime.parquet"
    )
    base.drop(columns="hour").to_parquet(d / "nohour.parquet")
    (d / "zero.parquet").write_bytes(b"")
    (d / "garbage.parquet").write_bytes(b"PAR1 not really parquet")
    cases = {
        "good": ("good.parquet", "ok"),
        "unsorted_timestamps": ("unsorted.parquet", "ok"),
        "duplicated_timestamps": ("dup.parquet", "ok"),
        "some_inf": ("someinf.parquet", "ok"),
        "all_nan": ("allnan.parquet", "all values missing"),
        "all_inf": ("allinf.parquet", "all values missing"),
        "no_times": ("notime.parquet", "no rows with a time"),
        "no_time_column": ("nohour.parquet", "no time column"),
        "zero_byte": ("zero.parquet", "empty file"),
        "corrupt": ("garbage.parquet", "unreadable time series"),
        "no_such_file": ("missing.parquet", "file not found"),
        "escaping_root": ("../../etc/passwd", "outside the dataset root"),
    }
    for name in ("catch22", "ts-stats"):
        got = _run_kind(tmp_path, "timeseries", cases, name, {"variables": ["hr", "sbp"]}, tag=name)
        # sorted / merged as documented: the same embedding as the clean file
        np.testing.assert_allclose(
            got["unsorted_timestamps"][2], got["good"][2], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            got["duplicated_timestamps"][2], got["good"][2], rtol=1e-4, atol=1e-4
        )


# -- manifest level --------------------------------------------------------------------------


def _manifest_rows(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "patient_id": [f"p{i}" for i in range(n)],
            "split": ["train"] * n,
            "img": [f"img/{i}.png" for i in range(n)],
            "label_y": [i % 2 for i in range(n)],
        }
    )


_MMETA = ManifestMeta(
    dataset="bad", task_type="binary", modalities={"img": "image"}, labels=["y"], adapter="t"
)


def _mutate(kind: str, tmp_path: Path) -> tuple[pd.DataFrame, ManifestMeta, list[str]]:
    df, meta = _manifest_rows(), _MMETA
    if kind == "duplicate_ids":
        df.loc[3, "sample_id"] = "s1"
        df.loc[5, "sample_id"] = "s1"
        return df, meta, ["sample_id", "s1"]
    if kind == "label_out_of_range":
        df.loc[2, "label_y"] = 2
        df.loc[4, "label_y"] = -1
        return df, meta, ["label_y", "s2, s4"]
    if kind == "multiclass_label_out_of_range":
        meta = ManifestMeta(
            **{**asdict(_MMETA), "task_type": "multiclass", "extra": {"n_classes": 3}}
        )
        df.loc[1, "label_y"] = 3
        return df, meta, ["label_y", "s1"]
    if kind == "missing_column":
        return df.drop(columns="label_y"), meta, ["label_y"]
    if kind == "missing_modality_column":
        return df.drop(columns="img"), meta, ["img"]
    if kind == "escaping_path":
        df.loc[4, "img"] = "../../secret.png"
        return df, meta, ["img", "s4"]
    if kind == "absolute_path":
        df.loc[0, "img"] = "/etc/hosts"
        return df, meta, ["img", "s0"]
    if kind == "symlink_escaping_root":
        (tmp_path / "root" / "img").mkdir(parents=True)
        (tmp_path / "secret.png").write_bytes(b"x")
        (tmp_path / "root" / "img" / "3.png").symlink_to(tmp_path / "secret.png")
        return df, meta, ["img", "s3", "outside the dataset root"]
    if kind == "missing_file":
        (tmp_path / "img").mkdir(exist_ok=True)
        for i in range(6):
            if i != 2:
                (tmp_path / "img" / f"{i}.png").write_bytes(b"x")
        return df, meta, ["img", "s2", "do not exist"]
    if kind == "patient_in_two_splits":
        df.loc[1, "patient_id"] = "p0"
        df.loc[1, "split"] = "test"
        return df, meta, ["p0", "s0, s1"]
    raise AssertionError(kind)


MANIFEST_CASES = [
    "duplicate_ids",
    "label_out_of_range",
    "multiclass_label_out_of_range",
    "missing_column",
    "missing_modality_column",
    "escaping_path",
    "absolute_path",
    "missing_file",
    "symlink_escaping_root",
    "patient_in_two_splits",
]


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_bad_manifest(case: str, tmp_path: Path) -> None:
    TALLY["tried"] += 1
    df, meta, needles = _mutate(case, tmp_path)
    path = tmp_path / "manifest.parquet"
    try:
        with pytest.raises(ManifestError) as err:
            if case == "missing_file":
                validate_manifest(df, meta, path=path, root=tmp_path, check_files=True)
            elif case == "symlink_escaping_root":
                validate_manifest(df, meta, path=path, root=tmp_path / "root")
            else:
                write_manifest(df, path, meta)
    except Exception:
        TALLY["crashed"] += 1
        raise
    msg = str(err.value)
    for needle in [str(path), *needles]:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert not path.exists()  # nothing written
    TALLY["handled"] += 1


def test_zz_figure(capsys: pytest.CaptureFixture[str]) -> None:
    if TALLY["tried"] == 0:
        pytest.skip("run with the other tests of this module")
    line = (
        f"inputs tried: {TALLY['tried']}, handled as specified: {TALLY['handled']}, "
        f"crashed: {TALLY['crashed']}"
    )
    with capsys.disabled():
        print("\n" + line)
    assert TALLY["crashed"] == 0
    assert TALLY["handled"] == TALLY["tried"]
