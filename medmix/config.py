"""Loading and validating config.yaml, and the paths every stage derives from it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medmix.errors import UserError
from medmix.methods import (
    LARGE,
    MEDMIX,
    config_methods,
    is_neural_method,
    only_method,
    parse_method,
    teacher_method,
)

SCHEMA_NAME = "config.schema.yaml"


def find_schema() -> Path:
    """The config schema: the source tree's ``workflow/schemas/`` (the file the Snakefile
    validates with) when the package runs from a checkout, else the copy shipped inside the
    package (``medmix/schemas/``, package data of a regular install), else the current
    folder's ``workflow/schemas/`` (a run from the checkout with another install)."""
    here = Path(__file__).resolve().parent
    candidates = [
        here.parent / "workflow" / "schemas" / SCHEMA_NAME,
        here / "schemas" / SCHEMA_NAME,
        Path.cwd() / "workflow" / "schemas" / SCHEMA_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    return candidates[1]


SCHEMA_PATH = find_schema()


class ConfigError(UserError, ValueError):
    """A config problem; the message names the offending key."""


def _where(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def load_schema(schema_path: str | os.PathLike = SCHEMA_PATH) -> dict[str, Any]:
    """The config schema, with the name lists it leaves open filled from their registries."""
    try:
        schema = yaml.safe_load(Path(schema_path).read_text())
    except OSError as exc:
        raise ConfigError(f"config schema {schema_path} cannot be read: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"config schema {schema_path} is not a YAML mapping")
    _derive_enums(schema)
    return schema


def validate_config(
    cfg: dict[str, Any], schema_path: str | os.PathLike = SCHEMA_PATH
) -> dict[str, Any]:
    """Validate against the JSON schema (filling defaults), cross-check names, and order each
    dataset's modalities (and teachers) by name."""
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_where(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    _fill_defaults(cfg, schema)
    experts = cfg.get("experts", {})
    for ds, dcfg in cfg["datasets"].items():
        for mod, name in dcfg.get("teachers", {}).items():
            if mod not in dcfg["modalities"]:
                raise ConfigError(
                    f"  datasets.{ds}.teachers: {mod!r} is not one of the dataset's modalities"
                )
            if name not in experts:
                raise ConfigError(
                    f"  datasets.{ds}.teachers.{mod}: expert {name!r} is not defined under 'experts:'"
                )
        for mod, names in dcfg["modalities"].items():
            for name in names:
                if name not in experts:
                    raise ConfigError(
                        f"  datasets.{ds}.modalities.{mod}: expert {name!r} is not defined under 'experts:'"
                    )
    _check_paper_sections(cfg, schema)
    _check_select(cfg)
    for dcfg in cfg["datasets"].values():
        # one modality order everywhere, by name: it is the model's order (initialisation,
        # concatenation), and the config slices a workflow job reads are written with sorted
        # keys, so a run from the config file itself must see the same order to give the same
        # numbers. The experts keep their listed order (lists are not sorted).
        dcfg["modalities"] = dict(sorted(dcfg["modalities"].items()))
        if "teachers" in dcfg:
            dcfg["teachers"] = dict(sorted(dcfg["teachers"].items()))
    return cfg


def _derive_enums(schema: dict[str, Any]) -> None:
    """Name lists the schema file leaves open come from their registries: the fusion methods
    from the method catalogue (so adding a method never touches the schema)."""
    schema["properties"]["methods"]["items"]["enum"] = config_methods()


def _check_select(cfg: dict[str, Any]) -> None:
    """``fusion.select.methods`` names neural fusion methods only."""
    for m in select_section(cfg).get("methods") or []:
        if not is_neural_method(m):
            raise ConfigError(
                f"  fusion.select.methods: {m!r} is not a neural fusion method (the linear probe "
                "selects its own settings on val; *-large rows are teacher references)"
            )


def _check_paper_sections(cfg: dict[str, Any], schema: dict[str, Any]) -> None:
    """Names in the protocols / external / efficiency sections must exist in the config."""
    for i, pair in enumerate(cfg.get("external") or []):
        for key in ("source", "target"):
            if pair[key] not in cfg["datasets"]:
                raise ConfigError(f"  external[{i}].{key}: dataset {pair[key]!r} is not configured")
        if pair["source"] == pair["target"]:
            raise ConfigError(f"  external[{i}]: source and target are the same dataset")
    # any catalogued fusion method, trained for the grid if not in Table 1 (`large` is a
    # family of Table 1 rows, not one method)
    known = set(config_methods()) - {LARGE}
    for section in ("protocols", "efficiency"):
        for m in (cfg.get(section) or {}).get("methods") or []:
            if parse_method(m).base not in known:
                raise ConfigError(
                    f"  {section}.methods: {m!r} is not one of the fusion methods {sorted(known)}"
                )


# Config sections of the paper grid: a run of one (dataset, method, protocol) does not read
# them, so editing the grid must not invalidate trained runs (see dataset_slice).
PAPER_SECTIONS = ("protocols", "ablations", "external", "efficiency")


def _fill_defaults(node: Any, schema: dict[str, Any]) -> None:
    """Apply ``default`` values of object properties (jsonschema validates but does not fill)."""
    if not isinstance(node, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = sub["default"]
        if key in node:
            _fill_defaults(node[key], sub)
    addl = schema.get("additionalProperties")
    if isinstance(addl, dict):
        for key, value in node.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, addl)


def load_config(path: str | os.PathLike = "config.yaml") -> dict[str, Any]:
    """Read and validate a config file; every problem is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from exc
    return _validate_named(cfg, f"config file {path}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: what is wrong and where (line, column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _validate_named(cfg: Any, where: str) -> dict[str, Any]:
    """:func:`validate_config`, its errors prefixed with where the config came from."""
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"{where}: the config must be a mapping (key: value), got a {type(cfg).__name__}"
        )
    try:
        return validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).strip()}") from exc


@dataclass(frozen=True)
class DatasetPaths:
    """Where one dataset's artefacts live under the results folder."""

    root: Path  # results/{dataset}

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    def cache(self, modality: str, expert: str) -> Path:
        return self.root / "embeddings" / modality / f"{expert}.parquet"

    def teacher(self, modality: str) -> Path:
        return self.root / "teachers" / f"{modality}.parquet"

    def run_dir(self, protocol: str, method: str) -> Path:
        return self.root / "runs" / protocol / method

    def selection(self, method: str) -> Path:
        """The values chosen on val for ``method`` (fusion.select)."""
        return self.root / "selection" / f"{method}.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.parquet"


def dataset_paths(cfg: dict[str, Any], dataset: str) -> DatasetPaths:
    if dataset not in cfg["datasets"]:
        raise ConfigError(f"unknown dataset {dataset!r}; configured: {sorted(cfg['datasets'])}")
    return DatasetPaths(Path(cfg.get("results", "results")) / dataset)


def cache_paths(cfg: dict[str, Any], dataset: str) -> dict[str, dict[str, Path]]:
    """modality -> expert -> cache path, in config order."""
    paths = dataset_paths(cfg, dataset)
    mods = cfg["datasets"][dataset]["modalities"]
    return {m: {e: paths.cache(m, e) for e in experts} for m, experts in mods.items()}


def load_config_arg(arg: str) -> dict[str, Any]:
    """A ``--config`` argument: a YAML/JSON file path, or an inline JSON object (from a rule)."""
    text = arg.strip()
    if text.startswith("{"):
        # json, not yaml: YAML 1.1 reads JSON's 1e-08 (no dot) as a string
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--config: the inline JSON config is not valid JSON ({exc})"
            ) from exc
        return _validate_named(cfg, "--config (inline JSON)")
    return load_config(arg)


def section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """A config section as a mapping (absent or null -> empty): the one way to read one."""
    return dict(cfg.get(name) or {})


def is_activated(cfg: dict[str, Any], name: str) -> bool:
    """A switchable section turned on (``ablations: {enabled: true}``, ``efficiency: …``)."""
    return bool(section(cfg, name).get("enabled"))


RAG_TYPE = "rag"  # the retrieval-augmented expert, built by the rag rules from the rag: section


def expert_type(cfg: dict[str, Any], name: str) -> str:
    """The registered type of a configured expert (a preset without ``type`` is its own name)."""
    return str(section(cfg, "experts").get(name, {}).get("type", name))


def is_rag_expert(cfg: dict[str, Any], name: str) -> bool:
    """The RAG expert: its caches come from the rag rules, and it is fitted per cohort."""
    return expert_type(cfg, name) == RAG_TYPE


def expert_closure(cfg: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The preset ``name`` plus every preset it references (an inner image/tile expert)."""
    experts = cfg["experts"]
    out: dict[str, dict[str, Any]] = {}
    todo = [name]
    while todo:
        cur = todo.pop()
        if cur in out:
            continue
        if cur not in experts:
            raise ConfigError(f"  experts.{cur}: not defined (referenced by {name!r})")
        out[cur] = experts[cur]
        for value in experts[cur].values():
            if isinstance(value, str) and value in experts and value != cur:
                todo.append(value)
    return out


def dataset_slice(cfg: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The part of the config one dataset's training depends on (so other edits don't rerun it)."""
    dcfg = cfg["datasets"][dataset]
    used: dict[str, dict[str, Any]] = {}
    for names in dcfg["modalities"].values():
        for n in names:
            used.update(expert_closure(cfg, n))
    for n in dcfg.get("teachers", {}).values():
        used.update(expert_closure(cfg, n))
    skip = ("datasets", "experts", *PAPER_SECTIONS)
    keep = {k: v for k, v in cfg.items() if k not in skip}
    if isinstance(keep.get("fusion"), dict) and SELECT_KEY in keep["fusion"]:
        # a run reads the chosen values from the selection file (an input), not the grid
        keep["fusion"] = {k: v for k, v in keep["fusion"].items() if k != SELECT_KEY}
    return {**keep, "datasets": {dataset: dcfg}, "experts": used}


SELECT_KEY = "select"  # fusion.select: model selection on val (fusion.select)


def select_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's ``fusion.select`` section ({} when absent)."""
    return dict(section(cfg, "fusion").get(SELECT_KEY) or {})


def with_select(sliced: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """A dataset slice with ``fusion.select`` of ``cfg`` put back (the selection job's slice)."""
    chosen = section(cfg, "fusion").get(SELECT_KEY)
    if chosen is None:
        return sliced
    return {**sliced, "fusion": {**section(sliced, "fusion"), SELECT_KEY: chosen}}


def select_methods(cfg: dict[str, Any], dataset: str) -> list[str]:
    """The methods of ``dataset`` whose hyper-parameters are chosen on val (none when
    ``fusion.select`` is off): ``fusion.select.methods``, else every neural Table 1 row.
    Methods that cannot run here (OneLLM without weights) are the caller's to drop."""
    section = select_section(cfg)
    if not section.get("enabled"):
        return []
    names = section.get("methods")
    if names is None:
        names = table1_methods(cfg, dataset)
    return [m for m in dict.fromkeys(names) if is_neural_method(m)]


def table1_methods(cfg: dict[str, Any], dataset: str) -> list[str]:
    """The Table 1 runs of a dataset: ``methods`` with ``large`` expanded to one
    ``<modality>-large`` teacher reference per modality with a teacher, then one
    ``medmix-only-<modality>`` per modality when ``single_modality`` is on."""
    dcfg = cfg["datasets"][dataset]
    teachers = dcfg.get("teachers") or {}
    out: list[str] = []
    for m in cfg.get("methods") or ["medmix"]:
        out += [teacher_method(mod) for mod in teachers] if m == LARGE else [m]
    if cfg.get("single_modality", True):
        out += [only_method(MEDMIX, m) for m in dcfg["modalities"]]
    return out


def extract_slice(cfg: dict[str, Any], dataset: str, modality: str) -> dict[str, Any]:
    """The part of the config one modality's extraction depends on."""
    dcfg = dict(cfg["datasets"][dataset])
    names = dcfg["modalities"][modality]
    dcfg["modalities"] = {modality: names}
    dcfg.pop("teachers", None)
    experts: dict[str, dict[str, Any]] = {}
    for n in names:
        experts.update(expert_closure(cfg, n))
    keep = {k: cfg[k] for k in ("results", "extraction") if k in cfg}
    return {**keep, "datasets": {dataset: dcfg}, "experts": experts}
