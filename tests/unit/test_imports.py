"""No import cycle inside syncer/, deferred or not.

Every module under syncer/ is parsed (not imported) and every import statement in it counts: at module
level, inside functions (a "deferred" import is still a dependency, only a hidden one), and under
``if TYPE_CHECKING:``.  An edge goes from the importing module to each syncer module the statement loads:

- ``import syncer.a.b`` and ``from syncer.a.b import name`` load ``syncer.a.b``, and ``from syncer.a import b``
  loads the submodule ``syncer.a.b`` as well as ``syncer.a`` itself;
- importing a submodule runs its parent packages' ``__init__`` first, so ``syncer.a.b`` also implies
  ``syncer.a`` (and ``syncer``) -- except the importer's own ancestors, which Python has always loaded
  (or is loading) before the importer itself runs.

A cycle in that graph is an order of initialisation that works only by accident (the import that closes it
finds a half-initialised module) or only because one side of it is deferred: both are what issue 13 asks
to remove.
"""

from __future__ import annotations

import ast
from pathlib import Path

import syncer

ROOT = Path(syncer.__file__).resolve().parent
PACKAGE = "syncer"


def module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ancestors(module: str) -> list[str]:
    """``syncer.a.b`` -> [``syncer``, ``syncer.a``]."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The syncer modules ``module`` (at ``path``) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    loaded: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            loaded.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: level 1 is the importer's own package (the module itself for an __init__).
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            loaded.add(source)
            # ``from pkg import sub`` loads pkg.sub when sub is a module rather than a name in pkg.
            loaded.update(f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known)
    targets: set[str] = set()
    own = set(ancestors(module))
    for name in loaded:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        while name and name not in known:  # ``import syncer.a.b.attr`` style: the module part
            name = name.rpartition(".")[0]
        for target in [*ancestors(name), name]:
            if target and target != module and target not in own:
                targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, each as one cycle through it
    (Tarjan's algorithm, then a shortest path back to the start inside the component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~60)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    found = []
    for component in components:
        start = min(component)
        # Breadth-first from start back to start, staying inside the component.
        paths = {w: [start, w] for w in sorted(graph[start] & component)}
        queue = list(paths)
        while start not in paths:
            v = queue.pop(0)
            for w in sorted(graph[v] & component):
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
        found.append(paths[start])
    return found


# -- the checker itself, on small made-up graphs and sources ---------------------------------------------

def test_cycles_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    two = cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}})
    assert sorted(map(tuple, two)) == [("a", "b", "a"), ("x", "y", "x")]


def test_deferred_type_checking_and_relative_imports_count(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "if TYPE_CHECKING:\n    from syncer.a.b import Thing\n"
        "def later():\n    import syncer.c\n"
        "from . import d\n"
        "from .e import f\n"
        "from syncer.g import h\n",
        encoding="utf-8")
    known = {"syncer", "syncer.a", "syncer.a.b", "syncer.c", "syncer.x", "syncer.x.d", "syncer.x.e", "syncer.g",
             "syncer.g.h"}
    # As the module syncer.x.m: its own package (syncer.x) and syncer are ancestors, hence no edge.
    assert imported("syncer.x.m", src, known) == {
        "syncer.a", "syncer.a.b", "syncer.c", "syncer.x.d", "syncer.x.e", "syncer.g", "syncer.g.h"}


# -- the real package ------------------------------------------------------------------------------------

def test_the_graph_sees_the_packages_imports() -> None:
    """A guard against a walker that finds nothing: known edges of today's code are present."""
    graph = import_graph()
    assert len(graph) > 40
    assert "syncer.manifest.store" in graph["syncer.manifest"]  # the package re-exports the store
    assert "syncer.fakeserver.server" in graph["syncer.fakeserver"]
    assert any(graph.values())


def test_syncer_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in syncer/ (module -> module it imports):\n" + "\n".join(
        "  " + " -> ".join(c) for c in found)
