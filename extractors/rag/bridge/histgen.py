"""The ``histgen`` bridge: HistGen report generation for whole-slide images, from pre-extracted
patch features."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extractors import loading
from extractors.base import SampleError
from extractors.loading import LoadingError, load_state_dict
from extractors.rag.bridge.generator import ReportGenerator
from extractors.rag.bridge.registry import register_bridge


@register_bridge("histgen")
class HistGenBridge(ReportGenerator):
    """HistGen (MICCAI 2024, github.com/dddavid4real/HistGen) for whole-slide images.

    HistGen generates from pre-extracted patch features (1024-d DINOv2 ViT-L, its CLAM
    pipeline), one ``{features_dir}/{slide stem}.pt`` tensor per slide. Needs a checkout of the
    HistGen code at a pinned commit (``repo_dir``), the checkpoint (``checkpoint``, loaded with
    ``weights_only=True``; HistGen's own ``model_best.pth`` files also pickle optimiser state and
    must be converted to a plain state dict first) and the annotation file that defines its
    vocabulary (``ann_path``).
    """

    ARGS = {
        "dataset_name": "wsi_report",
        "max_seq_length": 100,
        "threshold": 10,
        "d_model": 512,
        "d_ff": 512,
        "d_vf": 512,
        "num_heads": 8,
        "num_layers": 3,
        "dropout": 0.1,
        "logit_layers": 1,
        "bos_idx": 0,
        "eos_idx": 0,
        "pad_idx": 0,
        "use_bn": 0,
        "drop_prob_lm": 0.5,
        "topk": 512,
        "cmm_size": 2048,
        "cmm_dim": 512,
        "region_size": 96,
        "prototype_num": 512,
        "sample_method": "beam_search",
        "beam_size": 3,
        "temperature": 1.0,
        "sample_n": 1,
        "group_size": 1,
        "output_logsoftmax": 1,
        "decoding_constraint": 0,
        "block_trigrams": 1,
        "visual_extractor": "resnet101",
        "visual_extractor_pretrained": False,
        "model_name": "histgen",
        "n_gpu": 0,
    }

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__(dict(cfg), device)
        self._model: Any = None

    def describe(self) -> str:
        return f"histgen:{self.cfg.get('repo_dir')}@{self.cfg.get('commit', 'unpinned')}:{self.cfg.get('checkpoint')}"

    def load(self) -> None:
        if self._model is not None:
            return

        def need(key: str, what: str) -> Path:
            value = self.cfg.get(key)
            if not value or not Path(value).expanduser().exists():
                raise LoadingError(
                    f"expert 'rag/bridge/histgen': {what} not found ({key}: {value!r}). Clone "
                    "https://github.com/dddavid4real/HistGen at a pinned commit, download its released "
                    "checkpoint, convert it to a plain state dict (safetensors), and set repo_dir, "
                    "checkpoint, ann_path and features_dir in rag.bridges.slide"
                )
            return Path(value).expanduser()

        ckpt = need("checkpoint", "checkpoint")
        repo = need("repo_dir", "HistGen code checkout")
        ann = need("ann_path", "annotation file (defines the vocabulary)")
        need("features_dir", "patch-feature folder")
        state = load_state_dict(ckpt, expert="rag/bridge/histgen")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if str(repo) not in sys.path:
            sys.path.insert(0, str(repo))
        from models.histgen_model import HistGenModel  # type: ignore[import-not-found]
        from modules.tokenizers import Tokenizer  # type: ignore[import-not-found]

        for cls in (HistGenModel, Tokenizer):  # HistGen's packages are the generic models/modules
            origin = Path(inspect.getfile(cls)).resolve()
            if not origin.is_relative_to(repo.resolve()):
                raise LoadingError(
                    f"expert 'rag/bridge/histgen': {cls.__name__} was imported from {origin}, not "
                    f"from the HistGen checkout {repo} (another `models`/`modules` package is loaded)"
                )

        args = argparse.Namespace(
            **{
                **self.ARGS,
                **self.cfg.get("args", {}),
                "ann_path": str(ann),
                "image_dir": str(self.cfg["features_dir"]),
            }
        )
        tokenizer = Tokenizer(args)
        model = HistGenModel(args, tokenizer)
        model.load_state_dict(state)
        self._model = model.eval().to(self.device)

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:
        import torch

        self.load()
        feats_dir = Path(self.cfg["features_dir"]).expanduser()
        out: list[str | BaseException] = []
        for path in paths:
            try:
                stem = Path(path).name.split(".")[0]
                feats_file = feats_dir / f"{stem}.pt"
                if not feats_file.is_file():
                    raise SampleError(f"no patch features {feats_file} for slide {Path(path).name}")
                feats = loading.load_state_dict(feats_file, expert="rag/bridge/histgen")
                with torch.inference_mode():
                    ids = self._model(
                        torch.as_tensor(feats).float().unsqueeze(0).to(self.device), mode="sample"
                    )
                out.append(self._model.tokenizer.decode_batch(ids.cpu().numpy())[0])
            except Exception as exc:
                out.append(exc)
        return out
