"""The house rules, measured from the code's own imports: layers point one way, no import
cycle except a registry and its members, no module over 600 lines, and the plan layer the
workflow reads stays free of torch and pandas."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("medmix", "cohorts", "extractors", "fusion")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement reaches."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            if MODULES[module].name != "__init__.py":
                parts = parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    else:
        names = [a.name for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (function-local imports included; imports
    under ``if TYPE_CHECKING:`` left out: they never run)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in type_only:
                edges[module].update(_targets(module, node))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def is_registry(module: str) -> bool:
    return module.rpartition(".")[2] == "registry"


def test_no_import_cycle_except_a_registry_and_its_members() -> None:
    """A registry loads its built-in members and they import its decorator: that loop is the
    registry pattern. Without the members' imports of a registry, nothing may loop."""
    edges = import_graph()
    without = {a: {b for b in bs if not is_registry(b)} for a, bs in edges.items()}
    assert cycles(without) == []


def test_layers_point_one_way() -> None:
    """cohorts and extractors never import fusion; the plan layer (medmix) imports no stage."""
    edges = import_graph()
    wrong = [
        (a, b)
        for a, bs in edges.items()
        for b in bs
        if (a.startswith(("cohorts", "extractors")) and b.startswith("fusion"))
        or (a.startswith("medmix") and b.startswith(("fusion", "extractors", "cohorts")))
    ]
    assert wrong == []


def test_no_module_over_600_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_workflow_imports_only_the_plan_layer() -> None:
    """Planning the DAG needs neither torch nor the fusion / extractors packages."""
    smk = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    imports = [
        (p.name, m.group(1))
        for p in smk
        for m in re.finditer(r"^\s*(?:from|import) ([\w.]+)", p.read_text(), re.M)
    ]
    project = [(f, m) for f, m in imports if m.split(".")[0] in PACKAGES]
    assert project, "the rules read the plan layer"
    assert [(f, m) for f, m in project if m.split(".")[0] != "medmix"] == []


def test_the_plan_imports_neither_torch_nor_pandas() -> None:
    code = (
        "import json, sys, runpy\n"
        "sys.argv = ['medmix.plan', '--config', 'config/smoke.yaml']\n"
        "import io, contextlib\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        runpy.run_module('medmix.plan', run_name='__main__')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "plan = json.loads(buf.getvalue())\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'fusion', 'extractors') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'datasets': sorted(plan['datasets'])}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["datasets"] == ["demo-ccrcc", "demo-mimic", "demo-openi"]
