"""Shared machinery of the foundation-model (FM) experts.

Every FM expert takes the same source keys, which go straight into
:class:`extractors.loading.ModelSpec` (the one loading policy):

* ``model_id`` + ``revision``: a Hugging Face repository at a pinned 40-hex commit
  (``HF_HUB_OFFLINE`` / ``HF_HOME`` / ``HF_HUB_CACHE`` honoured, read at load time);
* ``local_dir``: a folder with the model files (nothing fetched);
* ``random_init: true`` + ``config:``: the same architecture class with seeded random weights,
  for CI and the offline demo (labelled ``offline:<expert>-random-init(...)`` in every cache).

``trust_remote_code`` is refused unless the revision is pinned (``extractors.loading``).

Run-time keys shared by all FM experts: ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto`` =
CUDA when available), ``precision`` (``auto`` = bf16 autocast on a GPU that supports it, else
fp16 on older GPUs, fp32 on CPU; or ``fp32`` / ``bf16`` / ``fp16``), ``batch_size`` (samples
per DataLoader batch and items per forward pass) and ``num_workers`` (decoding processes, see
:mod:`extractors.batching`; not part of the preprocessing hash).

:func:`weights_status` answers "are the weights here?" without downloading or loading anything
(for ``python -m extractors doctor``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Expert
from extractors.cache import config_hash

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SOURCE_KEYS = ("model_id", "revision", "local_dir", "random_init", "config", "trust_remote_code")


class MissingPackage(ImportError):
    """An optional package an FM expert needs is not installed; the message says what to install."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Packages that no extra installs: uni2ts pins torch < 2.5, so it goes in without its deps
# (the `moirai` extra brings its imports; envs/moirai.yaml is its own pinned env).
_SPECIAL_INSTALL = {"uni2ts": "pip install --no-deps uni2ts==2.0.0"}
CONSTRAINTS = "envs/constraints.txt"


def project_extras() -> dict[str, str]:
    """pip name (normalised) -> the project's optional-dependency extra that installs it
    (``""`` for a core dependency), from the installed ``medmix`` metadata, else pyproject.toml."""
    import importlib.metadata as md

    reqs: list[str] = []
    with contextlib.suppress(md.PackageNotFoundError):
        reqs = list(md.requires("medmix") or [])
    out: dict[str, str] = {}
    if reqs:
        for req in reqs:
            name = re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0]
            m = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", req)
            extra = m.group(1) if m else ""
            if not extra:
                out[_norm(name)] = ""  # a core dependency
            elif extra != "test":
                out.setdefault(_norm(name), extra)
        return out
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        import tomllib

        data = tomllib.loads(pyproject.read_text())
    except (ImportError, OSError, ValueError):
        return out
    project = data.get("project", {})
    for extra, deps in (project.get("optional-dependencies") or {}).items():
        if extra == "test":
            continue
        for dep in deps:
            out.setdefault(_norm(re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0]), extra)
    for dep in project.get("dependencies") or []:
        out[_norm(re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0])] = ""
    return out


def install_hint(pip_names: list[str] | tuple[str, ...]) -> str:
    """The command(s) that install ``pip_names`` the project's way: its extras, under the
    constraints (``pip install -c envs/constraints.txt -e ".[vision]"``), rather than bare
    packages; one command per route."""
    extras = project_extras()
    groups: list[str] = []
    core, bare, special = False, [], []
    for name in dict.fromkeys(pip_names):
        key = _norm(name)
        if key in _SPECIAL_INSTALL:
            special.append(_SPECIAL_INSTALL[key])
        elif key in extras:
            if extras[key]:
                groups.append(extras[key])
            else:
                core = True
        else:
            bare.append(name)
    pip = f"pip install -c {CONSTRAINTS}"  # the versions the tests ran with
    cmds = []
    if groups or core:
        sel = ",".join(dict.fromkeys(groups))
        cmds.append(f'{pip} -e ".[{sel}]"' if sel else f"{pip} -e .")
    cmds += [c.replace("pip install", pip, 1) for c in special]
    if bare:
        cmds.append(f"{pip} {' '.join(bare)}")
    return " and ".join(f"`{c}`" for c in cmds)


def missing_package(expert: str, module: str, pip_name: str, extra: str = "") -> MissingPackage:
    return MissingPackage(
        f"expert {expert!r} needs the Python package {pip_name!r} (import {module!r}), which is not "
        f"installed. Install it with {install_hint([pip_name])}{extra}."
    )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values unchanged."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "cpu"


def autocast_dtype(device: str, precision: str) -> Any:
    """The torch dtype to autocast to on ``device`` (None = run in fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not str(device).startswith("cuda") or precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    # auto: bf16 where the GPU has it (Ampere and later), fp16 otherwise
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference(device: str, precision: str = "auto") -> Iterator[None]:
    """``torch.inference_mode`` plus, on a GPU, autocast to bf16/fp16 (see :func:`autocast_dtype`)."""
    import torch

    dtype = autocast_dtype(device, precision)
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type="cuda", dtype=dtype):
                yield


def weights_status(spec: Any, patterns: tuple[str, ...] = ()) -> tuple[str, str]:
    """(state, detail) of a ModelSpec's weights without downloading or loading them.

    state: ``ok`` (found), ``random-init`` (CI stand-in), ``missing`` (detail says how to provide
    them), ``refused`` (policy violation, e.g. remote code without a pinned revision)."""
    from extractors import loading

    if spec.random_init:
        return "random-init", f"seeded random weights ({spec.describe()}); for CI/demo only"
    try:
        loading.check_remote_code(spec)
    except loading.RemoteCodeRefused as exc:
        return "refused", str(exc)
    if spec.local_dir:
        path = Path(spec.local_dir).expanduser()
        if path.is_file():
            return "ok", f"checkpoint file {path}"
        if not path.is_dir():
            return "missing", f"local_dir {path} does not exist. {loading.how_to_provide(spec)}"
        return _folder_status(path, spec, patterns)
    if not spec.model_id:
        return "missing", f"no model source configured. {loading.how_to_provide(spec)}"
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                spec.model_id,
                revision=spec.revision,
                cache_dir=str(loading.hub_cache()),
                local_files_only=True,
            )
        )
    except Exception:
        where = loading.hub_cache() / f"models--{spec.model_id.replace('/', '--')}"
        return (
            "missing",
            f"{spec.model_id}@{spec.revision or 'main'} is not in the hub cache ({where}). "
            f"{loading.how_to_provide(spec)}",
        )
    state, detail = _folder_status(folder, spec, patterns)
    if state == "ok" and not loading.is_pinned(spec.revision):
        detail += f" [revision {spec.revision!r} is not a pinned commit; resolved {folder.name}]"
    return state, detail


def _folder_status(folder: Path, spec: Any, patterns: tuple[str, ...]) -> tuple[str, str]:
    from extractors import loading

    if patterns:
        found = [p for pat in patterns for p in folder.glob(pat)]
        if found:
            return "ok", f"{folder} ({', '.join(sorted({p.name for p in found})[:3])})"
        return "missing", f"{folder} has none of {list(patterns)}. {loading.how_to_provide(spec)}"
    try:
        kind, files = loading.find_weights(folder, spec.expert)
    except loading.WeightsNotFound as exc:
        return "missing", f"{exc}. {loading.how_to_provide(spec)}"
    return "ok", f"{folder} ({kind}: {files[0].name}{' …' if len(files) > 1 else ''})"


class FMExpert(Expert):
    """Base of the FM experts: the loading keys, device/precision and provenance.

    Subclasses set ``model_class`` (a transformers class name, or a label for non-transformers
    models), ``default_model_id``/``default_revision`` and implement ``_load_model`` +
    ``load``/``embed``. ``dim`` is known without loading the model where the architecture is
    configured (random init) or fixed (``known_dim``); otherwise the model's config says."""

    model_class: str = "AutoModel"
    default_model_id: str | None = None
    default_revision: str | None = None
    known_dim: int | None = None
    import_names: tuple[tuple[str, str], ...] = (("torch", "torch"),)  # (module, pip name)

    def __init__(
        self,
        model_id: str | None = None,
        revision: str | None = None,
        local_dir: str | None = None,
        random_init: bool = False,
        config: Mapping[str, Any] | None = None,
        trust_remote_code: bool = False,
        precision: str = "auto",
        batch_size: int = 16,
        device: str = "cpu",
        seed: int = 0,
        num_workers: int | None = None,
        **params: Any,
    ) -> None:
        self.num_workers = None if num_workers is None else int(num_workers)  # decoding processes
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if model_id is None and not local_dir and not random_init:
            model_id, revision = self.default_model_id, revision or self.default_revision
        super().__init__(
            batch_size=batch_size,
            device=device,
            seed=seed,
            model_id=model_id,
            revision=revision,
            local_dir=str(local_dir) if local_dir else None,
            random_init=bool(random_init),
            config=dict(config or {}),
            trust_remote_code=bool(trust_remote_code),
            precision=precision,
            **params,
        )
        self._model: Any = None

    # -- source ---------------------------------------------------------------------------
    def model_spec(self) -> Any:
        from extractors.loading import ModelSpec

        p = self.params
        return ModelSpec(
            expert=self.name,
            model_id=p["model_id"],
            revision=p["revision"],
            local_dir=p["local_dir"],
            random_init=p["random_init"],
            model_class=self.model_class,
            config=dict(p["config"]),
            seed=self.seed,
            trust_remote_code=p["trust_remote_code"],
        )

    @property
    def random_init(self) -> bool:
        return bool(self.params["random_init"])

    @property
    def model_id(self) -> str:
        p = self.params
        if self.random_init:
            return f"offline:{self.registry_name}-random-init({config_hash(p['config'])},seed={self.seed})"
        return str(p["local_dir"] or p["model_id"])

    @property
    def revision(self) -> str | None:
        if self.random_init or self.params["local_dir"]:
            return None
        rev = self.params["revision"]
        if rev:
            return str(rev)
        model = self._model
        return getattr(getattr(model, "config", None), "_commit_hash", None) if model else None

    @property
    def run_device(self) -> str:
        return resolve_device(self.device)

    @property
    def precision(self) -> str:
        return str(self.params["precision"])

    def preprocess_config(self) -> dict[str, Any]:
        cfg = super().preprocess_config()
        cfg.pop("precision", None)  # numerics of the forward pass, not the preprocessing
        return cfg

    # -- model ----------------------------------------------------------------------------
    def _load_model(self) -> Any:
        from extractors.loading import load_model

        return load_model(self.model_spec(), device=self.run_device)

    def get_model(self) -> Any:
        if self._model is None:
            self._model = self._load_model()
            if hasattr(self._model, "eval"):
                self._model.eval()
        return self._model

    def inference(self) -> contextlib.AbstractContextManager[None]:
        return inference(self.run_device, self.precision)

    # -- doctor ---------------------------------------------------------------------------
    def weights_status(self) -> tuple[str, str]:
        return weights_status(self.model_spec())

    def missing_imports(self) -> list[str]:
        """pip names of required packages that are not importable here."""
        return [pip for mod, pip in self.import_names if importlib.util.find_spec(mod) is None]

    @staticmethod
    def to_numpy(t: Any) -> np.ndarray:
        return t.detach().float().cpu().numpy().astype(np.float32)


def forward_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` (the model's forward batch)."""
    size = max(1, int(size))
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
