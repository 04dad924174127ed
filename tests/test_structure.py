"""The layers of DESIGN.md, checked on the import graph of the project's own modules (every import
statement, at module level or inside a function, parsed from the source): the data contract
(schemas/) reaches nothing above it, the engine (runtime/) reaches only itself and schemas/, and
only the CLI, the top floor, may import anything."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("schemas", "runtime", "stages", "workers", "pipelines", "report", "trainer", "builders", "configs",
            "benchmarks")
TOP_FLOOR = {"runtime.cli"}  # may import everything; nothing imports it
ALLOWED = {"schemas": {"schemas"}, "runtime": {"runtime", "schemas"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The project modules `path` imports (relative imports resolved; `from a import b` counts b
    when b is a module, else a)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES and module_path(m) is not None}


def module_path(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else (p / "__init__.py" if (p / "__init__.py").is_file()
                                                                       else None)


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in g.get(m, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    g = graph()
    assert "runtime.roles" in g["runtime.plan"]  # imported inside Plan.model
    assert "schemas.contract" in g["schemas.store"] and "runtime.plan" in g["stages.encode"]
    assert g["runtime.cli"] & {"report", "pipelines.multiid_forget"}  # the top floor imports above it


def test_schemas_and_runtime_reach_nothing_above_them():
    g = graph()
    problems = []
    for layer, allowed in ALLOWED.items():
        for m in sorted(x for x in g if x.split(".")[0] == layer and x not in TOP_FLOOR):
            above = sorted(n for n in reachable(g, m) if n.split(".")[0] not in allowed)
            if above:
                problems.append(f"{m} -> {', '.join(above)}")
    assert not problems, "\n".join(problems)


def test_nothing_imports_the_cli():
    g = graph()
    assert [m for m, deps in g.items() if TOP_FLOOR & deps and m not in TOP_FLOOR] == []
