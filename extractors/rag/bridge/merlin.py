"""The ``merlin`` bridge: Merlin report generation for CT volumes, assembled from merlin-vlm's
classes without the downloads in their constructors."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extractors import loading
from extractors.loading import LoadingError, ModelSpec, load_state_dict, resolve_dir, resolve_file
from extractors.rag.bridge.generator import ReportGenerator
from extractors.rag.bridge.registry import register_bridge

MERLIN_ORGAN_SYSTEMS = (
    "lower thorax",
    "liver",
    "gallbladder",
    "spleen",
    "pancreas",
    "adrenal glands",
    "kidneys",
    "bowel",
    "peritoneum",
    "pelvic",
    "circulatory",
    "lymph nodes",
    "musculoskeletal",
)
# RadLLaMA's tokenizer and config only: its weights are part of Merlin's checkpoint.
MERLIN_DECODER_FILES = ("*.json", "*.model", "*.txt", "*.tiktoken")


def _bare_module(cls: type) -> Any:
    """An instance of a torch module class whose own ``__init__`` is not run (Merlin's
    constructors download weights); the caller sets the submodules ``__init__`` would set."""
    import torch

    obj = cls.__new__(cls)
    torch.nn.Module.__init__(obj)
    return obj


def build_merlin_report_model(
    decoder_dir: str | os.PathLike, trust_remote_code: bool, lora: Mapping[str, Any]
) -> Any:
    """merlin-vlm's ``Clip3DForTextGeneration``, assembled from its own classes without the
    downloads in their constructors.

    What merlin-vlm 0.0.7 builds, and how here: ``ModifiedImageEncoder`` wraps an I3ResNet
    inflated from ``torchvision.models.resnet152(pretrained=True)`` (an ImageNet download) —
    here ``weights=None``; ``TextDecoder`` calls ``from_pretrained("StanfordAIMI/RadLLaMA-7b")``
    for the tokenizer (remote code on) and the 7B weights — here the tokenizer and config come
    from ``decoder_dir`` (resolved under the loading policy) and the LLaMA is built from its
    config with empty weights, then wrapped in Merlin's LoRA; ``Adapter`` maps the image features
    to the decoder width. Every weight then comes from Merlin's checkpoint
    (``load_merlin_state``), as in merlin-vlm, whose strict load covers the whole model.
    """
    import torchvision
    from accelerate import init_empty_weights
    from merlin.models import i3res
    from merlin.models import radiology_report_generation as rrg
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    i3 = i3res.I3ResNet(
        torchvision.models.resnet152(weights=None),
        class_nb=1692,
        conv_class=True,
        ImageEmbedding=True,
        PhenotypeCls=False,
    )
    encoder = _bare_module(rrg.ModifiedImageEncoder)
    encoder.vision_model = rrg.ModifiedI3ResNet(i3)

    decoder = _bare_module(rrg.TextDecoder)
    decoder.tokenizer = AutoTokenizer.from_pretrained(
        str(decoder_dir), use_fast=True, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if decoder.tokenizer.pad_token_id is None:  # one prompt per call: padding never applies
        decoder.tokenizer.pad_token = decoder.tokenizer.eos_token
    config = AutoConfig.from_pretrained(
        str(decoder_dir), trust_remote_code=trust_remote_code, local_files_only=True
    )
    with init_empty_weights():
        llm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        decoder.text_decoder = get_peft_model(
            llm, LoraConfig(bias="none", task_type="CAUSAL_LM", **dict(lora))
        )

    model = _bare_module(rrg.Clip3DForTextGeneration)
    model.encode_image = encoder
    model.decode_text = decoder
    model.adapter = rrg.Adapter(int(i3.layer4[-1].conv3.out_channels), int(config.hidden_size))
    return model


def load_merlin_state(model: Any, state: Mapping[str, Any], path: Path, expert: str) -> None:
    """Every tensor of ``model`` from ``state`` (assigned, so the empty decoder weights take the
    checkpoint's storage); a key mismatch or a weight left empty is a ``LoadingError``."""
    result = model.load_state_dict(dict(state), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise LoadingError(
            f"expert {expert!r}: {path} does not match Merlin's report-generation model "
            f"({len(result.missing_keys)} missing, e.g. {result.missing_keys[:3]}; "
            f"{len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[:3]}). "
            "Use the report-generation checkpoint with the decoder config and LoRA settings it "
            "was trained with."
        )
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise LoadingError(f"expert {expert!r}: no weights for {empty[:3]} in {path}")


@register_bridge("merlin")
class MerlinBridge(ReportGenerator):
    """Merlin report generation (stanfordmimi/Merlin, ``merlin-vlm``) for CT volumes.

    merlin-vlm's ``Merlin(RadiologyReport=True)`` cannot take a local checkpoint and would
    download the checkpoint, RadLLaMA-7b and an ImageNet ResNet-152 on its own. This bridge uses
    merlin-vlm's classes but builds the model itself (``build_merlin_report_model``):

    * the checkpoint (``checkpoint`` in the ``stanfordmimi/Merlin`` snapshot at ``revision``, or
      ``local_dir`` = the file or its folder) is resolved under the loading policy and read by
      ``load_state_dict`` (safetensors, else ``torch.load(weights_only=True)``);
    * the text decoder's tokenizer and config come from ``decoder`` (``model_id`` +
      ``revision`` or ``local_dir``; only config and tokenizer files are fetched, the weights are
      in Merlin's checkpoint); its ``trust_remote_code`` is off unless ``decoder`` turns it on
      with a pinned revision;
    * with ``HF_HUB_OFFLINE=1`` both are read from the hub cache only; nothing else is fetched.

    Volumes go through Merlin's own preprocessing transform; the report is generated per organ
    system with Merlin's prompts (greedy, its stop token) and joined.
    """

    DEFAULTS = {
        "model_id": "stanfordmimi/Merlin",
        "revision": None,
        "checkpoint": "resnet_gpt2_best_stanford_report_generation_average_mtl.pt",
        "decoder": {"model_id": "StanfordAIMI/RadLLaMA-7b", "revision": None},
        "lora": {"r": 512, "lora_alpha": 16, "lora_dropout": 0.1},  # merlin-vlm's TextDecoder
        "dtype": None,
        "max_new_tokens": 128,
        "repetition_penalty": 1.2,
        "stop_token_id": 48134,  # "###" in RadLLaMA's vocabulary (Merlin's demo)
        "organ_systems": list(MERLIN_ORGAN_SYSTEMS),
    }

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        cfg = dict(cfg)
        merged = {**self.DEFAULTS, **cfg}
        for key in ("decoder", "lora"):
            merged[key] = {**self.DEFAULTS[key], **dict(cfg.get(key) or {})}
        super().__init__(merged, device)
        self.spec = ModelSpec.from_config("rag/bridge/merlin", self.cfg)
        self.decoder_spec = ModelSpec.from_config(
            "rag/bridge/merlin/decoder", self.cfg["decoder"], model_class="AutoModelForCausalLM"
        )
        self._model: Any = None

    def describe(self) -> str:
        return f"{self.spec.describe()} + decoder {self.decoder_spec.describe()}"

    def checkpoint_path(self) -> Path:
        return resolve_file(self.spec, str(self.cfg["checkpoint"]))

    def decoder_dir(self) -> tuple[Path, bool]:
        """The folder with the decoder's config and tokenizer, and its trust_remote_code."""
        trust = loading.check_remote_code(self.decoder_spec)
        patterns = [*MERLIN_DECODER_FILES, *(["*.py"] if trust else [])]
        return resolve_dir(self.decoder_spec, allow_patterns=patterns), trust

    def load(self) -> None:
        if self._model is not None:
            return
        ckpt = self.checkpoint_path()
        folder, trust = self.decoder_dir()
        try:
            import merlin.models.radiology_report_generation  # noqa: F401
        except ImportError as exc:
            raise LoadingError(
                f"expert {self.spec.expert!r}: the merlin-vlm package is not installed "
                "(pip install merlin-vlm; envs/rag.yaml pins it)"
            ) from exc
        state = load_state_dict(ckpt, expert=self.spec.expert)
        model = build_merlin_report_model(folder, trust, self.cfg["lora"])
        load_merlin_state(model, state, ckpt, self.spec.expert)
        if self.cfg.get("dtype"):
            import torch

            model = model.to(getattr(torch, self.cfg["dtype"]))
        self._model = model.eval().to(self.device)

    @staticmethod
    def preprocess(path: str | os.PathLike) -> Any:
        """Merlin's transform (``merlin.data.monai_transforms.ImageTransforms``: RAS, 1.5 × 1.5 ×
        3 mm, HU [-1000, 1000] -> [0, 1], pad/crop to 224 × 224 × 160) as a (1, 1, X, Y, Z) batch.

        Applied directly rather than through merlin's ``DataLoader``, whose cache files are read
        back with ``torch.load(weights_only=False)``.
        """
        import torch
        from merlin.data.monai_transforms import ImageTransforms

        image = ImageTransforms({"image": str(path)})["image"]
        if hasattr(image, "as_tensor"):  # monai MetaTensor -> plain tensor
            image = image.as_tensor()
        return torch.as_tensor(image).unsqueeze(0)

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        stop_id = int(self.cfg["stop_token_id"])

        class _StopAt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return input_ids[:, -1] == stop_id

        self.load()
        model = self._model
        dtype = next(model.encode_image.parameters()).dtype
        out: list[str | BaseException] = []
        for path in paths:
            try:
                image = self.preprocess(path).to(self.device, dtype)
                lines = []
                with torch.inference_mode():
                    # Clip3DForTextGeneration.generate, with the image encoded once per volume
                    feats = model.adapter(model.encode_image(image))
                    for organ in self.cfg["organ_systems"]:
                        gen = model.decode_text.generate(
                            feats,
                            [f"Generate a radiology report for {organ}###\n"],
                            do_sample=False,
                            num_beams=1,
                            repetition_penalty=float(self.cfg["repetition_penalty"]),
                            max_new_tokens=int(self.cfg["max_new_tokens"]),
                            stopping_criteria=StoppingCriteriaList([_StopAt()]),
                        )
                        lines.append(f"{organ}: {str(gen[0]).split('###')[-1].strip()}")
                out.append(" ".join(lines))
            except Exception as exc:  # one bad volume never stops the run
                out.append(exc)
        return out
