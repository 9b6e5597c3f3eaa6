"""OneLLM (Han et al., CVPR 2024) as an embedding expert: its universal encoder and universal
projection module, without the LLM.

OneLLM aligns eight modalities with LLaMA-2-7B through one shared path: a light **modality
tokenizer** (the CLIP patch conv for images and video frames, a ``Conv1d`` for IMU, a
``Conv2d`` for audio spectrograms, a ``Linear`` for fMRI), the frozen **universal encoder**
(OpenAI CLIP ViT-L/14, all its output tokens after ``ln_post``, no CLIP projection), then the
**universal projection module** (UPM): per-modality ``clip_proj1`` (Linear + LayerNorm), 30
learnt ``resample_tokens`` prepended, three projection experts (8 LLaMA-style transformer
blocks each, ``resample_layers``) mixed per token by the modality's ``routers`` (an MLP, sigmoid
weights normalised to sum 1), the 30 resampled tokens kept, and ``clip_proj2`` (Linear +
LayerNorm) into LLaMA's 4096-d space. Those 30 tokens are what LLaMA reads between the
modality's ``start_tag`` / ``end_tag``. **The embedding is their mean** (4096-d): OneLLM's
multimodal alignment output, before LLaMA. LLaMA itself is never built.

The modules (:mod:`extractors.experts.onellm_model`) are plain PyTorch with OneLLM's module
tree and parameter names, so the release checkpoint loads into them; only the tensors of the
encoder and projection are read from it (:mod:`extractors.experts.onellm_checkpoint`). Reading
and preprocessing the samples of each kind is :mod:`extractors.experts.onellm_inputs`.

Our modalities -> OneLLM tokenizers (``kind``; one preset serves several kinds, see below).
Frames of one sample (CT slices, IMU groups, WSI tiles) go through CLIP in chunks of
``frame_batch`` and their tokens are averaged per sample before the projection:

* ``image`` -> ``image``: CLIP's own patch conv and positional embedding. Preprocessing: the
  CLIP eval transform (bicubic resize of the shorter side to 224, centre crop; ``resize:
  squash`` resizes the whole image), grayscale replicated to RGB, OpenAI CLIP mean/std. (OneLLM's
  demo uses a RandomResizedCrop at inference; an embedding cache needs a deterministic one.)
* ``volume`` (CT) -> ``video``: ``k_slices`` (default 15, the ``[B, 15, 3, 224, 224]`` video
  input of OneLLM's ``encode_image``) axial slices spread uniformly over the depth, HU window
  (``hu_window``, default [-160, 240]) -> [0, 1], each slice preprocessed as an image, encoded as
  a video frame; CLIP's tokens are averaged over the frames before the UPM, exactly as OneLLM
  does for video. (OneLLM's depth / normal-map tokenizers ``rgbd`` / ``rgbn`` take a rendered
  map of one view, not a stack of slices, so video is the closer fit for a CT volume.)
* ``timeseries`` (EHR) -> ``imu``: OneLLM's IMU tokenizer is a ``Conv1d(6, 1024, 10)`` over
  6-channel, 400-step windows (2 s at 200 Hz), the only multichannel time-series tokenizer.
  Each variable (``variables``, default the file's columns, sorted; fixed order) is linearly
  interpolated between its observations onto ``imu_length`` (400) evenly spaced steps over the
  stay, standardised within the sample (``scaling: standard``; ``none`` keeps raw values), and
  the variables are cut into groups of 6 channels (the last padded with zero channels; a
  variable observed fewer than ``min_obs`` times is a zero channel). The groups are encoded as
  the frames of one sample and averaged like video frames before the UPM. A sample with no
  observed variable fails.
* ``text`` (notes) -> LLaMA's token embeddings: OneLLM feeds text to LLaMA directly, so the
  only pre-LLM text representation is ``tok_embeddings``; the embedding is their mean over the
  note's LLaMA-2 tokens (no BOS, at most ``max_length``). Needs OneLLM's ``tokenizer.model``
  (the LLaMA-2 SentencePiece model, ``config/llama2/tokenizer.model`` in the OneLLM repository;
  set ``tokenizer:`` or put it beside the checkpoint) and the ``sentencepiece`` package. This is
  a lexical bag-of-embeddings, much weaker than the other modalities' path.
* ``slide`` (WSI) -> ``image``, tiles as frames: OneLLM has no slide tokenizer, so tissue tiles
  (the ``slide-tiles`` tiler: ``target_mpp`` 0.5, ``max_tiles`` 64, tiles of the CLIP input size)
  are preprocessed as images and their CLIP tokens averaged like video frames before the image
  UPM. An extension in the spirit of OneLLM's video path, not something OneLLM was trained on.

One preset, several kinds: the ``onellm`` method reads ``embeddings/<m>/onellm.parquet`` for
every modality, so the one ``onellm`` preset serves image, volume, time-series, slide and text
modalities. ``kind:`` fixes the kind of an instance (default ``image``);
:meth:`OneLLMExpert.bind_kind` switches an instance to the kind of the modality being
extracted (for a driver that knows it).

Weights: the ``csuhan/OneLLM-7B`` hub repository (``consolidated.00-of-01.pth``, about 15 GB
with LLaMA) at a pinned revision, or ``local_dir`` (a folder, or the checkpoint file itself).
Loaded under the project's policy (:mod:`extractors.loading`): ``*.safetensors`` when present
(only the owned tensors are read), otherwise ``torch.load(weights_only=True)`` — a checkpoint
that needs unpickling is refused. When neither ``model_id`` nor ``local_dir`` is set and
``$MEDMIX_ONELLM_WEIGHTS`` is, that folder is the ``local_dir``. The architecture is OneLLM-7B's
(``DEFAULT_ARCH``); ``config:`` overrides it (``random_init: true`` + a tiny ``config`` for CI).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import FMExpert, forward_chunks
from extractors.experts.fm_source import SOURCE_KEYS_NO_REMOTE_CODE, FMSource
from extractors.experts.onellm_checkpoint import WEIGHT_PATTERNS, load_owned, read_owned
from extractors.experts.onellm_inputs import OneLLMInputs
from extractors.experts.onellm_model import build_arch, build_encoder
from extractors.experts.volume import slicing_window
from extractors.loading import WeightsNotFound, find_weights, how_to_provide, resolve_dir
from extractors.registry import register_expert

ONELLM_WEIGHTS_ENV = "MEDMIX_ONELLM_WEIGHTS"  # the fusion side's variable (fusion.registry)
KIND_TO_MODAL = {
    "image": "image",
    "volume": "video",
    "timeseries": "imu",
    "slide": "image",
    "text": "text",
}
SUPPORTED_KINDS = tuple(KIND_TO_MODAL)


@register_expert("onellm")
class OneLLMExpert(OneLLMInputs, FMExpert):
    """OneLLM's universal encoder + projection; the 30 projected tokens mean-pooled (4096-d)."""

    kind = "image"  # the default; an instance takes ``kind:`` or is bound with bind_kind()
    kinds = SUPPORTED_KINDS
    model_class = "OneLLM"
    default_model_id = "csuhan/OneLLM-7B"
    # pinned by public code that loads consolidated.00-of-01.pth from this snapshot of the
    # hub cache (models--csuhan--OneLLM-7B/snapshots/<commit>)
    default_revision = "e8bd281d09b64620759ba6c5273684817dc9a331"
    default_batch_size = 8
    source_keys = SOURCE_KEYS_NO_REMOTE_CODE
    needs_gpu = True
    base_packages = ("torch", "safetensors", "numpy")
    kind_packages = {
        "image": ("pillow", "pydicom"),
        "volume": ("nibabel", "pydicom", "pillow"),
        "timeseries": ("pandas",),
        "slide": ("openslide-python", "openslide-bin", "scipy", "pillow"),
        "text": ("sentencepiece",),
    }
    import_names = (("torch", "torch"), ("safetensors", "safetensors"))

    def __init__(
        self,
        kind: str | None = None,
        image_size: int | None = None,
        resize: str = "shortest-center-crop",
        high_bit: str = "range",
        k_slices: int = 15,
        hu_window: tuple[float, float] | list[float] = (-160.0, 240.0),
        axis_order: str = "auto",
        npz_key: str | None = None,
        variables: list[str] | None = None,
        time_column: str = "hour",
        min_obs: int = 1,
        scaling: str = "standard",
        tokenizer: str | None = None,
        max_length: int = 2048,
        target_mpp: float = 0.5,
        max_tiles: int | None = 64,
        min_tissue: float = 0.5,
        frame_batch: int = 64,
        num_workers: int | None = None,
        **config: Any,
    ) -> None:
        self.check_source_keys(config)
        arch = build_arch(config.get("config"))  # validates config early (doctor: a config error)
        if image_size is not None and int(image_size) != arch["clip_image_size"]:
            raise ValueError(
                f"onellm: image_size {image_size} must be the CLIP input size {arch['clip_image_size']} "
                "(its positional embedding is fixed)"
            )
        if resize not in ("squash", "shortest-center-crop"):
            raise ValueError("onellm: resize must be 'squash' or 'shortest-center-crop'")
        lo, hi = slicing_window("onellm", hu_window, k_slices)
        if scaling not in ("standard", "none"):
            raise ValueError("onellm: scaling must be 'standard' or 'none'")
        super().__init__(
            config,
            num_workers=num_workers,
            kind=None,
            image_size=arch["clip_image_size"],
            resize=resize,
            high_bit=high_bit,
            k_slices=int(k_slices),
            hu_window=[lo, hi],
            axis_order=axis_order,
            npz_key=npz_key,
            variables=sorted(map(str, variables)) if variables else None,
            time_column=str(time_column),
            min_obs=max(1, int(min_obs)),
            scaling=scaling,
            tokenizer=str(tokenizer) if tokenizer else None,
            max_length=int(max_length),
            target_mpp=float(target_mpp),
            max_tiles=int(max_tiles) if max_tiles is not None else None,
            min_tissue=float(min_tissue),
        )
        self.frame_batch = max(1, int(frame_batch))  # numerics only: not hashed
        self.arch = arch
        self._tok: Any = None
        self._tiler: Any = None
        self.bind_kind(kind or type(self).kind)

    @classmethod
    def default_source(cls, source: FMSource) -> FMSource:
        """With no source configured, ``$MEDMIX_ONELLM_WEIGHTS`` (the folder the fusion side's
        ``onellm`` method reads too) is the ``local_dir``; else the pinned hub repository."""
        if not source.configured:
            env = os.environ.get(ONELLM_WEIGHTS_ENV, "").strip()
            if env:
                source = replace(source, local_dir=env)
        return super().default_source(source)

    # -- kind -----------------------------------------------------------------------------
    def bind_kind(self, kind: str) -> None:
        """Serve modalities of ``kind`` (image, volume, timeseries, text) from now on."""
        if kind not in KIND_TO_MODAL:
            raise ValueError(
                f"expert {self.name or 'onellm'!r}: OneLLM has no tokenizer for {kind!r} inputs "
                f"(supported: {', '.join(SUPPORTED_KINDS)})"
            )
        if self.params.get("kind") != kind:
            self._model = None  # another modality head is needed
        self.kind = kind  # type: ignore[misc]
        self.params["kind"] = kind

    @property
    def packages(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*self.base_packages, *self.kind_packages.get(self.kind, ()))

    @property
    def modal(self) -> str:
        """The OneLLM modality this instance feeds (``text`` = LLaMA's token embeddings)."""
        return KIND_TO_MODAL[self.kind]

    # -- description ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.arch["llm_dim"])

    @property
    def input_size(self) -> int:
        return int(self.arch["clip_image_size"])

    @property
    def pooling(self) -> str:
        if self.modal == "text":
            return "mean of LLaMA-2 token embeddings over the note's tokens"
        frames = {"volume": f"{self.params['k_slices']} slices as video frames, CLIP tokens averaged; ",
                  "timeseries": "variables in 6-channel IMU windows, CLIP tokens averaged; ",
                  "slide": f"<= {self.params['max_tiles']} tissue tiles as frames, CLIP tokens averaged; ",
                  }.get(self.kind, "")  # fmt: skip
        return f"{frames}mean of the {self.arch['resample_tokens']} universal-projection tokens ({self.modal})"

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        keep = {
            "image": ("image_size", "resize", "high_bit"),
            "volume": ("image_size", "resize", "k_slices", "hu_window", "axis_order", "npz_key"),
            "timeseries": ("variables", "time_column", "min_obs", "scaling"),
            "slide": ("image_size", "target_mpp", "max_tiles", "min_tissue"),
            "text": ("tokenizer", "max_length"),
        }[self.kind]
        drop = {
            "image_size", "resize", "high_bit", "k_slices", "hu_window", "axis_order", "npz_key",
            "variables", "time_column", "min_obs", "scaling", "tokenizer", "max_length",
            "target_mpp", "max_tiles", "min_tissue",
        } - set(keep)  # fmt: skip
        for k in drop:
            cfg.pop(k, None)
        cfg["modal"] = self.modal
        return cfg

    # -- model ----------------------------------------------------------------------------
    def _folder(self) -> Path:
        spec = self.model_spec()
        if spec.local_dir and Path(spec.local_dir).expanduser().is_file():
            return Path(spec.local_dir).expanduser().parent
        return resolve_dir(spec, allow_patterns=list(WEIGHT_PATTERNS))

    def checkpoint_files(self) -> tuple[str, list[Path]]:
        spec = self.model_spec()
        if spec.local_dir and Path(spec.local_dir).expanduser().is_file():
            f = Path(spec.local_dir).expanduser()
            return ("safetensors" if f.name.endswith(".safetensors") else "torch"), [f]
        folder = self._folder()
        try:
            return find_weights(folder, self.name)
        except WeightsNotFound:
            raise WeightsNotFound(
                f"expert {self.name!r}: no OneLLM checkpoint in {folder} (looked for *.safetensors, "
                f"then consolidated.00-of-01.pth / *.pt / *.bin). {how_to_provide(spec)}"
            ) from None

    def build(self) -> Any:
        """The encoder for this kind with seeded (random_init) or not-yet-loaded weights."""
        import torch

        text = self.modal == "text"
        arch = dict(self.arch)
        if text:
            arch["vocab_size"] = self.vocab_size()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build_encoder(arch, () if text else (self.modal,), text=text)

    def _load_model(self) -> Any:
        model = self.build()
        if not self.random_init:
            kind, files = self.checkpoint_files()
            subset = read_owned(model, files, kind, self.name)
            load_owned(model, subset, self.name, ", ".join(f.name for f in files))
        return model.eval().to(self.run_device)

    # -- embedding ------------------------------------------------------------------------
    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        model = self.get_model()
        outs = []
        with self.inference():
            if self.modal == "text":
                for ids in batch:
                    t = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.run_device)
                    outs.append(
                        self.to_numpy(model.tok_embeddings(t).float().mean(0, keepdim=True))
                    )
                return np.concatenate(outs)
            for sl in forward_chunks(len(batch), self.batch_size):
                feats = self.frame_means(model, batch[sl])  # (b, tokens, width)
                tokens = model.project(feats, self.modal)  # (b, 30, llm_dim)
                outs.append(self.to_numpy(tokens.float().mean(dim=1)))
        return np.concatenate(outs)

    def frame_means(self, model: Any, items: list[np.ndarray]) -> Any:
        """Per sample, the CLIP tokens averaged over its frames; frames run through CLIP in
        chunks of ``frame_batch`` whatever the sample they belong to (memory stays bounded)."""
        import torch

        counts = np.asarray([int(x.shape[0]) for x in items])
        if (counts < 1).any():
            raise SampleError("a sample without frames")
        frames = np.concatenate(items)
        owner = torch.from_numpy(np.repeat(np.arange(len(items)), counts)).to(self.run_device)
        acc = None
        for i in range(0, len(frames), self.frame_batch):
            x = torch.from_numpy(frames[i : i + self.frame_batch]).to(self.run_device)
            f = model.clip_encode(model.tokenize(x, self.modal), self.modal).float()
            if acc is None:
                acc = torch.zeros((len(items), *f.shape[1:]), device=f.device)
            acc.index_add_(0, owner[i : i + self.frame_batch], f)
        n = torch.from_numpy(counts).to(acc.device, torch.float32)
        return acc / n[:, None, None]

    def item_info(self, item: np.ndarray) -> dict[str, Any]:
        return (
            {"n_frames": int(item.shape[0])}
            if self.modal != "text"
            else {"n_tokens": int(item.size)}
        )
