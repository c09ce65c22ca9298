"""The package has no import cycle: the graph of which module imports which is a DAG.

What counts as an import (parsed with ``ast``, nothing is imported):

* every import that runs: the module body and its ``if``/``try`` blocks, and the imports
  inside functions too. A function-level import (the lazy imports that keep ``import
  workbench`` free of torch) still ties the two modules: each needs the other, so neither
  can be read, tested or moved alone; the cycles this test was written for (the idle
  watcher and the registry, the importer and the shared store) were all lazy ones.
* ``if TYPE_CHECKING:`` blocks are left out: annotations only, nothing runs.
* ``from .x import name`` is an edge to ``x.name`` when that is a module of the package,
  else to ``x``; a package's ``__init__`` counts as the module ``workbench.pkg``. Parent
  packages Python initialises on the way are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import workbench

PACKAGE = Path(workbench.__file__).resolve().parent


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_dotted(p): p for p in sorted(PACKAGE.rglob("*.py")) if "data" not in p.relative_to(PACKAGE).parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at module level or in its functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block)
                        for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = _base(package, node)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
                         if f"{base}.{a.name}" in MODULES or base in MODULES)
    found.discard(module)
    return found


def _base(package: str, node: ast.ImportFrom) -> str:
    """The absolute module ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_the_parser_sees_module_and_function_level_imports() -> None:
    # Relative imports at module level, and one inside a function (estimate_table's).
    assert {"workbench.store.entry", "workbench.store.kv_cache", "workbench.store.gguf_estimate"} <= \
        _imports("workbench.store.estimate")


def test_the_parser_leaves_type_checking_imports_out() -> None:
    # registry.py imports idle.IdleWatcher for annotations only, and idle at module level.
    assert ("workbench.devices.leases" in _imports("workbench.runtime.registry"),
            "workbench.runtime.idle" in _imports("workbench.runtime.registry")) == (False, True)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = {m: _imports(m) for m in MODULES}
    assert _cycles(graph) == []
