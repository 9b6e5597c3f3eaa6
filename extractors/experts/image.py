"""Image experts: the :class:`ImageExpert` interface and DINOv2 (CLS token).

An :class:`ImageExpert`'s :meth:`ImageExpert.prepare_array` takes an in-memory float image in
[0, 1] — (H, W) or (H, W, 3) — and returns the expert's loaded item. ``load`` is "read the file,
then ``prepare_array``"; the volume (2.5D slicer) and slide (tiles) experts call
``prepare_array`` on slices and tiles, so any image expert can serve as their inner encoder
(:mod:`extractors.experts.pooled`). The hand-crafted texture expert is in
:mod:`extractors.experts.texture`, the foundation-model ones in :mod:`extractors.experts.fm_image`.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Expert
from extractors.loading import ModelSpec, load_model
from extractors.readers import resolve_path
from extractors.readers.images import as_unit_array, read_image, resize_float, to_rgb
from extractors.registry import register_expert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageExpert(Expert):
    """Base of image experts: ``load`` = :func:`read_image` + :meth:`prepare_array`."""

    kind = "image"

    @property
    def input_size(self) -> int:
        """Side of the square the expert resizes every image to (slices/tiles are sized to it)."""
        return int(self.params.get("image_size", 224))

    @property
    def high_bit(self) -> str:
        return str(self.params.get("high_bit", "range"))

    @abstractmethod
    def prepare_array(self, arr: np.ndarray) -> Any:
        """An in-memory float image in [0, 1], (H, W) or (H, W, 3) -> the loaded item.

        Raises SampleError for an unusable array (wrong shape, non-finite values)."""

    def load(self, value: str, root: Path) -> Any:
        return self.prepare_array(read_image(resolve_path(root, value), high_bit=self.high_bit))


# ----------------------------------------------------------------------------------------
# DINOv2
# ----------------------------------------------------------------------------------------


@register_expert("dinov2")
class Dinov2Expert(ImageExpert):
    """DINOv2 ViT (transformers ``Dinov2Model``); the embedding is the final-layer-normed CLS token.

    Preprocessing: grayscale replicated to RGB, bicubic resize of the whole image to
    ``image_size`` square (no centre crop: findings at the image border must stay), ImageNet
    mean/std. Weights come from ``local_dir`` or the HF cache (only the cache when
    ``HF_HUB_OFFLINE`` is set), under the project's loading policy (``extractors.loading``).
    ``random_init: true`` builds a seeded randomly initialised model
    from the architecture parameters instead — an offline stand-in that exercises the FM code
    path and is labelled ``offline:dinov2-random-init(...)``. ``intermediate_size`` defaults to
    4 x ``hidden_size`` (DINOv2's MLP ratio).
    """

    packages = ("torch", "transformers", "numpy", "pillow")

    def __init__(
        self,
        model_id: str = "facebook/dinov2-base",
        revision: str | None = None,
        local_dir: str | None = None,
        random_init: bool = False,
        image_size: int = 224,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        patch_size: int = 14,
        mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
        std: tuple[float, ...] | list[float] = IMAGENET_STD,
        high_bit: str = "range",
        batch_size: int = 32,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        params: dict[str, Any] = {
            "random_init": bool(random_init),
            "image_size": int(image_size),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "high_bit": high_bit,
        }
        if random_init:
            inter = (
                int(intermediate_size) if intermediate_size is not None else 4 * int(hidden_size)
            )
            if inter % int(hidden_size):
                raise ValueError(
                    f"dinov2: intermediate_size {inter} must be a multiple of hidden_size {hidden_size} "
                    "(Dinov2Config takes an integer mlp_ratio)"
                )
            params.update(
                hidden_size=int(hidden_size),
                num_hidden_layers=int(num_hidden_layers),
                num_attention_heads=int(num_attention_heads),
                intermediate_size=inter,
                patch_size=int(patch_size),
            )
        else:
            params.update(model_id=model_id, revision=revision, local_dir=local_dir)
        super().__init__(batch_size=batch_size, device=device, seed=seed, **params)
        self._model: Any = None
        self._mean = np.asarray(params["mean"], dtype=np.float32)[:, None, None]
        self._std = np.asarray(params["std"], dtype=np.float32)[:, None, None]

    # -- description ------------------------------------------------------------------
    @property
    def random_init(self) -> bool:
        return bool(self.params["random_init"])

    def _arch_summary(self) -> str:
        p = self.params
        return (
            f"hidden={p['hidden_size']},layers={p['num_hidden_layers']},heads={p['num_attention_heads']},"
            f"mlp={p['intermediate_size']},patch={p['patch_size']},image={p['image_size']},seed={self.seed}"
        )

    @property
    def model_id(self) -> str:
        if self.random_init:
            return f"offline:dinov2-random-init({self._arch_summary()})"
        return str(self.params["local_dir"] or self.params["model_id"])

    @property
    def revision(self) -> str | None:
        if self.random_init:
            return None
        if self.params["revision"]:
            return str(self.params["revision"])
        return getattr(self._get_model().config, "_commit_hash", None)

    @property
    def dim(self) -> int:
        if self.random_init:
            return int(self.params["hidden_size"])
        return int(self._get_model().config.hidden_size)

    @property
    def pooling(self) -> str:
        return "cls"

    # -- model ------------------------------------------------------------------------
    def model_spec(self) -> Any:
        """The :class:`extractors.loading.ModelSpec` this expert loads under the project policy."""
        p = self.params
        if self.random_init:
            config = {
                "hidden_size": p["hidden_size"],
                "num_hidden_layers": p["num_hidden_layers"],
                "num_attention_heads": p["num_attention_heads"],
                "mlp_ratio": p["intermediate_size"] // p["hidden_size"],
                "image_size": p["image_size"],
                "patch_size": p["patch_size"],
            }
            return ModelSpec(
                expert=self.name,
                random_init=True,
                model_class="Dinov2Model",
                config=config,
                seed=self.seed,
            )
        return ModelSpec(
            expert=self.name,
            model_id=p["model_id"],
            revision=p["revision"],
            local_dir=p["local_dir"],
            model_class="Dinov2Model",
        )

    def _get_model(self) -> Any:
        """Load once, through ``extractors.loading`` (local_dir / HF cache / seeded random init;
        safetensors or weights_only; ``WeightsNotFound`` says what was looked for and how to
        provide it)."""
        if self._model is None:
            self._model = load_model(self.model_spec(), device=self.device)
            self._model.eval()
        return self._model

    # -- work -------------------------------------------------------------------------
    def prepare_array(self, arr: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) in [0, 1] -> normalised (3, S, S) float32."""
        s = self.input_size
        rgb = to_rgb(resize_float(as_unit_array(arr), (s, s)))  # resize one channel, then replicate
        return ((rgb.transpose(2, 0, 1) - self._mean) / self._std).astype(np.float32)

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        model = self._get_model()
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        outs = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(np.stack(batch[i : i + self.batch_size])).to(self.device)
                outs.append(model(pixel_values=x).pooler_output.float().cpu().numpy())
        return np.concatenate(outs).astype(np.float32)
