"""Each package's lazy exports are listed once, in its ``_EXPORTS`` table (name -> module).

``__all__`` is generated from the table (``sorted(_EXPORTS)``); the ``if TYPE_CHECKING:``
block that lets type checkers and editors see the names must import exactly the table's
names from the table's modules; and each name is defined where the table says. Checked
with ``ast`` (nothing heavy is imported: the ui's table names ipywidgets-backed panels).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import workbench

PACKAGE = Path(workbench.__file__).resolve().parent
LAZY_PACKAGES = sorted(
    ".".join(("workbench", *p.parent.relative_to(PACKAGE).parts))
    for p in PACKAGE.rglob("__init__.py") if "lazy_exports(" in p.read_text(encoding="utf-8"))


def _tree(package: str) -> ast.Module:
    path = PACKAGE.joinpath(*package.split(".")[1:], "__init__.py")
    return ast.parse(path.read_text(encoding="utf-8"))


def _table(package: str) -> dict[str, str]:
    """``_EXPORTS`` as written, modules made absolute."""
    for node in _tree(package).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]:
            table = ast.literal_eval(node.value)
            return {k: v if v.startswith("workbench") else f"{package}.{v}" for k, v in table.items()}
    raise AssertionError(f"{package} calls lazy_exports without an _EXPORTS table")


def _type_checking_imports(package: str) -> dict[str, str] | None:
    """name -> absolute module of the ``if TYPE_CHECKING:`` block's imports; ``None`` without one."""
    for node in _tree(package).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            found: dict[str, str] = {}
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), f"{package}: only `from .x import name` in the block"
                base = package.rsplit(".", imp.level - 1)[0] if imp.level > 1 else package
                module = f"{base}.{imp.module}" if imp.level else str(imp.module)
                found.update({a.asname or a.name: module for a in imp.names})
            return found
    return None


def _defines(module: str, name: str) -> bool:
    """Whether ``module``'s source binds ``name`` at top level (def, class, assignment or import),
    or, for a package with lazy exports, whether its own table's module does."""
    if module in LAZY_PACKAGES and name in _table(module):
        return _defines(_table(module)[name], name)
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def test_the_packages_with_lazy_exports_are_found() -> None:
    assert {"workbench", "workbench.runtime", "workbench.serve", "workbench.telemetry", "workbench.ui"} <= \
        set(LAZY_PACKAGES)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_all_is_the_table(package: str) -> None:
    assert importlib.import_module(package).__all__ == sorted(_table(package))


TYPED_PACKAGES = [p for p in LAZY_PACKAGES if _type_checking_imports(p) is not None]


def test_the_packages_with_a_type_checking_block_are_found() -> None:
    assert {"workbench", "workbench.runtime", "workbench.telemetry"} <= set(TYPED_PACKAGES)


@pytest.mark.parametrize("package", TYPED_PACKAGES)
def test_the_type_checking_block_imports_the_table(package: str) -> None:
    assert _type_checking_imports(package) == _table(package)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_each_name_is_defined_where_the_table_says(package: str) -> None:
    missing = sorted(f"{name} (in {module})" for name, module in _table(package).items() if not _defines(module, name))
    assert missing == []


#: What ``workbench.serve`` exported until the watchers moved to ``workbench.telemetry`` (f18fa1d).
MOVED_TO_TELEMETRY = ("DcgmGpu", "DcgmWatcher", "EngineWatcher", "MetricsWatcher", "VllmMetrics", "parse_dcgm",
                      "parse_vllm", "scrape")


@pytest.mark.parametrize("name", MOVED_TO_TELEMETRY)
def test_a_name_workbench_serve_exported_before_the_move_resolves_to_telemetrys_with_a_warning(name: str) -> None:
    import workbench.serve as serve
    import workbench.telemetry as telemetry

    with pytest.warns(DeprecationWarning, match=rf"workbench\.serve\.{name} moved to workbench\.telemetry"):
        value = getattr(serve, name)
    assert value is getattr(telemetry, name)


def test_the_moved_names_are_not_listed_by_workbench_serve() -> None:
    import workbench.serve as serve

    assert (set(MOVED_TO_TELEMETRY) & set(serve.__all__), set(MOVED_TO_TELEMETRY) & set(dir(serve))) == (set(), set())
