"""CT volume foundation-model experts: Merlin (3D image encoder) and the RadFM teacher.

Both read volumes with :func:`extractors.readers.volumes.read_volume` (``.npy``, ``.npz``,
NIfTI, DICOM series), which returns (D, H, W) with the axial axis first, in the radiological
layout (rows anterior->posterior, columns patient right->left; NIfTI reoriented to RAS from its
header). Volumes with NaN/inf voxels fail, as in the 2.5D slicer.

``merlin`` — Merlin (Stanford MIMI; PyPI ``merlin-vlm``): the image encoder, an I3D-inflated
ResNet-152 (``merlin.models.i3res.I3ResNet``). Preprocessing as Merlin's own MONAI pipeline:
RAS orientation, resampling to 1.5 x 1.5 x 3 mm (trilinear; volumes without a known spacing are
not resampled), HU window [-1000, 1000] -> [0, 1], zero-pad / centre-crop to 224 x 224 x 160
(x, y, z). Embedding (``output``): ``features`` (default) = the 2048-d global-average-pooled
trunk features (Merlin's ``ImageEmbedding=True`` output), or ``contrastive`` = the 512-d
projection into the image-report space. The checkpoint is the repository's
``i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt`` (``model_id:
stanfordmimi/Merlin`` + ``revision``, or ``local_dir``: that file, or a folder holding it, or a
safetensors conversion), loaded with ``torch.load(weights_only=True)`` under the project policy;
only its ``encode_image.i3_resnet.*`` tensors are used. The architecture is built from
torchvision's ResNet-152 with no pretrained weights (``merlin.Merlin()`` itself would download
ImageNet weights and the checkpoint, which the policy forbids). Needs ``merlin-vlm`` and
``torchvision``.

``radfm`` — RadFM (Wu et al. 2023) teacher: its 3D ViT vision encoder (``vision_encoder`` of
the ``embedding_layer``: 32 x 32 x 4 patches, 768-d, 12 layers, 8 heads, learned 3-D position
embeddings), re-implemented in :mod:`extractors.experts.radfm_vit` with the same module names so
that the released weights load as they are. RadFM's code is not a package and its weights are not on the hub in a loadable
form, so the expert loads **from a local checkpoint** only:

1. download RadFM's ``pytorch_model.bin`` (the full model, ~28 GB; the RadFM repository's
   release);
2. either point ``checkpoint:`` at it (the file is read whole with
   ``torch.load(weights_only=True)``, which needs about 30 GB of RAM; every tensor not under
   ``embedding_layer.vision_encoder.`` is ignored), or, once,
   ``python -m extractors.radfm_export pytorch_model.bin radfm_vit3d.safetensors``
   and point ``checkpoint:`` at the ~350 MB safetensors file (fast, and nothing pickled).

Preprocessing as RadFM's CT inputs: HU window (``hu_window``, default [-1000, 1000]) -> [0, 1],
grayscale replicated to 3 channels, in-plane trilinear resize to 512 x 512, depth resampled to
the nearest multiple of 4 between 4 and ``max_depth`` (64) slices. Embedding = mean of the ViT output tokens
(768-d), the input of RadFM's perceiver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.experts.fm_common import FMExpert, forward_chunks, missing_package, weights_status
from extractors.experts.fm_source import SOURCE_KEYS_NO_REMOTE_CODE
from extractors.experts.radfm_vit import (
    RADFM_PREFIX,
    RADFM_VIT,
    build_radfm_vit,
    load_radfm_vision,
)
from extractors.experts.volume import check_volume
from extractors.loading import LoadingError, load_state_dict, resolve_file
from extractors.readers import resolve_path
from extractors.readers.volumes import AXIS_ORDERS, Volume, read_volume
from extractors.registry import register_expert


def to_ras(vol: Volume) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """(D, H, W) radiological layout -> (X, Y, Z) RAS array and its (dx, dy, dz) spacing."""
    arr = np.ascontiguousarray(vol.array.transpose(2, 1, 0)[::-1, ::-1, :])
    sp = None if vol.spacing is None else (vol.spacing[2], vol.spacing[1], vol.spacing[0])
    return arr, sp


def resample(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of a 3-D array to ``shape`` (torch, float32)."""
    import torch
    import torch.nn.functional as F

    if tuple(arr.shape) == tuple(shape):
        return arr.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(
        t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False
    )[0, 0].numpy()


def pad_crop(arr: np.ndarray, shape: tuple[int, int, int], value: float = 0.0) -> np.ndarray:
    """Zero-pad (symmetrically) then centre-crop to ``shape`` (MONAI SpatialPad + CenterSpatialCrop)."""
    out = arr
    pads = []
    for n, s in zip(arr.shape, shape, strict=True):
        extra = max(0, s - n)
        pads.append((extra // 2, extra - extra // 2))
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads, constant_values=value)
    sl = []
    for n, s in zip(out.shape, shape, strict=True):
        start = (n - s) // 2
        sl.append(slice(start, start + s))
    return np.ascontiguousarray(out[tuple(sl)], dtype=np.float32)


class FMVolumeExpert(FMExpert):
    kind = "volume"
    packages = ("torch", "numpy", "nibabel", "pydicom")
    source_keys = SOURCE_KEYS_NO_REMOTE_CODE

    def read(self, value: str, root: Path) -> Volume:
        path = resolve_path(root, value, allow_dir=True)
        vol = read_volume(
            path, axis_order=self.params["axis_order"], npz_key=self.params["npz_key"]
        )
        check_volume(vol.array)
        return vol

    def prepare_volume(self, vol: Volume) -> VolumeInput:  # the model's preprocessing
        raise NotImplementedError

    def load(self, value: str, root: Path) -> VolumeInput:
        return self.prepare_volume(self.read(value, root))

    def collate(self, items: list[VolumeInput]) -> Any:
        import torch

        shapes = {it.array.shape for it in items}
        if len(shapes) == 1:
            return torch.from_numpy(np.stack([it.array for it in items]))
        return items  # mixed shapes (RadFM depths): forward groups them

    def embed(self, batch: list[VolumeInput]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.forward(self.collate(batch))


@dataclass
class VolumeInput:
    array: np.ndarray  # the model input of one volume (channels first), float32
    shape_in: tuple[int, int, int]  # (D, H, W) as read
    spacing: tuple[float, float, float] | None


# ---------------------------------------------------------------------------------------------
# Merlin
# ---------------------------------------------------------------------------------------------

MERLIN_CHECKPOINT = "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"


@register_expert("merlin")
class MerlinExpert(FMVolumeExpert):
    """Merlin's 3D image encoder (I3D ResNet-152); 2048-d pooled features or 512-d contrastive."""

    model_class = "merlin.I3ResNet"
    default_model_id = "stanfordmimi/Merlin"
    packages = ("torch", "merlin-vlm", "torchvision", "numpy", "nibabel", "pydicom")
    import_names = (("torch", "torch"), ("merlin", "merlin-vlm"), ("torchvision", "torchvision"))
    default_batch_size = 2
    OUTPUTS = {"features": 2048, "contrastive": 512}

    def __init__(
        self,
        checkpoint_file: str = MERLIN_CHECKPOINT,
        output: str = "features",
        spacing: tuple[float, float, float] | list[float] = (1.5, 1.5, 3.0),
        target_shape: tuple[int, int, int] | list[int] = (224, 224, 160),
        hu_window: tuple[float, float] | list[float] = (-1000.0, 1000.0),
        axis_order: str = "auto",
        npz_key: str | None = None,
        **config: Any,
    ) -> None:
        self.check_source_keys(config)
        if output not in self.OUTPUTS:
            raise ValueError(f"merlin: output must be one of {sorted(self.OUTPUTS)}")
        if axis_order not in AXIS_ORDERS:
            raise ValueError(f"merlin: axis_order must be one of {AXIS_ORDERS}")
        super().__init__(
            config,
            checkpoint_file=checkpoint_file,
            output=output,
            spacing=[float(v) for v in spacing],
            target_shape=[int(v) for v in target_shape],
            hu_window=[float(v) for v in hu_window],
            axis_order=axis_order,
            npz_key=npz_key,
        )

    @property
    def dim(self) -> int:
        return self.OUTPUTS[self.params["output"]]

    @property
    def pooling(self) -> str:
        return f"global average pool ({self.params['output']})"

    def prepare_volume(self, vol: Volume) -> VolumeInput:
        arr, sp = to_ras(vol)
        if sp is not None and all(s > 0 for s in sp):
            target = self.params["spacing"]
            shape = tuple(
                max(1, round(n * s / t)) for n, s, t in zip(arr.shape, sp, target, strict=True)
            )
            arr = resample(arr, shape)
        lo, hi = self.params["hu_window"]
        arr = (np.clip(arr, lo, hi) - lo) / (hi - lo)
        arr = pad_crop(arr, tuple(self.params["target_shape"]))
        return VolumeInput(arr[None], tuple(vol.array.shape), vol.spacing)  # (1, X, Y, Z)

    def weights_status(self) -> tuple[str, str]:
        return weights_status(
            self.model_spec(), patterns=(self.params["checkpoint_file"], "*.safetensors")
        )

    def _load_model(self) -> Any:
        import torch

        try:
            import torchvision
            from merlin.models import i3res
        except ImportError as exc:
            raise missing_package(self.name, "merlin", "merlin-vlm", " (and torchvision)") from exc
        from torchvision.models.resnet import Bottleneck, ResNet

        cfg = dict(self.params["config"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.random_init:
                resnet = ResNet(
                    Bottleneck,
                    list(cfg.get("layers", [1, 1, 1, 1])),
                    width_per_group=int(cfg.get("width_per_group", 64)),
                )
            else:
                resnet = torchvision.models.resnet152(weights=None)
            model = i3res.I3ResNet(resnet, class_nb=1692, conv_class=True)
        if not self.random_init:
            model.load_state_dict(self._state_dict(), strict=True)
        return model.eval().to(self.run_device)

    def _state_dict(self) -> dict[str, Any]:
        spec = self.model_spec()
        local = Path(spec.local_dir).expanduser() if spec.local_dir else None
        if local is not None and local.is_dir():
            safe = sorted(local.glob("*.safetensors"))
            path = safe[0] if safe else local / self.params["checkpoint_file"]
        else:
            path = resolve_file(spec, self.params["checkpoint_file"])
        state = load_state_dict(path, expert=self.name)
        prefix = "encode_image.i3_resnet."
        out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not out and any(k.startswith("conv1.") for k in state):
            out = dict(state)  # an image-encoder-only export
        if not out:
            raise LoadingError(f"expert {self.name!r}: no {prefix}* tensors in {path}")
        return out

    def _forward(self, x: Any) -> Any:
        m = self._model
        x = x.permute(0, 1, 4, 2, 3)  # (B, 1, X, Y, Z) -> (B, 1, Z, X, Y), as I3ResNet.forward
        x = x.repeat(1, 3, 1, 1, 1)
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        feats = m.avgpool(x)  # (B, 2048, t, 1, 1)
        if self.params["output"] == "contrastive":
            return m.contrastive_head(feats).flatten(2).mean(2)
        return feats.flatten(2).mean(2)

    def forward(self, batch: Any) -> np.ndarray:
        self.get_model()
        outs = []
        with self.inference():
            for sl in forward_chunks(batch.shape[0], self.batch_size):
                outs.append(
                    self.to_numpy(self._forward(batch[sl].to(self.run_device, non_blocking=True)))
                )
        return np.concatenate(outs)


@register_expert("radfm")
class RadFMExpert(FMVolumeExpert):
    """RadFM's 3-D ViT vision encoder from a local checkpoint; mean of the output tokens."""

    model_class = "RadFM.ViT3D"
    needs_gpu = True
    packages = ("torch", "safetensors", "numpy", "nibabel", "pydicom")
    default_batch_size = 1
    # RadFM's weights are not on the hub in a loadable form: a local `checkpoint:` is its source
    source_keys = ("random_init", "config", "precision", "batch_size", "device", "seed")

    def __init__(
        self,
        checkpoint: str | None = None,
        state_dict_prefix: str = RADFM_PREFIX,
        hu_window: tuple[float, float] | list[float] = (-1000.0, 1000.0),
        max_depth: int = 64,
        axis_order: str = "auto",
        npz_key: str | None = None,
        **config: Any,
    ) -> None:
        self.check_source_keys(config)
        cfg = {**RADFM_VIT, **(config.get("config") or {})}
        if int(max_depth) < cfg["frame_patch_size"] or int(max_depth) > cfg["frames"]:
            raise ValueError("radfm: max_depth must lie between frame_patch_size and frames")
        super().__init__(
            {**config, "local_dir": checkpoint, "config": cfg},
            state_dict_prefix=state_dict_prefix,
            hu_window=[float(v) for v in hu_window],
            max_depth=int(max_depth),
            axis_order=axis_order,
            npz_key=npz_key,
        )

    @property
    def model_id(self) -> str:
        if self.random_init:
            return super().model_id
        return (
            f"local:{self.params['local_dir']}"
            if self.params["local_dir"]
            else "radfm:<no checkpoint>"
        )

    @property
    def dim(self) -> int:
        return int(self.params["config"]["dim"])

    @property
    def pooling(self) -> str:
        return "mean over 3-D ViT tokens"

    def weights_status(self) -> tuple[str, str]:
        if self.random_init:
            return "random-init", "seeded random RadFM ViT3D; for CI/demo only"
        ckpt = self.params["local_dir"]
        if not ckpt:
            return "missing", (
                f"expert {self.name!r}: RadFM loads from a local checkpoint only; set `checkpoint:` to RadFM's "
                "pytorch_model.bin or its safetensors export (see extractors/radfm_export.py)"
            )
        path = Path(ckpt).expanduser()
        return (
            ("ok", f"checkpoint {path}")
            if path.is_file()
            else ("missing", f"checkpoint {path} does not exist")
        )

    def prepare_volume(self, vol: Volume) -> VolumeInput:
        cfg = self.params["config"]
        lo, hi = self.params["hu_window"]
        arr = (np.clip(vol.array, lo, hi) - lo) / (hi - lo)  # (D, H, W)
        arr = arr.transpose(1, 2, 0)  # (H, W, D) as RadFM's inputs
        fp = cfg["frame_patch_size"]
        depth = int(np.clip(round(arr.shape[2] / fp) * fp, fp, self.params["max_depth"]))
        size = cfg["image_size"]
        arr = resample(arr, (size, size, depth))
        return VolumeInput(
            np.repeat(arr[None], cfg["channels"], axis=0), tuple(vol.array.shape), vol.spacing
        )

    def _load_model(self) -> Any:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = build_radfm_vit(self.params["config"])
        if not self.random_init:
            model.load_state_dict(
                load_radfm_vision(
                    self.params["local_dir"], self.name, self.params["state_dict_prefix"]
                ),
                strict=True,
            )
        return model.eval().to(self.run_device)

    def forward(self, batch: Any) -> np.ndarray:
        import torch

        model = self.get_model()
        arrays = (
            [batch[i] for i in range(batch.shape[0])]
            if isinstance(batch, torch.Tensor)
            else [torch.from_numpy(it.array) for it in batch]
        )
        out = np.zeros((len(arrays), self.dim), dtype=np.float32)
        with self.inference():
            for i, x in enumerate(arrays):  # one volume per pass: depths differ
                tokens = model(x[None].to(self.run_device, non_blocking=True))
                out[i] = self.to_numpy(tokens.mean(dim=1))[0]
        return out
