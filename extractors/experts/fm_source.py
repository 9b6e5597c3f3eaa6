"""The model source of a foundation-model (FM) expert: one frozen record of ten config keys.

Every FM expert is configured with the same ten keys, which :class:`FMSource` declares once,
with their defaults and their validation:

* where the model comes from, handed to :class:`extractors.loading.ModelSpec` (the one loading
  policy): ``model_id`` + ``revision`` (a Hugging Face repository at a pinned 40-hex commit;
  ``HF_HUB_OFFLINE`` / ``HF_HOME`` / ``HF_HUB_CACHE`` are read at load time), ``local_dir`` (a
  folder with the model files; nothing is fetched), or ``random_init: true`` + ``config:`` (the
  same architecture with seeded random weights, for CI and the offline demo);
  ``trust_remote_code`` is refused unless the revision is pinned (``extractors.loading``);
* how it runs: ``precision`` (``auto`` = bf16 autocast on a GPU that supports it, else fp16 on
  older GPUs, fp32 on CPU; or ``fp32`` / ``bf16`` / ``fp16``), ``batch_size`` (samples per
  DataLoader batch and items per forward pass), ``device`` (``cpu``, ``cuda``, ``cuda:N`` or
  ``auto`` = CUDA when available) and ``seed``.

An expert refuses unknown keys first (:meth:`FMSource.check_keys`; an expert class may take only
some of the keys), builds its source once from its config (:meth:`FMSource.from_config`, with
its own default model and batch size), records it in its ``params`` (hashed into the cache
metadata, ``precision`` excepted) and reads it back as ``expert.source``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extractors.cache import config_hash
from extractors.loading import ModelSpec

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The keys recorded in an expert's params (batch_size, device and seed are Expert attributes).
SOURCE_PARAMS = (
    "model_id",
    "revision",
    "local_dir",
    "random_init",
    "config",
    "trust_remote_code",
    "precision",
)
SOURCE_KEYS = (*SOURCE_PARAMS, "batch_size", "device", "seed")
# The keys of an expert whose model code is its package's or this project's, never code from the
# hub repository: such an expert takes no ``trust_remote_code``.
SOURCE_KEYS_NO_REMOTE_CODE = tuple(k for k in SOURCE_KEYS if k != "trust_remote_code")


@dataclass(frozen=True)
class FMSource:
    """Where an FM expert's model comes from and how it runs (the ten source keys)."""

    model_id: str | None = None
    revision: str | None = None
    local_dir: str | None = None
    random_init: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    precision: str = "auto"
    batch_size: int = 16
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        normal = {
            "local_dir": str(self.local_dir) if self.local_dir else None,
            "random_init": bool(self.random_init),
            "config": dict(self.config or {}),
            "trust_remote_code": bool(self.trust_remote_code),
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
        }
        for key, value in normal.items():
            object.__setattr__(self, key, value)

    @staticmethod
    def check_keys(cfg: Mapping[str, Any], accepted: tuple[str, ...], owner: str) -> None:
        """Refuse a config key that is not ``accepted``, with the TypeError Python raises for an
        unexpected keyword argument of ``owner`` (an expert's ``__init__``)."""
        for key in cfg:
            if key not in accepted:
                raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}")

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
    ) -> FMSource:
        """The source a config sets (its source keys), the rest from ``defaults`` and then the
        class defaults; validated."""
        return cls(**{**(defaults or {}), **cfg})

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], batch_size: int, device: str, seed: int
    ) -> FMSource:
        """The source recorded in an expert's ``params`` and run attributes."""
        return cls(
            **{k: params[k] for k in SOURCE_PARAMS},
            batch_size=batch_size,
            device=device,
            seed=seed,
        )

    @property
    def configured(self) -> bool:
        """Whether the config names a source at all (a hub id, a local folder or random init)."""
        return self.model_id is not None or bool(self.local_dir) or self.random_init

    def or_default(self, model_id: str | None, revision: str | None) -> FMSource:
        """This source, or the hub model ``model_id`` (at ``revision`` unless the config pins
        another) when the config names no source."""
        if self.configured:
            return self
        return dataclasses.replace(self, model_id=model_id, revision=self.revision or revision)

    def params(self) -> dict[str, Any]:
        """The keys an expert records in its ``params``, in their documented order."""
        return {k: getattr(self, k) for k in SOURCE_PARAMS}

    def label(self, expert_type: str) -> str:
        """The ``model_id`` of the cache metadata: the local folder or hub id, or for random
        init ``offline:<type>-random-init(<config hash>,seed=<seed>)``."""
        if self.random_init:
            return f"offline:{expert_type}-random-init({config_hash(self.config)},seed={self.seed})"
        return str(self.local_dir or self.model_id)

    def model_spec(self, expert: str, model_class: str) -> ModelSpec:
        """The :class:`~extractors.loading.ModelSpec` that loads this source."""
        return ModelSpec(
            expert=expert,
            model_id=self.model_id,
            revision=self.revision,
            local_dir=self.local_dir,
            random_init=self.random_init,
            model_class=model_class,
            config=dict(self.config),
            seed=self.seed,
            trust_remote_code=self.trust_remote_code,
        )
