"""No import cycle between the project's modules, counting imports inside functions (a cycle a
deferred import hides still ties the two modules together: neither can be read, tested or moved
without the other).

An import statement depends on the module it names and on each name it imports that is a
submodule: ``import a.b`` on a.b; ``from a.b import f`` on a.b; ``from a import b`` on a (its code
runs and its namespace is read) and on a.b. So a family module that wrote ``from farm.families
import tiny`` depended on the registry that imports it; ``import farm.families.tiny as tiny``
names only the helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "workers", "api")


def project_modules() -> dict[str, Path]:
    """Every module under the project's packages, by dotted name (a package by its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules one module imports, anywhere in it (module level, functions, guards)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()

    def owner(dotted: str) -> str | None:
        # `import a.b.c` or `from a.b.c import f`: the longest prefix that is a project module.
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in modules:
                return candidate
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [owner(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level-1 packages
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # The module named as the source (its code runs, its namespace is read), and each
            # imported name that is a submodule: `from a import b` depends on a, and on a.b.
            targets = [owner(source)] + [
                f"{source}.{alias.name}"
                for alias in node.names
                if f"{source}.{alias.name}" in modules
            ]
        else:
            continue
        out.update(t for t in targets if t and t != name)
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its modules, the first repeated at the end), or None: a depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_reports_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_and_relative_ones_are_edges(tmp_path):
    modules = {"p": tmp_path / "p" / "__init__.py", "p.q": tmp_path / "p" / "q.py"}
    modules["p.r"] = tmp_path / "p" / "r.py"
    modules["p.q"].parent.mkdir()
    modules["p.q"].write_text("def f():\n    from . import r\n    from p import r as again\n")
    # `from p import r` runs and reads p (a registry that imports r makes a cycle), and r.
    assert imported("p.q", modules["p.q"], modules) == {"p", "p.r"}


def test_the_project_has_no_import_cycle():
    edges = graph()
    assert len(edges) > 50  # the walk found the project
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
