"""The doctor's checks of one configured expert or component, and the report they fill.

Each check returns a :class:`Check` (``ok``, ``warn``, ``FAIL`` or, for the pin check,
``UNPINNED``) and never downloads or loads a model: **packages** (what the expert imports is
installed; a missing one names the project's extra that installs it), **weights** (where they
come from and whether they are there), **pin** (a hub model has a 40-hex revision) and
**device** (the configured device exists; a model that wants a GPU is not left on the CPU).
The environment and schema checks of the whole config are here too. :mod:`extractors.doctor`
runs them over a config.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extractors.experts.fm_common import install_hint, weights_status
from extractors.loading import hf_home, hub_cache, is_pinned, offline
from medmix.config import ConfigError, validate_config

OK, WARN, FAIL = "ok", "warn", "FAIL"
UNPINNED = "UNPINNED"  # the pin check of a hub model without a 40-hex revision (not a failure)
# What a check's detail says instead of the "three ways to provide the weights", which the
# report prints once, at its end.
HOW_TO_REF = "(how to provide them: see the end of the report)"


@dataclass
class Check:
    state: str  # ok | warn | FAIL
    detail: str


@dataclass
class ExpertReport:
    name: str
    type: str
    kind: str = ""
    model: str = ""
    checks: dict[str, Check] = field(default_factory=dict)
    download: str | None = None  # ``hf download`` arguments when the weights are missing

    @property
    def ready(self) -> bool:
        return all(c.state != FAIL for c in self.checks.values())

    @property
    def unpinned(self) -> bool:
        return any(c.state == UNPINNED for c in self.checks.values())


def error_check(exc: Exception) -> Check:
    """A failed check from an exception (a broken config is reported, never a crash)."""
    return Check(FAIL, f"{type(exc).__name__}: {exc}"[:400])


# -- packages ----------------------------------------------------------------------------------


def installed(dist: str) -> bool:
    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False


def check_packages(expert: Any) -> Check:
    missing: list[str] = []
    for e in _with_inner(expert):
        if callable(getattr(e, "missing_imports", None)):
            missing += e.missing_imports()
        else:
            missing += [d for d in getattr(e, "packages", ()) if not installed(d)]
    return packages_check(sorted(set(missing)))


def packages_check(missing: list[str]) -> Check:
    """``installed``, or a failure naming the ``missing`` pip packages and how to install them."""
    if not missing:
        return Check(OK, "installed")
    return Check(FAIL, f"missing: {', '.join(missing)} (install with {install_hint(missing)})")


def imports_check(imports: tuple[tuple[str, str], ...]) -> Check:
    """The packages check of (module, pip name) imports."""
    return packages_check([pip for mod, pip in imports if importlib.util.find_spec(mod) is None])


def _with_inner(expert: Any) -> list[Any]:
    inner = getattr(expert, "inner", None)
    return [expert, inner] if inner is not None else [expert]


# -- weights and pins --------------------------------------------------------------------------


def weights_check(state: str, detail: str) -> Check:
    """The weights check of a ``weights_status`` answer: found (a warning when the revision is
    not a pinned commit), a CI stand-in or MiniLM's packaged copy (a warning), else a failure."""
    if state == "ok":
        return Check(WARN if "not a pinned commit" in detail else OK, detail)
    if state in ("random-init", "fallback"):
        return Check(WARN, detail)
    return Check(FAIL, detail)


def check_weights(expert: Any) -> Check:
    target = getattr(expert, "inner", None) or expert
    status = getattr(target, "weights_status", None)
    if callable(status):
        try:
            return weights_check(*status())
        except Exception as exc:
            return error_check(exc)
    if getattr(target, "random_init", False) or target.params.get("random_init"):
        return Check(WARN, "seeded random weights (random_init); for CI/demo only")
    if hasattr(target, "model_spec"):  # an offline expert that loads through extractors.loading
        return spec_weights(target.model_spec())
    return Check(OK, "no weights (an offline feature extractor)")


def spec_weights(spec: Any) -> Check:
    """The weights check of a component that loads through extractors.loading (a ModelSpec)."""
    try:
        return weights_check(*weights_status(spec))
    except Exception as exc:
        return error_check(exc)


def hub_spec(expert: Any) -> Any:
    """The ModelSpec of the hub model behind an expert (its inner expert for a slicer/tiler),
    or None when it has none (offline features, random init, a local folder or checkpoint)."""
    target = getattr(expert, "inner", None) or expert
    get = getattr(target, "model_spec", None)
    if not callable(get):
        return None
    try:
        spec = get()
    except Exception:  # a broken config is reported by the other checks
        return None
    return hub_model(spec)


def hub_model(spec: Any) -> Any:
    """``spec`` when it names a hub repository (so it has a pin check), else None."""
    if spec is None or spec.random_init or spec.local_dir or not spec.model_id:
        return None
    return spec


def check_pin(spec: Any) -> Check:
    """``ok`` for a 40-hex revision; ``UNPINNED`` otherwise (whether or not weights are here)."""
    if is_pinned(spec.revision):
        return Check(OK, f"{spec.model_id} pinned at {spec.revision}")
    return Check(
        UNPINNED,
        f"{spec.model_id}: revision {repr(spec.revision) if spec.revision else 'null'} is not a "
        "40-hex commit, so the run is not reproducible; set `revision:` to the commit you downloaded",
    )


def paths_exist(cfg: dict[str, Any], keys: tuple[str, ...]) -> Check:
    missing = [
        f"{k}={cfg.get(k)!r}"
        for k in keys
        if not cfg.get(k) or not Path(str(cfg[k])).expanduser().exists()
    ]
    return Check(FAIL, f"not found: {', '.join(missing)}") if missing else Check(OK, "found")


# -- devices, environment, schema ----------------------------------------------------------------


def cuda_devices() -> tuple[int, list[str], bool]:
    """(number of CUDA devices, a line per device, bf16 support)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return 0, [], False
    if not torch.cuda.is_available():
        return 0, [], False
    n = torch.cuda.device_count()
    names = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB)")
    return n, names, bool(torch.cuda.is_bf16_supported())


def check_device(expert: Any, spec_device: str | None) -> Check:
    n, names, bf16 = cuda_devices()
    device = str(spec_device or getattr(expert, "device", "cpu"))
    needs_gpu = any(getattr(e, "needs_gpu", False) for e in _with_inner(expert))
    if device == "auto":
        device = "cuda" if n else "cpu"
    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= n:
            return Check(FAIL, f"{spec_device or device} requested but {n} CUDA device(s) visible")
        return Check(OK, f"{names[idx]}; autocast {'bf16' if bf16 else 'fp16'}")
    if needs_gpu:
        return Check(WARN, "runs on the CPU; this model wants a GPU (set device: cuda or auto)")
    return Check(OK, "cpu")


def environment() -> dict[str, str]:
    n, names, _ = cuda_devices()
    env = {
        "HF_HOME": str(hf_home()),
        "HF_HUB_CACHE": str(hub_cache()),
        "HF_HUB_OFFLINE": "1" if offline() else "0",
        "cuda": "; ".join(names) if n else "none visible",
    }
    for dist in ("torch", "transformers"):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = "missing"
    return env


def check_schema(cfg: dict[str, Any]) -> Check:
    try:
        validate_config(copy.deepcopy(cfg))
    except ConfigError as exc:
        return Check(FAIL, str(exc))
    return Check(OK, "valid")
