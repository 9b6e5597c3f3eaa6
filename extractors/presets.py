"""Check the config's expert presets against the expert classes before any work.

A preset (``experts: {name: {type: <registered expert>, **params}}``) passes the config schema
whatever its parameters are: the schema cannot know each expert's constructor. This module
checks them against the registered class, so that a misspelt parameter or an impossible
value is a one-line :class:`~medmix.config.ConfigError` naming the preset and the parameter
when a job starts (``python -m extractors extract``, ``python -m extractors doctor``), not a
``TypeError`` after a model was loaded or a ``ValueError`` after fitting.

* Parameters: the keyword parameters of the class's ``__init__`` and, through ``**kwargs``,
  those of its bases up to :class:`~extractors.base.Expert`; a foundation-model expert's
  ``**config`` holds its model-source keys (``source_keys``).
* Values: read from the signature's annotations. An ``int`` parameter (``int`` or
  ``int | None``) must be an integer, and at least 1 (a count or a size: ``n_components``,
  ``batch_size``, ``k_slices``, ``max_tiles`` …) unless it is a seed, a worker count or a
  ``min_*`` threshold (at least 0). A class may declare other bounds in a ``param_bounds``
  class attribute (``{"name": (low, high)}``, ``None`` for an open end).
* Then the preset is built (no model is loaded: construction only records the settings), so
  checks an expert's constructor makes itself (a precision name, a pooling mode) are reported
  the same way.

Torch-free: it imports the registry and the expert modules, which import no torch.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

from extractors.base import Expert
from extractors.registry import build_from_spec, config_presets, expert_class, list_experts
from medmix.config import RAG_TYPE, ConfigError, expert_closure

AT_LEAST_ZERO = ("seed", "num_workers")  # ints that may be 0; so may ``min_*`` thresholds
Bounds = tuple[float | None, float | None]


def _init_params(klass: type) -> list[inspect.Parameter] | None:
    init = vars(klass).get("__init__")
    if init is None:
        return None
    return list(inspect.signature(init).parameters.values())[1:]


def _hints(klass: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(vars(klass)["__init__"])
    except Exception:  # an annotation that does not evaluate here: no value check from it
        return {}


def signature_params(cls: type[Expert]) -> dict[str, Any]:
    """name -> annotation of every parameter a preset of ``cls`` may set."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        params = _init_params(klass)
        if params is None or klass is object:
            continue
        required = [p for p in params if p.default is p.empty and p.kind <= p.POSITIONAL_OR_KEYWORD]
        if required:  # takes the config as one argument (an FM expert's model source)
            break
        hints = _hints(klass)
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                out.setdefault(p.name, hints.get(p.name, p.annotation))
        if klass is Expert or not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    base = _hints(Expert)  # batch_size, device, seed: every expert's run parameters
    for key in getattr(cls, "source_keys", ()):
        out.setdefault(key, base.get(key, inspect.Parameter.empty))
    return out


def _int_annotation(annotation: Any) -> tuple[bool, bool]:
    """(is an integer parameter, may be None)."""
    if isinstance(annotation, str):  # an annotation left unevaluated
        words = {w.strip() for w in annotation.split("|")}
        return words in ({"int"}, {"int", "None"}), "None" in words
    if annotation is int:
        return True, False
    args = typing.get_args(annotation)
    if args and set(args) == {int, type(None)}:
        return True, True
    return False, False


def param_bounds(cls: type[Expert], params: Mapping[str, Any]) -> dict[str, Bounds]:
    """name -> (low, high) for the integer parameters, then the class's ``param_bounds``."""
    out: dict[str, Bounds] = {}
    for name, annotation in params.items():
        if _int_annotation(annotation)[0]:
            zero_ok = name in AT_LEAST_ZERO or name.startswith("min_")
            out[name] = (0 if zero_ok else 1, None)
    out.update(getattr(cls, "param_bounds", {}) or {})
    return out


def _check_value(
    preset: str, name: str, value: Any, annotation: Any, bounds: Bounds | None
) -> None:
    is_int, nullable = _int_annotation(annotation)
    if value is None:
        if is_int and not nullable:
            raise ConfigError(f"experts.{preset}.{name}: must be an integer, got null")
        return
    if is_int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"experts.{preset}.{name}: must be an integer, got {value!r}")
    if bounds is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    low, high = bounds
    if low is not None and value < low:
        raise ConfigError(f"experts.{preset}.{name}: must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"experts.{preset}.{name}: must be <= {high}, got {value!r}")


def check_preset(name: str, spec: Any, experts: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` for a preset the expert class cannot take."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"experts.{name}: a preset is a mapping {{type: ..., params}}")
    type_name = str(spec.get("type", name))
    if type_name == RAG_TYPE:  # built by the rag rules from the rag: section
        return
    try:
        cls = expert_class(type_name)
    except KeyError:
        raise ConfigError(
            f"experts.{name}.type: {type_name!r} is not a registered expert; registered: "
            f"{', '.join(list_experts())}"
        ) from None
    params = signature_params(cls)
    bounds = param_bounds(cls, params)
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in params:
            raise ConfigError(
                f"experts.{name}: unknown parameter {key!r} for expert type {type_name!r}; "
                f"accepted: {', '.join(sorted(params))}"
            )
        _check_value(name, key, value, params[key], bounds.get(key))
    with config_presets(experts):  # a wrapper's inner expert is a preset name
        try:
            build_from_spec(name, dict(spec))
        except (TypeError, ValueError, KeyError) as exc:
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ConfigError(f"experts.{name} (type {type_name!r}): {reason}") from exc


def check_presets(cfg: Mapping[str, Any], names: list[str] | None = None) -> None:
    """Check the presets ``names`` and those they reference (default: every preset)."""
    experts = dict(cfg.get("experts") or {})
    todo = list(experts) if names is None else names
    seen: dict[str, Any] = {}
    for n in todo:
        if n not in experts:
            continue
        for name, spec in [(n, experts[n])]:
            check_preset(name, spec, experts)  # a non-mapping preset first, as its own error
        seen.update(expert_closure({"experts": experts}, n))
    for name, spec in seen.items():
        check_preset(name, spec, experts)
