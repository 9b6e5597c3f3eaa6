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

The modules are plain PyTorch with OneLLM's module tree and parameter names
(``model/LLM/onellm.py`` of github.com/csuhan/OneLLM, the ``Transformer`` class; the CLIP tower
is open_clip's ``VisionTransformer``), so the release checkpoint loads into them. Its keys carry
the ``llma.`` prefix of ``model/meta.py``'s ``MetaModel`` (stripped, as is ``module.``); the
subset this expert owns — ``clip.visual.*``, ``resample_layers.*`` and, for the modalities it
builds, ``conv1.<m>``, ``positional_embedding.<m>``, ``resample_tokens.<m>``,
``clip_proj1.<m>``, ``clip_proj2.<m>``, ``routers.<m>``, ``start_tag.<m>``, ``end_tag.<m>`` (and
``tok_embeddings`` for notes) — must match the built model exactly (names and shapes), else
the load fails naming the missing / unexpected keys. Everything else (LLaMA's ``layers.*``,
``norm``, ``output``; the CLIP text-tower remnants ``clip.token_embedding`` …; other
modalities' heads, e.g. the point tokenizer, which needs pointnet2's CUDA ops) is ignored.

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

import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SampleError
from extractors.experts.fm_common import FMExpert, forward_chunks, missing_package
from extractors.experts.fm_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_center_crop
from extractors.registry import register_expert

ONELLM_WEIGHTS_ENV = "MEDMIX_ONELLM_WEIGHTS"  # the fusion side's variable (fusion.registry)
ONELLM_MODALS = ("image", "video", "audio", "point", "rgbd", "rgbn", "fmri", "imu")
IMAGE_LIKE = ("image", "video", "rgbd", "rgbn")  # tokenised by CLIP's own patch conv
OWN_POSITIONS = ("audio", "point", "fmri", "imu")  # modalities with their own positional table
KIND_TO_MODAL = {
    "image": "image",
    "volume": "video",
    "timeseries": "imu",
    "slide": "image",
    "text": "text",
}
SUPPORTED_KINDS = tuple(KIND_TO_MODAL)

# OneLLM-7B: OpenAI CLIP ViT-L/14 (open_clip 'ViT-L-14', pretrained='openai': QuickGELU),
# LLaMA-2-7B's config/llama2/7B.json (dim 4096, multiple_of 256, norm_eps 1e-5), 3 projection
# experts of 8 blocks with 16 heads at the CLIP width, 30 resample tokens, and the tokenizer
# shapes of model/LLM/onellm.py.
DEFAULT_ARCH: dict[str, Any] = {
    "clip_width": 1024,
    "clip_layers": 24,
    "clip_heads": 16,
    "clip_patch": 14,
    "clip_image_size": 224,
    "clip_output_dim": 768,
    "llm_dim": 4096,
    "multiple_of": 256,
    "norm_eps": 1e-5,
    "num_experts": 3,
    "num_resample_layers": 8,
    "resample_heads": 16,
    "resample_tokens": 30,
    "imu_channels": 6,
    "imu_kernel": 10,
    "imu_length": 400,
    "audio_tokens": 1212,
    "fmri_in": 15724,
    "fmri_tokens": 8,
    "vocab_size": 32000,
}
WEIGHT_PATTERNS = ("*.json", "*.safetensors", "*.pth", "*.pt", "*.bin", "*.model")
LLM_PREFIXES = ("llma.", "module.")


def build_arch(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_ARCH`` with the ``config:`` overrides (unknown keys are an error)."""
    cfg = dict(config or {})
    unknown = sorted(set(cfg) - set(DEFAULT_ARCH))
    if unknown:
        raise ValueError(
            f"onellm: unknown architecture keys {unknown}; known: {sorted(DEFAULT_ARCH)}"
        )
    arch = {**DEFAULT_ARCH, **cfg}
    if arch["clip_image_size"] % arch["clip_patch"]:
        raise ValueError("onellm: clip_image_size must be a multiple of clip_patch")
    if arch["clip_width"] % arch["resample_heads"] or arch["clip_width"] % arch["clip_heads"]:
        raise ValueError("onellm: clip_width must be divisible by clip_heads and resample_heads")
    return arch


def build_encoder(arch: Mapping[str, Any], modals: Iterable[str], text: bool = False) -> Any:
    """The OneLLM encoder modules (torch imported here, so the module imports without torch)."""
    return _modules().OneLLMEncoder(dict(arch), tuple(modals), text=text)


def owned_keys(model: Any) -> set[str]:
    return set(model.state_dict())


def owns(model: Any, key: str) -> bool:
    """Whether a (prefix-stripped) checkpoint key belongs to the part of OneLLM ``model`` builds."""
    return any(key == p or key.startswith(p + ".") for p in model.owned_prefixes())


def strip_prefix(key: str) -> str:
    for p in LLM_PREFIXES:
        while key.startswith(p):
            key = key[len(p) :]
    return key


def select_owned(model: Any, state: Mapping[str, Any]) -> dict[str, Any]:
    """The tensors of a OneLLM checkpoint that ``model`` owns, keys without ``llma.``."""
    out = {}
    for k, v in state.items():
        key = strip_prefix(str(k))
        if owns(model, key):
            out[key] = v
    return out


def load_owned(model: Any, subset: Mapping[str, Any], expert: str, source: str) -> None:
    """Load the owned subset strictly: same names, same shapes, else a LoadingError."""
    from extractors.loading import LoadingError

    want = model.state_dict()
    missing = sorted(set(want) - set(subset))
    unexpected = sorted(set(subset) - set(want))
    if missing or unexpected:
        raise LoadingError(
            f"expert {expert!r}: {source} does not match OneLLM's encoder/projection modules: "
            f"{len(missing)} missing ({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}"
            f"{' …' if len(unexpected) > 5 else ''}). Is it a OneLLM checkpoint (keys llma.clip.visual.*, "
            "llma.resample_layers.*, llma.clip_proj1.<modality>.*)? A different architecture needs `config:`."
        )
    bad = [k for k in want if tuple(want[k].shape) != tuple(subset[k].shape)]
    if bad:
        k = bad[0]
        raise LoadingError(
            f"expert {expert!r}: {source}: {len(bad)} tensor(s) have other shapes than the configured "
            f"architecture, e.g. {k}: {tuple(subset[k].shape)} vs {tuple(want[k].shape)} (set `config:`)"
        )
    model.load_state_dict(dict(subset), strict=True)


def read_owned(model: Any, files: list[Path], kind: str, expert: str) -> dict[str, Any]:
    """The owned tensors of the checkpoint files (safetensors: only those are read)."""
    from extractors.loading import load_state_dict

    subset: dict[str, Any] = {}
    for f in files:
        if f.name.endswith(".index.json"):
            continue
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    key = strip_prefix(k)
                    if owns(model, key):
                        subset[key] = fh.get_tensor(k)
        else:
            state = load_state_dict(f, expert=expert)  # weights_only=True, or UnsafeCheckpoint
            if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
                state = state["model"]  # a training checkpoint {"model": state_dict, ...}
            if not isinstance(state, Mapping):
                from extractors.loading import LoadingError

                raise LoadingError(f"expert {expert!r}: {f} does not hold a state dict")
            subset.update(select_owned(model, state))
            del state
    return subset


# -- preprocessing (numpy; runs in the DataLoader workers) -------------------------------------


def slice_indices(depth: int, k: int) -> np.ndarray:
    return np.round(np.linspace(0, depth - 1, k)).astype(np.int64)


def series_to_imu(
    times: np.ndarray,
    columns: list[np.ndarray | None],
    length: int,
    channels: int,
    min_obs: int = 1,
    scaling: str = "standard",
) -> np.ndarray:
    """Variables on a clock -> (groups, channels, length) float32 IMU-style windows.

    Each variable with at least ``min_obs`` observations is linearly interpolated between its
    observations (constant beyond the first/last) onto ``length`` steps evenly spaced over
    [first time, last time], optionally standardised within the sample; other variables are
    zero channels. Variables are cut into consecutive groups of ``channels``."""
    t = np.asarray(times, dtype=np.float64)
    grid = np.linspace(t[0], t[-1], length) if len(t) > 1 else np.full(length, t[0])
    rows, observed = [], 0
    for vals in columns:
        if vals is None:
            rows.append(np.zeros(length))
            continue
        vals = np.asarray(vals, dtype=np.float64)
        ok = np.isfinite(vals)
        if int(ok.sum()) < max(1, min_obs):
            rows.append(np.zeros(length))
            continue
        observed += 1
        row = np.interp(grid, t[ok], vals[ok])
        if scaling == "standard":
            sd = row.std()
            row = (row - row.mean()) / sd if sd > 1e-8 else np.zeros(length)
        rows.append(row)
    if not observed:
        raise SampleError("no variable with enough observations")
    n_groups = math.ceil(len(rows) / channels)
    pad = n_groups * channels - len(rows)
    arr = np.stack(rows + [np.zeros(length)] * pad).reshape(n_groups, channels, length)
    return arr.astype(np.float32)


# -- the expert -------------------------------------------------------------------------------


@register_expert("onellm")
class OneLLMExpert(FMExpert):
    """OneLLM's universal encoder + projection; the 30 projected tokens mean-pooled (4096-d)."""

    kind = "image"  # the default; an instance takes ``kind:`` or is bound with bind_kind()
    kinds = SUPPORTED_KINDS
    model_class = "OneLLM"
    default_model_id = "csuhan/OneLLM-7B"
    # pinned by public code that loads consolidated.00-of-01.pth from this snapshot of the
    # hub cache (models--csuhan--OneLLM-7B/snapshots/<commit>)
    default_revision = "e8bd281d09b64620759ba6c5273684817dc9a331"
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
        model_id: str | None = None,
        revision: str | None = None,
        local_dir: str | None = None,
        random_init: bool = False,
        config: dict[str, Any] | None = None,
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
        precision: str = "auto",
        batch_size: int = 8,
        device: str = "cpu",
        seed: int = 0,
        num_workers: int | None = None,
    ) -> None:
        if model_id is None and not local_dir and not random_init:
            env = os.environ.get(ONELLM_WEIGHTS_ENV, "").strip()
            if env:
                local_dir = env
        arch = build_arch(config)  # validates config early (doctor: a config error)
        if image_size is not None and int(image_size) != arch["clip_image_size"]:
            raise ValueError(
                f"onellm: image_size {image_size} must be the CLIP input size {arch['clip_image_size']} "
                "(its positional embedding is fixed)"
            )
        if resize not in ("squash", "shortest-center-crop"):
            raise ValueError("onellm: resize must be 'squash' or 'shortest-center-crop'")
        lo, hi = float(hu_window[0]), float(hu_window[1])
        if not hi > lo:
            raise ValueError(f"onellm: hu_window {hu_window} must be [lo, hi] with hi > lo")
        if int(k_slices) < 1:
            raise ValueError("onellm: k_slices must be >= 1")
        if scaling not in ("standard", "none"):
            raise ValueError("onellm: scaling must be 'standard' or 'none'")
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

    # -- loading one sample ---------------------------------------------------------------
    def prepare_array(self, arr: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) in [0, 1] -> CLIP-normalised (3, S, S) float32."""
        from extractors.readers.images import as_unit_array, resize_float, to_rgb

        s = self.input_size
        img = as_unit_array(arr)
        img = (
            resize_float(img, (s, s))
            if self.params["resize"] == "squash"
            else resize_center_crop(img, s)
        )
        rgb = to_rgb(img)
        mean = np.asarray(OPENAI_CLIP_MEAN, np.float32)[:, None, None]
        std = np.asarray(OPENAI_CLIP_STD, np.float32)[:, None, None]
        return ((rgb.transpose(2, 0, 1) - mean) / std).astype(np.float32)

    def load(self, value: str, root: Path) -> np.ndarray:
        """The sample as OneLLM input frames: (T, 3, S, S), (G, 6, L) or LLaMA token ids."""
        from extractors.readers import resolve_path

        if self.kind == "image":
            from extractors.readers.images import read_image

            arr = read_image(resolve_path(root, value), high_bit=self.params["high_bit"])
            return self.prepare_array(arr)[None]
        if self.kind == "volume":
            from extractors.readers.volumes import read_volume

            vol = read_volume(
                resolve_path(root, value, allow_dir=True),
                axis_order=self.params["axis_order"],
                npz_key=self.params["npz_key"],
            )
            return self.prepare_volume(vol.array)
        if self.kind == "slide":
            return np.stack(self.tiler().load(value, root).tiles)
        if self.kind == "timeseries":
            from extractors.readers.timeseries import read_series

            s = read_series(resolve_path(root, value), time_column=self.params["time_column"])
            names = self.params["variables"] or sorted(s.values)
            return series_to_imu(
                s.times,
                [s.values.get(n) for n in names],
                int(self.arch["imu_length"]),
                int(self.arch["imu_channels"]),
                self.params["min_obs"],
                self.params["scaling"],
            )
        return self.tokenize(value)

    def prepare_volume(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim != 3 or arr.shape[0] < 2:
            raise SampleError(f"volume has shape {arr.shape}, expected a 3-D volume")
        if not np.isfinite(arr).all():
            raise SampleError("NaN voxels")
        lo, hi = self.params["hu_window"]
        picked = arr[slice_indices(arr.shape[0], self.params["k_slices"])]
        unit = (np.clip(picked, lo, hi) - lo) / (hi - lo)
        return np.stack([self.prepare_array(s.astype(np.float32)) for s in unit])

    def tiler(self) -> Any:
        """The ``slide-tiles`` tiler with this expert's image preprocessing for each tile."""
        if self._tiler is None:
            from types import SimpleNamespace

            from extractors.experts.slide import SlideTilesExpert

            p = self.params
            tiler = SlideTilesExpert(
                target_mpp=p["target_mpp"],
                tile_px=self.input_size,
                min_tissue=p["min_tissue"],
                max_tiles=p["max_tiles"],
            )
            tiler.inner = SimpleNamespace(prepare_array=self.prepare_array)  # type: ignore[assignment]
            self._tiler = tiler
        return self._tiler

    # -- notes ----------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        """LLaMA-2's SentencePiece model (random_init: the project's stand-in vocabulary)."""
        if self._tok is not None:
            return self._tok
        from extractors.loading import WeightsNotFound, how_to_provide, load_tokenizer

        path = self.params["tokenizer"]
        if path is None and self.random_init:
            tok = load_tokenizer(self.model_spec())  # the packaged stand-in vocabulary
            self._tok = ("hf", tok)
            return self._tok
        if path is None:
            folder = self._folder()
            cands = sorted(folder.glob("tokenizer.model")) + sorted(
                folder.glob("*/tokenizer.model")
            )
            if not cands:
                raise WeightsNotFound(
                    f"expert {self.name!r}: notes need OneLLM's LLaMA-2 tokenizer.model (in the OneLLM "
                    f"repository at config/llama2/tokenizer.model); none in {folder}. Set `tokenizer:` to "
                    f"it. {how_to_provide(self.model_spec())}"
                )
            path = str(cands[0])
        p = Path(path).expanduser()
        if p.is_dir():
            from transformers import AutoTokenizer

            self._tok = ("hf", AutoTokenizer.from_pretrained(str(p)))
            return self._tok
        if not p.is_file():
            raise WeightsNotFound(f"expert {self.name!r}: tokenizer {p} does not exist")
        try:
            import sentencepiece
        except ImportError as exc:
            raise missing_package(self.name, "sentencepiece", "sentencepiece") from exc
        self._tok = ("spm", sentencepiece.SentencePieceProcessor(model_file=str(p)))
        return self._tok

    def vocab_size(self) -> int:
        if self.random_init and "vocab_size" not in self.params["config"]:
            kind, tok = self.get_tokenizer()
            return len(tok) if kind == "hf" else int(tok.get_piece_size())
        return int(self.arch["vocab_size"])

    def tokenize(self, value: Any) -> np.ndarray:
        from extractors.experts.text import clean_text

        text = clean_text(value)
        kind, tok = self.get_tokenizer()
        ids = (
            tok.encode(text) if kind == "spm" else tok(text, add_special_tokens=False)["input_ids"]
        )
        ids = np.asarray(ids[: self.params["max_length"]], dtype=np.int64)
        if ids.size == 0:
            raise SampleError("no tokens")
        return ids

    # -- model ----------------------------------------------------------------------------
    def _folder(self) -> Path:
        from extractors.loading import resolve_dir

        spec = self.model_spec()
        if spec.local_dir and Path(spec.local_dir).expanduser().is_file():
            return Path(spec.local_dir).expanduser().parent
        return resolve_dir(spec, allow_patterns=list(WEIGHT_PATTERNS))

    def checkpoint_files(self) -> tuple[str, list[Path]]:
        from extractors.loading import WeightsNotFound, find_weights, how_to_provide

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


# -- the torch modules (built on first use) ----------------------------------------------------

_MODULES: Any = None


def _modules() -> Any:
    global _MODULES
    if _MODULES is None:
        _MODULES = _define_modules()
    return _MODULES


def _define_modules() -> Any:  # noqa: C901 - one namespace of small module classes
    import types

    import torch
    import torch.nn.functional as F
    from torch import nn

    # ---- open_clip's VisionTransformer (OpenAI ViT-L/14: QuickGELU, pre-norm blocks) -----
    class QuickGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    class LayerNorm(nn.LayerNorm):
        """open_clip's LayerNorm: computed in fp32, cast back (for fp16 weights)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dtype = x.dtype
            x = F.layer_norm(
                x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
            )
            return x.to(dtype)

    class ResidualAttentionBlock(nn.Module):
        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.ln_1 = LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.ln_2 = LayerNorm(width)
            self.mlp = nn.Sequential(
                OrderedDict(
                    [
                        ("c_fc", nn.Linear(width, width * 4)),
                        ("gelu", QuickGELU()),
                        ("c_proj", nn.Linear(width * 4, width)),
                    ]  # fmt: skip
                )
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.ln_1(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class CLIPTransformer(nn.Module):
        def __init__(self, width: int, layers: int, heads: int) -> None:
            super().__init__()
            self.resblocks = nn.ModuleList(
                [ResidualAttentionBlock(width, heads) for _ in range(layers)]
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
            for block in self.resblocks:
                x = block(x)
            return x

    class VisionTransformer(nn.Module):
        def __init__(self, a: dict[str, Any]) -> None:
            super().__init__()
            w, p, s = a["clip_width"], a["clip_patch"], a["clip_image_size"]
            scale = w**-0.5
            self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
            self.class_embedding = nn.Parameter(scale * torch.randn(w))
            self.positional_embedding = nn.Parameter(scale * torch.randn((s // p) ** 2 + 1, w))
            self.ln_pre = LayerNorm(w)
            self.transformer = CLIPTransformer(w, a["clip_layers"], a["clip_heads"])
            self.ln_post = LayerNorm(w)
            # CLIP's output projection: in the checkpoint, unused (OneLLM keeps every token)
            self.proj = nn.Parameter(scale * torch.randn(w, a["clip_output_dim"]))

    class CLIP(nn.Module):
        """``clip`` of OneLLM's Transformer with only its ``visual`` tower (the text tower is
        set to None there; its remaining tensors are not built)."""

        def __init__(self, a: dict[str, Any]) -> None:
            super().__init__()
            self.visual = VisionTransformer(a)

    # ---- OneLLM's LLaMA-style blocks of the projection experts ---------------------------
    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float) -> None:
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return out.type_as(x) * self.weight

    class Attention(nn.Module):
        """Non-causal, no rotary embedding (the resampler calls it with freqs_cis=None, mask=None)."""

        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.n_heads, self.head_dim = heads, dim // heads
            self.wq = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.wk = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.wv = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.wo = nn.Linear(heads * self.head_dim, dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = (
                f(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
                for f in (self.wq, self.wk, self.wv)
            )
            out = F.scaled_dot_product_attention(q, k, v)
            return self.wo(out.transpose(1, 2).reshape(b, n, -1))

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden_dim: int, multiple_of: int) -> None:
            super().__init__()
            hidden_dim = int(2 * hidden_dim / 3)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
            self.w1 = nn.Linear(dim, hidden_dim, bias=False)
            self.w2 = nn.Linear(hidden_dim, dim, bias=False)
            self.w3 = nn.Linear(dim, hidden_dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class TransformerBlock(nn.Module):
        def __init__(self, dim: int, heads: int, multiple_of: int, eps: float) -> None:
            super().__init__()
            self.attention = Attention(dim, heads)
            self.feed_forward = FeedForward(dim, 4 * dim, multiple_of)
            self.attention_norm = RMSNorm(dim, eps)
            self.ffn_norm = RMSNorm(dim, eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.attention(self.attention_norm(x))
            return h + self.feed_forward(self.ffn_norm(h))

    class Mlp(nn.Module):
        def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(in_features, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, out_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class OneLLMEncoder(nn.Module):
        """The encoder/projection part of OneLLM's ``Transformer`` (model/LLM/onellm.py), same
        attribute names, for the modalities in ``modals`` (the point tokenizer is not built)."""

        def __init__(self, a: dict[str, Any], modals: tuple[str, ...], text: bool = False) -> None:
            super().__init__()
            bad = [m for m in modals if m not in ONELLM_MODALS or m == "point"]
            if bad:
                raise ValueError(
                    f"onellm: cannot build modality heads {bad} (point needs pointnet2)"
                )
            self.arch, self.modals, self.text = dict(a), tuple(modals), bool(text)
            w, d = a["clip_width"], a["llm_dim"]
            if text:
                self.tok_embeddings = nn.Embedding(a["vocab_size"], d)
            self.clip = CLIP(a)
            self.resample_layers = nn.ModuleDict()
            for expert in range(a["num_experts"]):
                self.resample_layers[str(expert)] = nn.ModuleList(
                    [
                        TransformerBlock(w, a["resample_heads"], a["multiple_of"], a["norm_eps"])
                        for _ in range(a["num_resample_layers"])
                    ]  # fmt: skip
                )
            self.conv1 = nn.ModuleDict()
            self.positional_embedding = nn.ParameterDict()
            self.resample_tokens = nn.ParameterDict()
            self.clip_proj1 = nn.ModuleDict()
            self.clip_proj2 = nn.ModuleDict()
            self.routers = nn.ModuleDict()
            self.start_tag = nn.ParameterDict()
            self.end_tag = nn.ParameterDict()
            for m in self.modals:
                if m == "audio":
                    self.conv1[m] = nn.Conv2d(1, w, kernel_size=(16, 16), stride=(10, 10))
                    self.positional_embedding[m] = nn.Parameter(
                        0.02 * torch.randn(a["audio_tokens"] + 1, w)
                    )
                elif m == "fmri":
                    self.conv1[m] = nn.Linear(a["fmri_in"], a["fmri_tokens"] * w)
                    self.positional_embedding[m] = nn.Parameter(
                        0.02 * torch.randn(a["fmri_tokens"] + 1, w)
                    )
                elif m == "imu":
                    self.conv1[m] = nn.Conv1d(
                        a["imu_channels"], w, kernel_size=a["imu_kernel"], bias=False
                    )
                    n = a["imu_length"] - a["imu_kernel"] + 1
                    self.positional_embedding[m] = nn.Parameter(0.02 * torch.randn(n + 1, w))
                self.routers[m] = Mlp(w, w * 4, a["num_experts"])
                self.resample_tokens[m] = nn.Parameter(
                    0.02 * torch.randn(1, a["resample_tokens"], w)
                )
                self.clip_proj1[m] = nn.Sequential(nn.Linear(w, w), nn.LayerNorm(w))
                self.clip_proj2[m] = nn.Sequential(nn.Linear(w, d), nn.LayerNorm(d))
                self.start_tag[m] = nn.Parameter(torch.rand(1, 1, d))
                self.end_tag[m] = nn.Parameter(torch.rand(1, 1, d))

        def owned_prefixes(self) -> list[str]:
            out = ["clip.visual", "resample_layers"] + (["tok_embeddings"] if self.text else [])
            for m in self.modals:
                out += [f"{name}.{m}" for name in ("resample_tokens", "clip_proj1", "clip_proj2",
                                                   "routers", "start_tag", "end_tag")]  # fmt: skip
                if m in OWN_POSITIONS:
                    out += [f"conv1.{m}", f"positional_embedding.{m}"]
            return out

        def tokenize(self, x: torch.Tensor, modal: str) -> torch.Tensor:
            """Frames -> (N, width, tokens) patch/time tokens (OneLLM's encode_image head)."""
            if modal in IMAGE_LIKE:
                x = self.clip.visual.conv1(x)
            elif modal in ("audio", "imu"):
                x = self.conv1[modal](x)
            elif modal == "fmri":
                x = self.conv1[modal](x).reshape(x.size(0), self.arch["clip_width"], -1)
            else:
                raise ValueError(f"onellm: no tokenizer for {modal!r}")
            return x.reshape(x.shape[0], x.shape[1], -1)

        def clip_encode(self, x: torch.Tensor, modal: str) -> torch.Tensor:
            """OneLLM's clip_encode_image: every token after ln_post, no CLIP projection."""
            v = self.clip.visual
            x = x.permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype) + torch.zeros(
                x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
            )
            x = torch.cat([cls, x], dim=1)
            pos = (
                self.positional_embedding[modal]
                if modal in OWN_POSITIONS
                else v.positional_embedding
            )
            x = v.ln_pre(x + pos.to(x.dtype))
            return v.ln_post(v.transformer(x))

        def project(self, feats: torch.Tensor, modal: str) -> torch.Tensor:
            """The universal projection module: (B, L, width) -> (B, resample_tokens, llm_dim)."""
            b = feats.shape[0]
            feats = self.clip_proj1[modal](feats)
            queries = self.resample_tokens[modal]
            feats = torch.cat([queries.repeat(b, 1, 1).to(feats.dtype), feats], dim=1)
            weights = self.routers[modal](feats).sigmoid()
            weights = weights / weights.sum(dim=-1, keepdim=True)
            n = queries.size(1)
            out = 0
            for e in range(self.arch["num_experts"]):
                h = feats
                for layer in self.resample_layers[str(e)]:
                    h = layer(h)
                out = out + h[:, :n] * weights[:, :n, e, None]
            return self.clip_proj2[modal](out)

        def encode(
            self, x: torch.Tensor, modal: str, counts: list[int] | None = None
        ) -> torch.Tensor:
            """Frames of B samples (``counts`` frames each; default one) -> (B, tokens, llm_dim).

            A sample's CLIP tokens are averaged over its frames before the projection, as
            OneLLM's encode_image does over a video's T frames."""
            feats = self.clip_encode(self.tokenize(x, modal), modal)
            if counts is not None and any(c != 1 for c in counts):
                feats = torch.stack([f.mean(dim=0) for f in torch.split(feats, list(counts))])
            return self.project(feats, modal)

    return types.SimpleNamespace(
        OneLLMEncoder=OneLLMEncoder,
        VisionTransformer=VisionTransformer,
        TransformerBlock=TransformerBlock,
        RMSNorm=RMSNorm,
    )
