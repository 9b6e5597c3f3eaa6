"""Shared machinery of the foundation-model (FM) experts.

Every FM expert takes the same ten source keys (``model_id``, ``revision``, ``local_dir``,
``random_init``, ``config``, ``trust_remote_code``, ``precision``, ``batch_size``, ``device``,
``seed``), declared once by :class:`~extractors.experts.fm_source.FMSource`, which hands the
loading ones to :class:`extractors.loading.ModelSpec` (the one loading policy). Random-init
models are labelled ``offline:<expert>-random-init(...)`` in every cache. ``num_workers``
(decoding processes, see :mod:`extractors.batching`; not part of the preprocessing hash) is a
run setting of every FM expert too.

:class:`FMExpert` is their base class; the helpers here say what to install when an optional
package is missing (:func:`install_hint`), pick the device and autocast dtype, and
:func:`weights_status` answers "are the weights here?" without downloading or loading anything
(for ``python -m extractors doctor``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from extractors import loading
from extractors.base import Expert
from extractors.experts.fm_source import PRECISIONS, SOURCE_KEYS, FMSource
from medmix.devices import resolve_device  # re-exported: extractors.extract and .batching use it


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
    """Base of the FM experts: the model source (:class:`FMSource`), device/precision and
    provenance.

    Subclasses set ``model_class`` (a transformers class name, or a label for non-transformers
    models), ``default_model_id``/``default_revision``/``default_batch_size`` and, when they do
    not take all ten source keys, ``source_keys``; they implement ``_load_model`` +
    ``load``/``embed``. A subclass's ``__init__`` takes its own keys plus ``**config`` (the source
    keys): it calls ``self.check_source_keys(config)`` first, checks its own keys, and passes
    ``config`` on, from which the source is built once. ``dim`` is known without loading the
    model where the architecture is configured (random init) or fixed (``known_dim``); otherwise
    the model's config says."""

    model_class: str = "AutoModel"
    default_model_id: str | None = None
    default_revision: str | None = None
    default_batch_size: int = 16
    source_keys: tuple[str, ...] = SOURCE_KEYS  # the source keys this expert's config may set
    known_dim: int | None = None
    import_names: tuple[tuple[str, str], ...] = (("torch", "torch"),)  # (module, pip name)

    def __init__(
        self,
        source: FMSource | Mapping[str, Any],
        num_workers: int | None = None,
        **params: Any,
    ) -> None:
        """``source``: the expert's source, or the source keys of its config (checked by the
        subclass with :meth:`check_source_keys` before its own keys)."""
        self.num_workers = None if num_workers is None else int(num_workers)  # decoding processes
        if not isinstance(source, FMSource):
            source = self.source_from_config(source)
        super().__init__(
            batch_size=source.batch_size,
            device=source.device,
            seed=source.seed,
            **source.params(),
            **params,
        )
        self._model: Any = None

    @classmethod
    def check_source_keys(cls, config: Mapping[str, Any], also: tuple[str, ...] = ()) -> None:
        """Refuse a config key that is neither a source key this expert takes (``source_keys``)
        nor in ``also``, as Python refuses an unexpected keyword argument: an expert's
        ``__init__`` calls it first, before checking its own keys' values."""
        FMSource.check_keys(config, (*cls.source_keys, *also), cls.__init__.__qualname__)

    @classmethod
    def source_from_config(cls, config: Mapping[str, Any]) -> FMSource:
        """The expert's :class:`FMSource` from the source keys of its config, with its default
        batch size and, when the config names no source, its default hub model."""
        source = FMSource.from_config(config, {"batch_size": cls.default_batch_size})
        return cls.default_source(source)

    @classmethod
    def default_source(cls, source: FMSource) -> FMSource:
        """The source to use when the config names none: the class's default hub model."""
        return source.or_default(cls.default_model_id, cls.default_revision)

    # -- source ---------------------------------------------------------------------------
    @property
    def source(self) -> FMSource:
        """The model source as recorded in ``params`` (the record hashed into the caches)."""
        return FMSource.from_params(self.params, self.batch_size, self.device, self.seed)

    def model_spec(self) -> loading.ModelSpec:
        return self.source.model_spec(self.name, self.model_class)

    @property
    def random_init(self) -> bool:
        return bool(self.params["random_init"])

    @property
    def model_id(self) -> str:
        return self.source.label(self.registry_name)

    @property
    def revision(self) -> str | None:
        if self.random_init or self.params["local_dir"]:
            return None
        rev = self.params["revision"]
        if rev:
            return str(rev)
        model = self._model
        return getattr(getattr(model, "config", None), "_commit_hash", None) if model else None

    def configured_dim(self, key: str, from_model: Callable[[Any], Any]) -> int:
        """The embedding dim: ``config[key]`` of a random-init architecture that sets it (known
        without building the model), else ``from_model(model)`` of the loaded model."""
        cfg = self.params["config"]
        if self.random_init and key in cfg:
            return int(cfg[key])
        return int(from_model(self.get_model()))

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
        return loading.load_model(self.model_spec(), device=self.run_device)

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
