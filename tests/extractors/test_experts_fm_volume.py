"""Volume FM experts (RadFM teacher, Merlin) on the real CT NIfTI with tiny random-init models:
orientation, HU window, shapes, determinism, padding invariance, checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extractors.loading import WeightsNotFound
from extractors.readers.volumes import read_volume
from extractors.registry import create_expert
from tests.fm_helpers import TINY_MERLIN, TINY_RADFM, assert_padding_invariant, need

CT = "ct/example_ct.nii.gz"


def test_to_ras_inverts_the_reader_layout(realdata: Path) -> None:
    import nibabel as nib

    from extractors.experts.fm_volume import pad_crop, to_ras

    vol = read_volume(realdata / CT)
    ras, spacing = to_ras(vol)
    can = nib.as_closest_canonical(nib.load(str(realdata / CT)))
    np.testing.assert_array_equal(ras, can.get_fdata(dtype=np.float32))  # back to RAS voxel order
    np.testing.assert_allclose(spacing, can.header.get_zooms()[:3])
    out = pad_crop(np.ones((4, 10, 3), np.float32), (6, 6, 3))
    assert out.shape == (6, 6, 3) and out[0].sum() == 0 and out[1, 2:-2].min() == 1  # pad + crop


@pytest.fixture(scope="module")
def radfm():
    return create_expert("radfm", random_init=True, config=TINY_RADFM, max_depth=16)


def test_radfm_preprocessing_and_embedding(radfm, realdata: Path) -> None:
    item = radfm.load(CT, realdata)
    d, h, w = item.shape_in
    assert item.array.shape == (3, 32, 32, 16)  # channels, H, W, depth (multiple of 4, <= max)
    assert item.array.min() >= 0.0 and item.array.max() <= 1.0  # HU window -> [0, 1]
    vol = read_volume(realdata / CT)
    assert (d, h, w) == vol.array.shape and -1300 < vol.array.min() < -900  # HU (air)
    other = radfm.prepare_volume(type(vol)(vol.array[:40], vol.spacing, vol.source))
    assert other.array.shape[-1] == 16
    vec = assert_padding_invariant(radfm, item, [other])
    assert vec.shape == (24,) and np.isfinite(vec).all()


def test_radfm_local_checkpoint_and_export(radfm, realdata: Path, tmp_path: Path) -> None:
    import torch

    from extractors.experts.radfm_vit import RADFM_PREFIX, radfm_export

    full = {RADFM_PREFIX + k: v for k, v in radfm.get_model().state_dict().items()}
    full["lang_model.lm_head.weight"] = torch.zeros(4, 4)  # the rest of RadFM is ignored
    torch.save(full, tmp_path / "pytorch_model.bin")
    item = radfm.load(CT, realdata)
    want = radfm.embed([item])[0]
    from_bin = create_expert(
        "radfm", checkpoint=str(tmp_path / "pytorch_model.bin"), config=TINY_RADFM, max_depth=16
    )
    np.testing.assert_allclose(from_bin.embed([item])[0], want, atol=1e-5)
    radfm_export(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "vit.safetensors"))
    from_st = create_expert(
        "radfm", checkpoint=str(tmp_path / "vit.safetensors"), config=TINY_RADFM, max_depth=16
    )
    np.testing.assert_allclose(from_st.embed([item])[0], want, atol=1e-5)
    assert from_st.weights_status()[0] == "ok"
    absent = create_expert("radfm", checkpoint=str(tmp_path / "nope.bin"))
    assert absent.weights_status()[0] == "missing"
    with pytest.raises(WeightsNotFound, match="RadFM"):
        absent.get_model()


def test_fm_volume_experts_reject_a_single_dicom_slice(
    radfm, realdata: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.copy(realdata / "dicom" / "CT_small.dcm", tmp_path / "one.dcm")
    from extractors.base import SampleError

    with pytest.raises(SampleError, match="1 slice"):
        radfm.load("one.dcm", tmp_path)


def test_merlin_tiny_on_the_real_ct(realdata: Path, tmp_path: Path) -> None:
    need("merlin", "torchvision")
    e = create_expert(
        "merlin",
        random_init=True,
        config=TINY_MERLIN,
        target_shape=[32, 32, 16],
        spacing=[6.0, 6.0, 12.0],
    )
    item = e.load(CT, realdata)
    assert item.array.shape == (1, 32, 32, 16) and item.array.min() >= 0 and item.array.max() <= 1
    vol = read_volume(realdata / CT)
    other = e.prepare_volume(type(vol)(vol.array[:50], vol.spacing, vol.source))
    vec = assert_padding_invariant(e, item, [other])
    assert vec.shape == (2048,) and np.isfinite(vec).all()
    contrastive = create_expert(
        "merlin",
        random_init=True,
        config=TINY_MERLIN,
        target_shape=[32, 32, 16],
        output="contrastive",
    )
    assert contrastive.embed([item]).shape == (1, 512)
    # the checkpoint path: Merlin's keys (encode_image.i3_resnet.*) with weights_only loading
    import torch

    state = {f"encode_image.i3_resnet.{k}": v for k, v in e.get_model().state_dict().items()}
    folder = tmp_path / "merlin"
    folder.mkdir()
    from extractors.experts.fm_volume import MERLIN_CHECKPOINT

    torch.save(state, folder / MERLIN_CHECKPOINT)
    # the tiny architecture is not ResNet-152: load the tensors into the tiny model directly
    e2 = create_expert(
        "merlin",
        random_init=True,
        config=TINY_MERLIN,
        seed=1,
        target_shape=[32, 32, 16],
        spacing=[6.0, 6.0, 12.0],
    )
    e2.params["local_dir"] = str(folder)
    e2.get_model().load_state_dict(e2._state_dict())
    np.testing.assert_allclose(e2.embed([item])[0], vec, atol=1e-4)


def test_radfm_export_command_line(tmp_path: Path) -> None:
    """The real command: a missing checkpoint is one `error:` line naming it, exit code 2 (the
    command lives in a module of its own, so no expert is registered twice)."""
    import subprocess
    import sys

    src = tmp_path / "pytorch_model.bin"
    proc = subprocess.run(
        [sys.executable, "-m", "extractors.radfm_export", str(src), str(tmp_path / "v.st")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and str(src) in lines[-1]
    assert "Traceback" not in proc.stderr and "registered twice" not in proc.stderr
    assert not (tmp_path / "v.st").exists()
