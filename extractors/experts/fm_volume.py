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
embeddings), re-implemented here with the same module names so that the released weights load
as they are. RadFM's code is not a package and its weights are not on the hub in a loadable
form, so the expert loads **from a local checkpoint** only:

1. download RadFM's ``pytorch_model.bin`` (the full model, ~28 GB; the RadFM repository's
   release);
2. either point ``checkpoint:`` at it (the file is read whole with
   ``torch.load(weights_only=True)``, which needs about 30 GB of RAM; every tensor not under
   ``embedding_layer.vision_encoder.`` is ignored), or, once,
   ``python -m extractors.experts.fm_volume radfm-export pytorch_model.bin radfm_vit3d.safetensors``
   and point ``checkpoint:`` at the ~350 MB safetensors file (fast, and nothing pickled).

Preprocessing as RadFM's CT inputs: HU window (``hu_window``, default [-1000, 1000]) -> [0, 1],
grayscale replicated to 3 channels, in-plane trilinear resize to 512 x 512, depth resampled to
the nearest multiple of 4 between 4 and ``max_depth`` (64) slices. Embedding = mean of the ViT output tokens
(768-d), the input of RadFM's perceiver.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import FMExpert, missing_package
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


def check_volume(vol: Volume) -> None:
    if vol.array.shape[0] < 2:
        raise SampleError(f"volume has {vol.array.shape[0]} slice(s), expected a 3-D volume")
    if not np.isfinite(vol.array).all():
        raise SampleError("NaN voxels")


class FMVolumeExpert(FMExpert):
    kind = "volume"
    packages = ("torch", "numpy", "nibabel", "pydicom")

    def read(self, value: str, root: Path) -> Volume:
        path = resolve_path(root, value, allow_dir=True)
        vol = read_volume(
            path, axis_order=self.params["axis_order"], npz_key=self.params["npz_key"]
        )
        check_volume(vol)
        return vol

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
    OUTPUTS = {"features": 2048, "contrastive": 512}

    def __init__(
        self,
        model_id: str | None = None,
        revision: str | None = None,
        local_dir: str | None = None,
        random_init: bool = False,
        config: dict[str, Any] | None = None,
        checkpoint_file: str = MERLIN_CHECKPOINT,
        output: str = "features",
        spacing: tuple[float, float, float] | list[float] = (1.5, 1.5, 3.0),
        target_shape: tuple[int, int, int] | list[int] = (224, 224, 160),
        hu_window: tuple[float, float] | list[float] = (-1000.0, 1000.0),
        axis_order: str = "auto",
        npz_key: str | None = None,
        precision: str = "auto",
        batch_size: int = 2,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        if output not in self.OUTPUTS:
            raise ValueError(f"merlin: output must be one of {sorted(self.OUTPUTS)}")
        if axis_order not in AXIS_ORDERS:
            raise ValueError(f"merlin: axis_order must be one of {AXIS_ORDERS}")
        super().__init__(
            model_id=model_id,
            revision=revision,
            local_dir=local_dir,
            random_init=random_init,
            config=config,
            precision=precision,
            batch_size=batch_size,
            device=device,
            seed=seed,
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

    def load(self, value: str, root: Path) -> VolumeInput:
        return self.prepare_volume(self.read(value, root))

    def weights_status(self) -> tuple[str, str]:
        from extractors.experts.fm_common import weights_status

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
        from extractors.loading import LoadingError, load_state_dict, resolve_file

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
        from extractors.experts.fm_common import forward_chunks

        self.get_model()
        outs = []
        with self.inference():
            for sl in forward_chunks(batch.shape[0], self.batch_size):
                outs.append(
                    self.to_numpy(self._forward(batch[sl].to(self.run_device, non_blocking=True)))
                )
        return np.concatenate(outs)


# ---------------------------------------------------------------------------------------------
# RadFM
# ---------------------------------------------------------------------------------------------

RADFM_VIT = {
    "image_size": 512,
    "frames": 512,
    "image_patch_size": 32,
    "frame_patch_size": 4,
    "dim": 768,
    "depth": 12,
    "heads": 8,
    "dim_head": 64,
    "mlp_dim": 2048,
    "channels": 3,
}
RADFM_PREFIX = "embedding_layer.vision_encoder."


def build_radfm_vit(cfg: dict[str, Any]) -> Any:
    """RadFM's 3-D ViT (module names as in RadFM's ``vit_3d.py``, so its weights load)."""
    import torch
    from torch import nn

    class PositionEmbeddingLearned3d(nn.Module):
        def __init__(self, num_pos_feats: int, h: int, w: int, d: int) -> None:
            super().__init__()
            self.h_patch_num, self.w_patch_num, self.d_patch_num = h, w, d
            self.row_embed = nn.Embedding(h, num_pos_feats)
            self.col_embed = nn.Embedding(w, num_pos_feats)
            self.dep_embed = nn.Embedding(d, num_pos_feats)
            for e in (self.row_embed, self.col_embed, self.dep_embed):
                nn.init.uniform_(e.weight)

        def forward(self, b: int, h: int, w: int, d: int, x: Any) -> Any:
            i = (torch.arange(h, device=x.device) + 1) * (self.h_patch_num // h) - 1
            j = (torch.arange(w, device=x.device) + 1) * (self.w_patch_num // w) - 1
            k = (torch.arange(d, device=x.device) + 1) * (self.d_patch_num // d) - 1
            xe = self.row_embed(i)[:, None, None].expand(h, w, d, -1)
            ye = self.col_embed(j)[None, :, None].expand(h, w, d, -1)
            ze = self.dep_embed(k)[None, None, :].expand(h, w, d, -1)
            pos = torch.cat([xe, ye, ze], dim=-1).reshape(1, h * w * d, -1)
            return pos.expand(b, -1, -1)

    class PreNorm(nn.Module):
        def __init__(self, dim: int, fn: nn.Module) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.fn = fn

        def forward(self, x: Any) -> Any:
            return self.fn(self.norm(x))

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.Dropout(0.0),
                nn.Linear(hidden, dim),
                nn.Dropout(0.0),
            )

        def forward(self, x: Any) -> Any:
            return self.net(x)

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int, dim_head: int) -> None:
            super().__init__()
            inner = dim_head * heads
            self.heads = heads
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

        def forward(self, x: Any) -> Any:
            b, n, _ = x.shape
            q, k, v = (
                t.reshape(b, n, self.heads, -1).transpose(1, 2)
                for t in self.to_qkv(x).chunk(3, dim=-1)
            )
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

    class Transformer(nn.Module):
        def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                nn.ModuleList(
                    [
                        PreNorm(dim, Attention(dim, heads, dim_head)),
                        PreNorm(dim, FeedForward(dim, mlp_dim)),
                    ]
                )
                for _ in range(depth)
            )

        def forward(self, x: Any) -> Any:
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return x

    class Patchify(
        nn.Module
    ):  # einops Rearrange('b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)')
        def __init__(self, p1: int, p2: int, pf: int) -> None:
            super().__init__()
            self.p = (p1, p2, pf)

        def forward(self, x: Any) -> Any:
            b, c, hh, ww, ff = x.shape
            p1, p2, pf = self.p
            x = x.reshape(b, c, hh // p1, p1, ww // p2, p2, ff // pf, pf)
            x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
            return x.reshape(b, (hh // p1) * (ww // p2) * (ff // pf), p1 * p2 * pf * c)

    class ViT3D(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            p, pf, dim = c["image_patch_size"], c["frame_patch_size"], c["dim"]
            patch_dim = c["channels"] * p * p * pf
            self.patch, self.frame_patch = p, pf
            self.to_patch_embedding = nn.Sequential(
                Patchify(p, p, pf),
                nn.LayerNorm(patch_dim),
                nn.Linear(patch_dim, dim),
                nn.LayerNorm(dim),
            )
            self.pos_embedding = PositionEmbeddingLearned3d(
                dim // 3, c["image_size"] // p, c["image_size"] // p, c["frames"] // pf
            )
            self.transformer = Transformer(dim, c["depth"], c["heads"], c["dim_head"], c["mlp_dim"])

        def forward(self, video: Any) -> Any:
            b, _, h, w, d = video.shape
            x = self.to_patch_embedding(video)
            x = x + self.pos_embedding(
                b, h // self.patch, w // self.patch, d // self.frame_patch, x
            )
            return self.transformer(x)

    if cfg["dim"] % 3:
        raise ValueError("radfm: dim must be divisible by 3 (three learned position embeddings)")
    return ViT3D(cfg)


@register_expert("radfm")
class RadFMExpert(FMVolumeExpert):
    """RadFM's 3-D ViT vision encoder from a local checkpoint; mean of the output tokens."""

    model_class = "RadFM.ViT3D"
    needs_gpu = True
    packages = ("torch", "safetensors", "numpy", "nibabel", "pydicom")

    def __init__(
        self,
        checkpoint: str | None = None,
        random_init: bool = False,
        config: dict[str, Any] | None = None,
        state_dict_prefix: str = RADFM_PREFIX,
        hu_window: tuple[float, float] | list[float] = (-1000.0, 1000.0),
        max_depth: int = 64,
        axis_order: str = "auto",
        npz_key: str | None = None,
        precision: str = "auto",
        batch_size: int = 1,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        cfg = {**RADFM_VIT, **(config or {})}
        if int(max_depth) < cfg["frame_patch_size"] or int(max_depth) > cfg["frames"]:
            raise ValueError("radfm: max_depth must lie between frame_patch_size and frames")
        super().__init__(
            model_id=None,
            local_dir=checkpoint,
            random_init=random_init,
            config=cfg,
            precision=precision,
            batch_size=batch_size,
            device=device,
            seed=seed,
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
                "pytorch_model.bin or its radfm-export safetensors (see extractors/experts/fm_volume.py)"
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

    def load(self, value: str, root: Path) -> VolumeInput:
        return self.prepare_volume(self.read(value, root))

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


def load_radfm_vision(
    checkpoint: str | None, expert: str, prefix: str = RADFM_PREFIX
) -> dict[str, Any]:
    """The vision-encoder tensors of a RadFM checkpoint (full model or a radfm-export file)."""
    from extractors.loading import LoadingError, WeightsNotFound, load_state_dict

    if not checkpoint:
        raise WeightsNotFound(
            f"expert {expert!r}: RadFM needs `checkpoint:` (a local file); see fm_volume.py"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WeightsNotFound(
            f"expert {expert!r}: RadFM checkpoint {path} not found. Download RadFM's pytorch_model.bin and set "
            "`checkpoint:` to it (or to the safetensors written by `python -m extractors.experts.fm_volume "
            "radfm-export`)."
        )
    state = load_state_dict(path, expert=expert)
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out and any(k.startswith("to_patch_embedding.") for k in state):
        out = dict(state)  # already exported
    if not out:
        raise LoadingError(f"expert {expert!r}: no {prefix}* tensors in {path}")
    return out


def radfm_export(src: str, dst: str) -> Path:
    """Write RadFM's vision-encoder tensors from ``src`` (pytorch_model.bin) to a safetensors file."""
    from safetensors.torch import save_file

    state = load_radfm_vision(src, "radfm-export")
    save_file(
        {k: v.contiguous() for k, v in state.items()}, dst, metadata={"source": Path(src).name}
    )
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extractors.experts.fm_volume")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("radfm-export", help="RadFM pytorch_model.bin -> vision-encoder safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    args = parser.parse_args(argv)
    print(radfm_export(args.src, args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
