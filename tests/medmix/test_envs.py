"""envs/*.yaml: one pinned conda environment per rule family, kept in agreement with the code.

For every rule that names an env (``conda:``) the modules it runs (``python -m <module>``) are
followed through their first-party imports; every third-party import found must be provided
by that env (conda or pip section). An expert's isolated env (EXPERT_ENVS in common.smk, e.g.
envs/moirai.yaml) must provide what ``python -m extractors`` imports at start-up plus every
import reached from that expert's class and the packages it declares. Pins must be exact and
satisfy pyproject.toml's requirements; the family envs' pins must also equal the versions
installed here (the versions the tests run with). The envs are not built here (no conda
channels reachable): this static check is what keeps them honest.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
FIRST_PARTY = ("medmix", "cohorts", "extractors", "fusion")
ALLOWED_CHANNELS = {"conda-forge", "pytorch", "nvidia", "nodefaults"}
# Runtime requirements of pyproject.toml that no rule env needs: the workflow driver itself.
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}
TOOLING_EXTRAS = {"test", "cluster"}
# conda-forge package name -> PyPI distribution name, where they differ.
CONDA_TO_PYPI = {
    "matplotlib-base": "matplotlib",
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "openslide-python": "openslide-python",
}
# Distributions that are part of an env without being pinned there on purpose.
UNPINNED_OK = {"pip"}


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# parsing envs and rules


def env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


@cache
def load_env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def split_spec(spec: str, sep: str) -> tuple[str, str | None]:
    """'numpy=2.4.6' -> ('numpy', '2.4.6'); 'pip' -> ('pip', None). Build strings refused."""
    m = re.fullmatch(rf"\s*([A-Za-z0-9_.\-]+)\s*(?:{sep}\s*([^\s=<>!~,*]+))?\s*", spec)
    if not m:
        return spec.strip(), "UNPARSEABLE"
    return m.group(1), m.group(2)


def env_packages(env: dict) -> dict[str, tuple[str, str | None, str]]:
    """normalised PyPI name -> (name as written, pinned version or None, 'conda'|'pip')."""
    out: dict[str, tuple[str, str | None, str]] = {}
    for dep in env.get("dependencies", []):
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                name, version = split_spec(spec, "==")
                out[norm(name)] = (name, version, "pip")
        else:
            name, version = split_spec(str(dep), "=")
            out[norm(CONDA_TO_PYPI.get(name, name))] = (name, version, "conda")
    return out


def rule_blocks() -> list[tuple[str, str, Path]]:
    """(rule name, rule body, file) for every rule of the workflow."""
    blocks = []
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", text, re.M | re.S):
            blocks.append((m.group(1), m.group(2), smk))
    return blocks


def rule_envs() -> dict[Path, dict[str, set[str]]]:
    """env file -> {rule name -> modules it runs with ``python -m``}."""
    out: dict[Path, dict[str, set[str]]] = {}
    for name, body, smk in rule_blocks():
        mods = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", body))
        m = re.search(r"conda:\s*\n?\s*[\"']([^\"']+)[\"']", body)
        if m:
            out.setdefault((smk.parent / m.group(1)).resolve(), {})[name] = mods
        elif re.search(r"conda:\s*\n?\s*(extract_env|teacher_env)\b", body):
            # extract_env / teacher_env (common.smk): extract.yaml, or an expert's own env from
            # EXPERT_ENVS
            for rel in ["envs/extract.yaml", *expert_envs().values()]:
                out.setdefault((REPO / rel).resolve(), {})[name] = mods
    return out


def expert_envs() -> dict[str, str]:
    """EXPERT_ENVS from common.smk: expert type -> env path relative to the repo."""
    text = (RULES / "common.smk").read_text()
    m = re.search(r"^EXPERT_ENVS = (\{.*?\})$", text, re.M)
    return ast.literal_eval(m.group(1)) if m else {}


# ---------------------------------------------------------------------------------------------
# static import closure of first-party modules


def module_file(mod: str) -> Path | None:
    base = REPO.joinpath(*mod.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def package_of(mod: str, path: Path) -> str:
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0]


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside ``try: ... except ImportError`` (an optional dependency)."""
    cur = node
    while cur in parents:
        parent = parents[cur]
        if isinstance(parent, ast.Try) and cur in parent.body:
            for h in parent.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(
                    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                    for n in names
                ):
                    return True
        cur = parent
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``if TYPE_CHECKING:`` (never executed)."""
    cur = node
    while cur in parents:
        parent = parents[cur]
        if isinstance(parent, ast.If) and cur in parent.body:
            test = parent.test
            name = getattr(test, "id", getattr(test, "attr", None))
            if name == "TYPE_CHECKING":
                return True
        cur = parent
    return False


@cache
def scan(mod: str, lazy: bool) -> tuple[frozenset[str], ...]:
    """What ``mod`` imports: (first-party modules, third-party top-level names imported at
    module level, third-party names imported inside functions, third-party names imported in
    ``try/except ImportError``). With ``lazy`` False, imports inside functions are ignored."""
    path = module_file(mod)
    if path is None:
        return frozenset(), frozenset(), frozenset(), frozenset()
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    pkg = package_of(mod, path)
    first: set[str] = set()
    eager: set[str] = set()
    in_function: set[str] = set()
    optional: set[str] = set()

    def add(name: str, node: ast.AST) -> None:
        nested = _in_function(node, parents)
        if _type_checking_only(node, parents) or (nested and not lazy):
            return
        top = name.split(".")[0]
        if top in FIRST_PARTY:
            first.add(name)
        elif top not in sys.stdlib_module_names and top != "__future__":
            if _optional(node, parents):
                optional.add(top)
            else:
                (in_function if nested else eager).add(top)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, node)
            # `from pkg import submodule`
            for alias in node.names:
                if target.split(".")[0] in FIRST_PARTY and module_file(f"{target}.{alias.name}"):
                    add(f"{target}.{alias.name}", node)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node)
            else:  # dynamic: every module of this package may be loaded
                pdir = REPO.joinpath(*pkg.split("."))
                for f in pdir.rglob("*.py"):
                    rel = f.relative_to(REPO).with_suffix("")
                    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                    add(".".join(parts), node)
    return frozenset(first), frozenset(eager), frozenset(in_function), frozenset(optional)


def closure(entry: str) -> tuple[set[str], set[str], set[str], set[str]]:
    """Modules reached from ``python -m entry`` (its parents' __init__ and __main__ too).

    Imports inside functions count only in modules under the entry itself: a lazy import
    elsewhere (``extractors.registry`` loading every expert, ``fusion.registry`` loading the
    models and safetensors) serves that package's own commands, not a caller that uses one
    helper of it (``fusion`` reading a cache, ``fusion.render`` importing ``fusion``).
    Returns (modules, eager third-party names, names imported only inside functions, names
    imported only under ``try/except ImportError``).
    """
    parts = entry.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if module_file(entry) is not None and module_file(entry).name == "__init__.py":
        todo.append(f"{entry}.__main__")
    seen: set[str] = set()
    eager: set[str] = set()
    in_function: set[str] = set()
    optional: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        mparts = mod.split(".")
        todo += [".".join(mparts[:i]) for i in range(1, len(mparts))]
        first, e, f, o = scan(mod, mod == entry or mod.startswith(f"{entry}."))
        eager |= e
        in_function |= f
        optional |= o
        todo += sorted(first)
    mods = {m for m in seen if module_file(m)}
    return mods, eager, in_function - eager, optional - eager - in_function


@cache
def import_to_dists() -> dict[str, list[str]]:
    return md.packages_distributions()


def installed_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def pyproject_requirements() -> dict[str, Requirement]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    # the runtime extras (fm, vision, moirai, gpu) are declared dependencies of the code paths
    # that import them; the test extra is tooling and belongs to no rule's env
    for extra, items in data["project"].get("optional-dependencies", {}).items():
        if extra not in TOOLING_EXTRAS:
            reqs += [Requirement(r) for r in items]
    return {norm(r.name): r for r in reqs}


# ---------------------------------------------------------------------------------------------
# tests


def test_every_rule_has_an_existing_env_and_every_env_is_used() -> None:
    used = rule_envs()
    rules_without = [
        name for name, body, _ in rule_blocks() if "conda:" not in body and "shell:" in body
    ]
    assert not rules_without, f"rules without conda: {rules_without}"
    understood = {rule for rules in used.values() for rule in rules}
    unknown = [
        name for name, body, _ in rule_blocks() if "conda:" in body and name not in understood
    ]
    assert not unknown, f"rules whose conda: this test cannot resolve to an env file: {unknown}"
    missing = [str(p) for p in used if not p.exists()]
    assert not missing, f"rules name envs that do not exist: {missing}"
    unused = [p.name for p in env_files() if p.resolve() not in used]
    assert not unused, f"envs no rule uses: {unused}"


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_structure_channels_and_pins(path: Path) -> None:
    env = load_env(path)
    assert env.get("name") == f"medmix-{path.stem}", (
        f"{path.name}: name should be medmix-{path.stem}"
    )
    channels = env.get("channels", [])
    assert channels and channels[0] == "conda-forge", (
        f"{path.name}: conda-forge must come first: {channels}"
    )
    assert set(channels) <= ALLOWED_CHANNELS, (
        f"{path.name}: unexpected channels {set(channels) - ALLOWED_CHANNELS}"
    )
    deps = env.get("dependencies", [])
    assert "pip" in deps or not any(isinstance(d, dict) for d in deps), (
        f"{path.name}: pip section without pip"
    )
    python = [d for d in deps if isinstance(d, str) and split_spec(d, "=")[0] == "python"]
    assert len(python) == 1 and re.fullmatch(r"3\.\d+", split_spec(python[0], "=")[1] or ""), (
        f"{path.name}: pin python to a minor version, e.g. python=3.11"
    )
    for key, (name, version, where) in env_packages(env).items():
        if key in UNPINNED_OK or name == "python":
            continue
        assert version and version != "UNPARSEABLE", (
            f"{path.name}: {where} dependency {name!r} is not pinned to one version ({'==' if where == 'pip' else '='}X.Y.Z)"
        )
        assert re.fullmatch(r"\d+(\.\d+)+", version), (
            f"{path.name}: {name}: pin {version!r} is not a plain version"
        )


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_python_matches_the_interpreter(path: Path) -> None:
    deps = load_env(path)["dependencies"]
    pin = next(
        split_spec(d, "=")[1]
        for d in deps
        if isinstance(d, str) and split_spec(d, "=")[0] == "python"
    )
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if pin != here:
        pytest.skip(f"tests run with Python {here}; {path.name} pins python={pin} (CI runs 3.11)")


def _family_imports(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    """third-party import name -> rules needing it; the names imported only inside functions
    (lazily: an extra that may be absent where that code path is not used)."""
    needed: dict[str, set[str]] = {}
    eager: set[str] = set()
    for rule, mods in rule_envs().get(path.resolve(), {}).items():
        for mod in mods:
            assert module_file(mod) is not None, (
                f"rule {rule}: python -m {mod}: no such module in the repo"
            )
            _, e, f, _ = closure(mod)
            eager |= e
            for name in e | f:
                needed.setdefault(name, set()).add(rule)
    return needed, set(needed) - eager


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_covers_every_import_of_its_rules(path: Path) -> None:
    """Installed imports must be in the env. An import that is not installed here cannot be
    mapped to a distribution: at module level that is an error (the module cannot even be
    imported); inside a function it is an optional extra (a bridge model's own package),
    reported as a warning. An expert's own env (EXPERT_ENVS) is checked against what the
    extract command imports at start-up plus that expert's own imports and declared packages."""
    problems, extras = coverage_problems(path, load_env(path))
    if extras:
        warnings.warn(
            f"{path.name}: optional extras imported lazily, not installed here and not checked: {extras}",
            stacklevel=1,
        )
    assert not problems, "\n".join(problems)


def coverage_problems(path: Path, env: dict) -> tuple[list[str], list[str]]:
    """(imports of the rules using ``path`` that ``env`` does not provide, lazy extras)."""
    expert = expert_of_env(path)
    if expert is None:
        needed, lazy_only = _family_imports(path)
        declared: dict[str, str] = {}
    else:
        needed, declared = expert_env_imports(expert)
        lazy_only = set()
    provided = set(env_packages(env))
    dists = import_to_dists()
    problems, extras = [], []
    for name, rules in sorted(needed.items()):
        candidates = {norm(d) for d in dists.get(name, [])}
        if name in declared:
            candidates.add(norm(declared[name]))
        if not candidates:
            if name in lazy_only:
                extras.append(name)
            else:
                problems.append(
                    f"import {name!r} (rules {sorted(rules)}) is not installed here, so it cannot be mapped"
                )
        elif not candidates & provided:
            problems.append(
                f"import {name!r} (rules {sorted(rules)}) needs {sorted(candidates)}, missing from {path.name}"
            )
    return problems, extras


# ---------------------------------------------------------------------------------------------
# an expert's isolated env (EXPERT_ENVS): `python -m extractors extract` with that expert


def expert_of_env(path: Path) -> str | None:
    """The expert type whose own env ``path`` is (EXPERT_ENVS), or None for a family env."""
    for expert, rel in expert_envs().items():
        if (REPO / rel).resolve() == path.resolve():
            return expert
    return None


def expert_class(expert: str) -> tuple[ast.ClassDef, ast.Module, Path]:
    """The class registered with ``@register_expert("<expert>")``, its module's AST, its file."""
    for path in sorted((REPO / "extractors").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Call)
                and getattr(d.func, "id", None) == "register_expert"
                and d.args
                and isinstance(d.args[0], ast.Constant)
                and d.args[0].value == expert
                for d in node.decorator_list
            ):
                return node, tree, path
    raise AssertionError(f"EXPERT_ENVS names expert {expert!r}, but no class registers it")


def third_party_imports(node: ast.AST) -> set[str]:
    """Top-level names of the absolute third-party imports anywhere inside ``node``."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            names |= {a.name.split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.ImportFrom) and not sub.level and sub.module:
            names.add(sub.module.split(".")[0])
    return {
        n
        for n in names
        if n not in FIRST_PARTY and n not in sys.stdlib_module_names and n != "__future__"
    }


def declared_imports(cls: ast.ClassDef) -> dict[str, str]:
    """import name -> pip name, from the class's ``import_names`` ((module, pip name) pairs)
    and ``packages`` (pip names, imported under their normalised name where that differs)."""
    found: dict[str, object] = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = getattr(stmt.targets[0], "id", None)
            if target in ("import_names", "packages"):
                found[target] = ast.literal_eval(stmt.value)
    declared = {pip: pip for pip in found.get("packages", ())}
    for module, pip in found.get("import_names", ()):
        declared.pop(pip, None)  # known under its import name instead
        declared[module] = pip
    return declared


@cache
def module_tree(mod: str) -> ast.Module | None:
    path = module_file(mod)
    return ast.parse(path.read_text(), filename=str(path)) if path else None


def resolve_name(name: str, mod: str) -> tuple[ast.AST, str] | None:
    """The first-party function or class ``name`` refers to in module ``mod``: defined there,
    or imported there (at any depth) from another first-party module."""
    tree = module_tree(mod)
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return node, mod
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            if node.level:
                base = package_of(mod, module_file(mod)).split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            real = next(a.name for a in node.names if (a.asname or a.name) == name)
            if source.split(".")[0] in FIRST_PARTY and source != mod:
                return resolve_name(real, source)
    return None


def expert_env_imports(expert: str) -> tuple[dict[str, set[str]], dict[str, str]]:
    """What extracting with ``expert`` imports: all module-level imports of ``python -m
    extractors`` (the registry loads every expert module); every import inside the expert's
    class and inside the first-party functions and classes it reaches by name (its bases,
    helpers such as fm_common.resolve_device or weights_status), followed transitively; and
    its declared ``import_names``/``packages``. Returns (import name -> who needs it, import
    name -> the pip name the class declares for it)."""
    cls, _, path = expert_class(expert)
    mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
    _, eager, _, _ = closure("extractors")
    needed: dict[str, set[str]] = {name: {"extract"} for name in eager}
    todo: list[tuple[ast.AST, str]] = [(cls, mod)]
    seen: set[tuple[str, str]] = set()
    while todo:
        node, where = todo.pop()
        if (where, node.name) in seen:
            continue
        seen.add((where, node.name))
        for name in third_party_imports(node):
            needed.setdefault(name, set()).add(f"expert {expert}: {where}.{node.name}")
        for ref in sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)}):
            found = resolve_name(ref, where)
            if found is not None:
                todo.append(found)
    declared = declared_imports(cls)
    for name in declared:
        needed.setdefault(name, set()).add(f"expert {expert}: declared by {cls.name}")
    return needed, declared


def test_expert_env_check_catches_a_missing_package() -> None:
    """Drop uni2ts from the MOIRAI env: the check must name it; the real env passes."""
    path = ENVS / "moirai.yaml"
    assert expert_of_env(path) == "moirai", f"EXPERT_ENVS: {expert_envs()}"
    needed, declared = expert_env_imports("moirai")
    # start-up imports, the class's own, a base class's helper's (fm_common.weights_status)
    assert {"uni2ts", "torch", "numpy", "pyarrow", "huggingface_hub"} <= set(needed), sorted(needed)
    assert declared["hydra"] == "hydra-core"
    env = load_env(path)
    deps = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            dep = {"pip": [p for p in dep["pip"] if not p.startswith("uni2ts")]}
        deps.append(dep)
    problems, _ = coverage_problems(path, {**env, "dependencies": deps})
    assert any("'uni2ts'" in p and "moirai.yaml" in p for p in problems), problems


def test_coverage_check_catches_a_missing_package() -> None:
    """Drop one distribution from the fusion env: the check must name it."""
    path = ENVS / "fusion.yaml"
    env = load_env(path)
    stripped = {
        **env,
        "dependencies": [
            d
            for d in env["dependencies"]
            if not (isinstance(d, str) and d.startswith("scikit-learn"))
        ],
    }
    problems, _ = coverage_problems(path, stripped)
    assert any("'sklearn'" in p and "scikit-learn" in p for p in problems), problems


def pinned(path: Path) -> list[tuple[str, str, str]]:
    """(normalised name, name as written, version) of the env's pinned packages."""
    return [
        (key, name, version)
        for key, (name, version, _) in env_packages(load_env(path)).items()
        if key not in UNPINNED_OK and name != "python" and version
    ]


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_pins_satisfy_pyproject(path: Path) -> None:
    """Every env, the expert envs included: its pins are versions pyproject.toml allows."""
    reqs = pyproject_requirements()
    problems = [
        f"{name}={version} does not satisfy pyproject.toml's {reqs[key]}"
        for key, name, version in pinned(path)
        if key in reqs and Version(version) not in reqs[key].specifier
    ]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_pins_equal_installed(path: Path) -> None:
    """The family envs pin the versions the tests run with here."""
    if expert_of_env(path) is not None:
        pytest.skip(
            f"{path.name} is one expert's isolated env (EXPERT_ENVS): its pins differ from the"
            " shared install by design"
        )
    problems = []
    for _, name, version in pinned(path):
        have = installed_version(CONDA_TO_PYPI.get(name, name))
        if have is None:
            problems.append(f"{name}={version} is not installed here (pip install -e .)")
        elif (
            Version(have).public != Version(version).public
            and Version(have).base_version != version
        ):
            problems.append(f"{name}: env pins {version}, installed here {have}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_pyproject_and_envs_agree() -> None:
    """Every env package the rules import is a declared dependency; every runtime dependency
    is in some env (except the workflow driver)."""
    reqs = pyproject_requirements()
    in_envs: set[str] = set()
    needed_dists: set[str] = set()
    dists = import_to_dists()
    for path in env_files():
        in_envs |= set(env_packages(load_env(path)))
        needed, _ = _family_imports(path)
        for name in needed:
            needed_dists |= {norm(d) for d in dists.get(name, [])}
    undeclared = sorted(d for d in needed_dists if d not in reqs)
    assert not undeclared, (
        f"rules import distributions pyproject.toml does not declare: {undeclared}"
    )
    orphan = sorted(d for d in reqs if d not in in_envs and d not in DRIVER_ONLY)
    assert not orphan, f"pyproject.toml dependencies in no envs/*.yaml: {orphan}"


def test_import_scan_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """Guard the scanner itself on the real tree: extractors' experts are imported lazily."""
    mods, third, _, _ = closure("extractors")
    assert "extractors.__main__" in mods
    assert any(m.startswith("extractors.experts") for m in mods), (
        "lazy `import extractors.experts` not followed"
    )
    assert "numpy" in third


# --- envs/constraints.txt: the one source of pinned versions ---------------------------------

sys.path.insert(0, str(ENVS))
import lock  # noqa: E402  (envs/lock.py: a script, not a package module)

PIP_INSTALL = re.compile(r"\bpip install\b[^&\n`]*")


def test_installed_environment_equals_the_constraints() -> None:
    """Everything installed here is pinned in envs/constraints.txt at the installed version:
    the README's test command installed with the constraints and nothing drifted in."""
    problems = lock.differences(lock.read_constraints(), lock.installed())
    assert not problems, (
        "envs/constraints.txt does not describe this environment (install with the README's"
        " test command, or run `python envs/lock.py` after a deliberate upgrade):\n"
        + "\n".join(problems)
    )


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_pins_equal_the_constraints(path: Path) -> None:
    if expert_of_env(path) is not None:
        pytest.skip(f"{path.name} is one expert's isolated env: its own pins by design")
    pins = lock.read_constraints()
    problems = []
    for _, name, version in pinned(path):
        want = pins.get(norm(CONDA_TO_PYPI.get(name, name)))
        if want != version:
            problems.append(f"{name}: env pins {version}, envs/constraints.txt {want}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def _install_commands() -> list[tuple[str, str]]:
    found = []
    for path in [REPO / "README.md", REPO / ".ci" / "run", *sorted((REPO / "docs").glob("*.md"))]:
        for cmd in PIP_INSTALL.findall(path.read_text()):
            found.append((path.relative_to(REPO).as_posix(), cmd.strip()))
    return found


def test_every_documented_install_uses_the_constraints() -> None:
    """Every `pip install` the README, the docs and CI give goes through the constraints, so
    a user gets the versions the tests ran with on any day."""
    cmds = _install_commands()
    assert len(cmds) >= 3
    loose = [f"{where}: {cmd}" for where, cmd in cmds if "-c envs/constraints.txt" not in cmd]
    assert not loose, "installs without `-c envs/constraints.txt`:\n" + "\n".join(loose)


def test_lock_reports_drift_and_unpinned(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("# header\nfoo==1.0\nBar_baz==2.0  # why\n")
    pins = lock.read_constraints(path)
    assert pins == {"foo": "1.0", "bar-baz": "2.0"}
    have = {"foo": ("foo", "1.1"), "bar-baz": ("Bar_baz", "2.0+cpu"), "qux": ("qux", "3")}
    assert lock.differences(pins, have) == [
        "foo: pinned 1.0, installed 1.1",
        "qux 3 is installed but not pinned",
    ]
    path.write_text("foo>=1.0\n")
    with pytest.raises(ValueError, match="c.txt:1"):
        lock.read_constraints(path)
