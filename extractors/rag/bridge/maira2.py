"""The ``maira2`` bridge: MAIRA-2 findings generation for chest X-rays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors import loading
from extractors.loading import ModelSpec, resolve_dir
from extractors.rag.bridge.generator import ReportGenerator
from extractors.rag.bridge.registry import register_bridge


@register_bridge("maira2")
class Maira2Bridge(ReportGenerator):
    """MAIRA-2 (microsoft/maira-2): findings generation for a chest X-ray, no grounding.

    MAIRA-2's processor and model classes are code in its hub repository, so the bridge needs
    ``trust_remote_code: true`` in its own config (``rag.bridges.image``). Nothing turns it on by
    default, and the loading policy honours it only with a pinned 40-hex ``revision`` (the
    default below is one; an unpinned revision is refused before anything is read). The
    modality's image fills the processor's ``current_frontal`` slot, the one image it requires:
    each modality is bridged on its own image, so a lateral-view modality is reported from its
    lateral image alone, and a missing other view never blocks this modality's bridge.
    """

    DEFAULTS = {
        "model_id": "microsoft/maira-2",
        "revision": "795a2b1cd4a310624b4e3d14b5a23e41fd273deb",
        "model_class": "AutoModelForCausalLM",
        "max_new_tokens": 300,
    }

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__({**self.DEFAULTS, **dict(cfg)}, device)
        self.spec = ModelSpec.from_config("rag/bridge/maira2", self.cfg)
        self._model: Any = None
        self._processor: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        # looked up on the module at call time, so a test can replace loading.load_model
        if not self.spec.trust_remote_code:
            raise loading.RemoteCodeRefused(
                f"expert {self.spec.expert!r}: MAIRA-2's processor and model are code in its hub "
                f"repository ({self.spec.model_id}); review that code at revision "
                f"{self.spec.revision} and opt in with `trust_remote_code: true` in this bridge's "
                "config (rag.bridges.<modality>). Remote code runs only at a pinned commit."
            )
        trust = loading.check_remote_code(self.spec)  # refuses an unpinned revision
        import torch
        from transformers import AutoProcessor

        dtype = getattr(torch, self.cfg["dtype"]) if self.cfg.get("dtype") else None
        model = loading.load_model(self.spec, device=self.device, dtype=dtype)
        folder = resolve_dir(self.spec, allow_patterns=loading.model_file_patterns(trust))
        self._processor = AutoProcessor.from_pretrained(
            str(folder), trust_remote_code=trust, local_files_only=True
        )
        self._model = model

    def _image(self, path: Path) -> Any:
        # imported here: the image reader pulls in Pillow, which importing the bridges must not
        from PIL import Image

        from extractors.readers.images import read_image, to_rgb

        arr = to_rgb(read_image(path))
        return Image.fromarray((arr * 255).round().astype(np.uint8))

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:
        import torch

        self.load()
        dtype = getattr(torch, self.cfg["dtype"]) if self.cfg.get("dtype") else None
        out: list[str | BaseException] = []
        for path in paths:
            try:
                inputs = self._processor.format_and_preprocess_reporting_input(
                    current_frontal=self._image(path),
                    current_lateral=None,
                    prior_frontal=None,
                    indication=None,
                    technique=None,
                    comparison=None,
                    prior_report=None,
                    get_grounding=False,
                    return_tensors="pt",
                ).to(self.device)
                if dtype is not None:
                    inputs = inputs.to(dtype)  # floating tensors only (pixel values)
                with torch.inference_mode():
                    ids = self._model.generate(
                        **inputs, max_new_tokens=int(self.cfg["max_new_tokens"]), use_cache=True
                    )
                n = inputs["input_ids"].shape[-1]  # the prompt; only the continuation is the report
                decoded = self._processor.decode(ids[0][n:], skip_special_tokens=True).lstrip()
                out.append(
                    plain_report(
                        self._processor.convert_output_to_plaintext_or_grounded_sequence(decoded)
                    )
                )
            except Exception as exc:  # one bad image never stops the run
                out.append(exc)
        return out


def plain_report(result: Any) -> str:
    """MAIRA-2's parsed output as plain text: a string as is; a grounded sequence (a list of
    ``(phrase, boxes)``) as its phrases, without the boxes."""
    if isinstance(result, str):
        return result
    return " ".join(str(item[0]).strip() for item in result)
