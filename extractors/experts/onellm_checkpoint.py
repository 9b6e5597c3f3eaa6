"""Reading the part of a OneLLM checkpoint that the embedding expert owns.

The release checkpoint's keys carry the ``llma.`` prefix of ``model/meta.py``'s ``MetaModel``
(stripped, as is ``module.``); the subset the expert owns — ``clip.visual.*``,
``resample_layers.*`` and, for the modalities it builds, ``conv1.<m>``,
``positional_embedding.<m>``, ``resample_tokens.<m>``, ``clip_proj1.<m>``, ``clip_proj2.<m>``,
``routers.<m>``, ``start_tag.<m>``, ``end_tag.<m>`` (and ``tok_embeddings`` for notes) — must
match the built model exactly (names and shapes), else the load fails naming the missing /
unexpected keys. Everything else (LLaMA's ``layers.*``, ``norm``, ``output``; the CLIP text-tower
remnants ``clip.token_embedding`` …; other modalities' heads) is ignored. Safetensors files are
read tensor by tensor (only the owned ones); other checkpoints go through the project's
``torch.load(weights_only=True)`` policy (:func:`extractors.loading.load_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extractors.loading import LoadingError, load_state_dict

WEIGHT_PATTERNS = ("*.json", "*.safetensors", "*.pth", "*.pt", "*.bin", "*.model")
LLM_PREFIXES = ("llma.", "module.")


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
                raise LoadingError(f"expert {expert!r}: {f} does not hold a state dict")
            subset.update(select_owned(model, state))
            del state
    return subset
