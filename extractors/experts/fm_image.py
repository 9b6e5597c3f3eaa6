"""Image foundation-model experts: BiomedCLIP (open_clip) and the DINOv3 ViT-L teacher.

DINOv2-B is the existing ``dinov2`` expert (``model_id: facebook/dinov2-base``).

Both experts here are :class:`~extractors.experts.image.ImageExpert` s, so the 2.5D CT slicer
(``ct-slicer``) and the WSI tiler (``slide-tiles``) can use them as inner encoders
(``image_expert: biomedclip`` / ``tile_expert: biomedclip``). Each has its own preprocessing
(:meth:`prepare_array`, run in the DataLoader workers) and a ``collate``/``forward`` pair, so the
batching driver stacks batches in the workers and pins them for the GPU copy.

``dinov3`` — transformers ``DINOv3ViTModel``; the embedding is the final-layer-normed CLS token
(``pooler_output``). Preprocessing as the model card: RGB (grayscale replicated), bicubic resize
of the whole image to ``image_size`` (224; no crop, so findings at the border stay), ImageNet
mean/std. The hub repositories of DINOv3 are gated: accept the licence on the hub, then
``hf download facebook/dinov3-vitl16-pretrain-lvd1689m`` with the same ``HF_HOME``.

``biomedclip`` — the image tower of BiomedCLIP (ViT-B/16 + PubMedBERT, open_clip), i.e.
``encode_image``: the timm ViT-B/16 trunk and its linear projection to the 512-d joint space
(``normalize: true`` L2-normalises, as for retrieval). Only the vision tower is built, from the
``model_cfg`` of ``open_clip_config.json`` (the PubMedBERT text tower, which would need a second
hub download, is never instantiated), and only the ``visual.*`` tensors of the checkpoint are
loaded — from ``*.safetensors`` or ``open_clip_pytorch_model.bin`` under
``torch.load(weights_only=True)`` (``extractors.loading``). Sources: ``model_id`` (``hf-hub:``
prefix optional) + ``revision``, or ``local_dir`` (a folder with ``open_clip_config.json`` and the
checkpoint), or ``random_init`` with an open_clip ``config`` (``embed_dim`` + ``vision_cfg``).
Preprocessing as open_clip's for this model: bicubic resize of the shorter side to 224 and a
centre crop (``resize: squash`` resizes the whole image instead), OpenAI CLIP mean/std (from
``preprocess_cfg`` when the config file has one). Needs ``open_clip_torch`` and ``timm`` (and so
``torchvision``); without them the expert fails with a message saying what to install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import FMExpert, forward_chunks, missing_package, weights_status
from extractors.experts.fm_source import SOURCE_KEYS_NO_REMOTE_CODE
from extractors.experts.image import IMAGENET_MEAN, IMAGENET_STD, ImageExpert
from extractors.loading import (
    LoadingError,
    WeightsNotFound,
    find_weights,
    how_to_provide,
    load_state_dict,
    resolve_dir,
)
from extractors.readers.images import as_unit_array, resize_float, to_rgb
from extractors.registry import register_expert

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("squash", "shortest-center-crop")


def resize_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize so the shorter side is ``size``, then the central ``size`` x ``size``."""
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = resize_float(rgb, (nh, nw))
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[top : top + size, left : left + size]


def normalized_rgb(arr: np.ndarray, size: int, resize: str, mean: Any, std: Any) -> np.ndarray:
    """(H, W) or (H, W, 3) in [0, 1] -> (3, size, size) float32 normalised by ``mean``/``std``,
    resized whole (``squash``) or by its shorter side and centre-cropped."""
    img = as_unit_array(arr)
    # resize before replicating a grayscale image to RGB: bicubic works per channel, so the
    # result is identical and a radiograph costs one channel's resize, not three
    img = resize_float(img, (size, size)) if resize == "squash" else resize_center_crop(img, size)
    rgb = to_rgb(img)
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    return ((rgb.transpose(2, 0, 1) - mean) / std).astype(np.float32)


class FMImageExpert(FMExpert, ImageExpert):
    """Common preprocessing and batching of the FM image experts."""

    packages = ("torch", "transformers", "numpy", "pillow")
    default_mean: tuple[float, ...] = IMAGENET_MEAN
    default_std: tuple[float, ...] = IMAGENET_STD
    default_resize = "squash"

    def _init_preprocess(self, mean: Any, std: Any, resize: str | None) -> None:
        resize = resize or self.default_resize
        if resize not in RESIZE_MODES:
            raise ValueError(f"{self.registry_name}: resize must be one of {RESIZE_MODES}")
        self.params["resize"] = resize
        self.params["mean"] = [float(v) for v in (mean or self.default_mean)]
        self.params["std"] = [float(v) for v in (std or self.default_std)]

    def prepare_array(self, arr: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) in [0, 1] -> normalised (3, S, S) float32."""
        p = self.params
        return normalized_rgb(arr, self.input_size, p["resize"], p["mean"], p["std"])

    def collate(self, items: list[np.ndarray]) -> Any:
        import torch

        return torch.from_numpy(np.stack(items))

    def _forward(self, x: Any) -> Any:  # (B, 3, S, S) on the device -> (B, dim)
        raise NotImplementedError

    def forward(self, batch: Any) -> np.ndarray:
        self.get_model()
        outs = []
        with self.inference():
            for sl in forward_chunks(batch.shape[0], self.batch_size):
                x = batch[sl].to(self.run_device, non_blocking=True)
                outs.append(self.to_numpy(self._forward(x)))
        if not outs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(outs)

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        for item in batch:
            if item.shape != (3, self.input_size, self.input_size):
                raise SampleError(f"prepared image has shape {item.shape}")
        return self.forward(self.collate(batch))


@register_expert("hf-vision")
class HFVisionExpert(FMImageExpert):
    """A transformers vision backbone (``model_class``) whose ``pooler_output`` is the embedding."""

    model_class = "DINOv3ViTModel"
    default_batch_size = 32

    def __init__(
        self,
        model_class: str | None = None,
        image_size: int = 224,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        resize: str | None = None,
        high_bit: str = "range",
        **config: Any,
    ) -> None:
        self.check_source_keys(config)
        if model_class:
            self.model_class = str(model_class)
        super().__init__(
            config,
            model_class=self.model_class,
            image_size=int(image_size),
            high_bit=high_bit,
        )
        self._init_preprocess(mean, std, resize)

    @property
    def dim(self) -> int:
        return self.configured_dim("hidden_size", lambda model: model.config.hidden_size)

    @property
    def pooling(self) -> str:
        return "cls"

    def _forward(self, x: Any) -> Any:
        return self._model(pixel_values=x).pooler_output


@register_expert("dinov3")
class Dinov3Expert(HFVisionExpert):
    """DINOv3 ViT-L/16 (``DINOv3ViTModel``, 1024-d CLS); the image teacher of the paper."""

    model_class = "DINOv3ViTModel"
    default_model_id = "facebook/dinov3-vitl16-pretrain-lvd1689m"
    needs_gpu = True


@register_expert("biomedclip")
class BiomedCLIPExpert(FMImageExpert):
    """BiomedCLIP image tower (open_clip; timm ViT-B/16 + projection to 512-d)."""

    model_class = "open_clip"
    default_model_id = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    default_mean = OPENAI_CLIP_MEAN
    default_std = OPENAI_CLIP_STD
    default_resize = "shortest-center-crop"
    packages = ("torch", "open_clip_torch", "timm", "torchvision", "numpy", "pillow")
    import_names = (
        ("torch", "torch"),
        ("open_clip", "open_clip_torch"),
        ("timm", "timm"),
        ("torchvision", "torchvision"),
    )
    default_batch_size = 32
    source_keys = SOURCE_KEYS_NO_REMOTE_CODE
    CONFIG_FILE = "open_clip_config.json"
    WEIGHT_PATTERNS = (
        "open_clip_config.json",
        "*.safetensors",
        "open_clip_pytorch_model.bin",
        "*.pt",
        "*.pth",
    )

    def __init__(
        self,
        image_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        resize: str | None = None,
        normalize: bool = False,
        high_bit: str = "range",
        **config: Any,
    ) -> None:
        self.check_source_keys(config)
        model_id = config.get("model_id")
        if model_id and str(model_id).startswith("hf-hub:"):  # open_clip's spelling of a hub id
            config = {**config, "model_id": str(model_id)[len("hf-hub:") :]}
        super().__init__(
            config,
            image_size=image_size,
            normalize=bool(normalize),
            high_bit=high_bit,
        )
        self._oc_config: dict[str, Any] | None = None
        self._init_preprocess(mean, std, resize)
        self._user_mean, self._user_std = mean, std

    # -- config ---------------------------------------------------------------------------
    def open_clip_config(self) -> dict[str, Any]:
        """``{"model_cfg": {...}, "preprocess_cfg": {...}}`` from the config file or ``config:``."""
        if self._oc_config is None:
            if self.random_init:
                cfg = dict(self.params["config"])
                self._oc_config = {
                    "model_cfg": cfg.get("model_cfg", cfg),
                    "preprocess_cfg": cfg.get("preprocess_cfg", {}),
                }
            else:
                folder = self._folder()
                path = folder / self.CONFIG_FILE
                if not path.exists():
                    raise WeightsNotFound(
                        f"expert {self.name!r}: {self.CONFIG_FILE} not found in {folder} (an open_clip "
                        f"model folder holds it beside the checkpoint). {how_to_provide(self.model_spec())}"
                    )
                self._oc_config = json.loads(path.read_text())
            pre = self._oc_config.get("preprocess_cfg") or {}
            if pre.get("mean") and not getattr(self, "_user_mean", None):
                self.params["mean"] = [float(v) for v in pre["mean"]]
            if pre.get("std") and not getattr(self, "_user_std", None):
                self.params["std"] = [float(v) for v in pre["std"]]
        return self._oc_config

    @property
    def vision_cfg(self) -> dict[str, Any]:
        return dict(self.open_clip_config()["model_cfg"]["vision_cfg"])

    @property
    def input_size(self) -> int:
        if self.params.get("image_size"):
            return int(self.params["image_size"])
        size = self.vision_cfg.get("image_size", 224)
        return int(size[0] if isinstance(size, list | tuple) else size)

    @property
    def dim(self) -> int:
        return int(self.open_clip_config()["model_cfg"]["embed_dim"])

    @property
    def pooling(self) -> str:
        return "open_clip encode_image (cls + projection)" + (
            "; l2" if self.params["normalize"] else ""
        )

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        if not self.random_init:
            try:  # mean/std/size come from the model's config file when present
                self.open_clip_config()
                cfg.update(
                    mean=self.params["mean"], std=self.params["std"], image_size=self.input_size
                )
            except Exception:
                pass
        return cfg

    def prepare_array(self, arr: np.ndarray) -> np.ndarray:
        self.open_clip_config()  # mean/std/size from the config file before the first image
        return super().prepare_array(arr)

    # -- model ----------------------------------------------------------------------------
    def _folder(self) -> Path:
        return resolve_dir(self.model_spec(), allow_patterns=list(self.WEIGHT_PATTERNS))

    def weights_status(self) -> tuple[str, str]:
        state, detail = weights_status(self.model_spec(), patterns=(self.CONFIG_FILE,))
        if state != "ok" or self.random_init:
            return state, detail
        return weights_status(self.model_spec())

    def _load_model(self) -> Any:
        import torch

        try:
            import open_clip.model as oc_model
        except ImportError as exc:
            raise missing_package(
                self.name, "open_clip", "open_clip_torch", " (it needs timm and torchvision too)"
            ) from exc
        cfg = self.open_clip_config()["model_cfg"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            visual = oc_model._build_vision_tower(int(cfg["embed_dim"]), cfg["vision_cfg"])
        if not self.random_init:
            folder = self._folder()
            _, files = find_weights(folder, self.name)
            state = load_state_dict(files[0], expert=self.name)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            state = {k.removeprefix("module."): v for k, v in state.items()}
            vis = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
            if not vis:
                raise LoadingError(f"expert {self.name!r}: no visual.* tensors in {files[0]}")
            visual.load_state_dict(vis, strict=True)
        return visual.eval().to(self.run_device)

    def _forward(self, x: Any) -> Any:
        feats = self._model(x)
        if self.params["normalize"]:
            import torch.nn.functional as F

            feats = F.normalize(feats.float(), dim=-1)
        return feats
