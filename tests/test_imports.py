"""The package's import graph: no cycles, and the core never imports Dagster.

The graph is read from the source with `ast`, so it sees every import, module-level and inside
functions alike (a function-level import used to dodge a cycle is still a cycle), and relative
imports (`from . import x`, `from ..config import load`) resolved against the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pixart_pipeline

PACKAGE = "pixart_pipeline"
ROOT = Path(pixart_pipeline.__file__).resolve().parent

# The Dagster shell: the only modules allowed to import dagster (DESIGN.md section 2).
SHELL = (f"{PACKAGE}.defs", f"{PACKAGE}.definitions", f"{PACKAGE}.cli")


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Map every module's dotted name to its file (a package is named by its `__init__.py`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def imported_names(module: str, tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Every dotted name `module` imports, anywhere in its source, relative imports resolved.

    `from a import b` yields `a.b` when `a.b` is a module (importing it), else `a` (a name in it).
    """
    own_package = module if _is_package(module, modules) else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = own_package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module `name` refers to: itself, or the longest module prefix of it."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> package modules it imports, module -> every top-level name it imports).

    Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so those count as edges too.
    """
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = imported_names(module, ast.parse(path.read_text(), str(path)), modules)
        external[module] = {name.split(".")[0] for name in names}
        edges = set()
        for name in names:
            target = _resolve(name, modules) if name.startswith(package) else None
            while target:
                if target != module and not module.startswith(target + "."):
                    edges.add(target)
                target = target.rpartition(".")[0] or None
        graph[module] = edges
    return graph, external


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component with more than one module, as one cycle through it.

    Tarjan's algorithm, iterative; a cycle is reported as a path `a -> b -> ... -> a`.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(_cycle_through(sorted(component), graph))
    return components


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest import path from the component's first module back to itself, inside it."""
    members = set(component)
    start = component[0]
    paths = {child: [start, child] for child in sorted(graph[start]) if child in members}
    frontier = list(paths)
    while start not in paths:
        next_frontier = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child in members and child not in paths:
                    paths[child] = paths[node] + [child]
                    next_frontier.append(child)
        frontier = next_frontier
    return paths[start]


def test_no_import_cycles():
    graph, _ = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_core_never_imports_dagster():
    _, external = import_graph()
    offenders = sorted(
        module
        for module, names in external.items()
        if "dagster" in names and not (module in SHELL or module.startswith(tuple(s + "." for s in SHELL)))
    )
    assert not offenders, f"core modules that import dagster: {offenders}"


def test_cycle_finder_names_a_cycle(tmp_path):
    """The walker sees function-level and relative imports, and names the cycle it finds."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph, _ = import_graph(package, "pkg")
    assert graph["pkg.a"] >= {"pkg.sub", "pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
