"""The import rules of ARCHITECTURE.md section 1, for every layer, in one place.

Two kinds of check: a static one over every module's source (``ast``: which module
imports which, and where), and a dynamic one that imports each layer in a fresh
interpreter and looks at ``sys.modules``, which also catches a heavy import pulled
in indirectly (through a third-party package or a re-export).

* ``precision``, ``store``, ``devices``, ``telemetry``, ``runtime``, ``serve``, ``quant``
  (and the package's top-level modules) never import ``ui``, ``server``, ``ipywidgets``,
  ``plotly`` or ``IPython``;
* ``ui``, ``server`` and ``cli`` (the ``workbench`` command) never import each other, and no
  core layer imports ``cli``;
* only ``cli`` parses arguments or handles signals: no ``argparse`` or ``signal.signal`` in
  the core layers;
* ``pynvml`` is imported in exactly one module;
* torch, transformers and bitsandbytes are imported inside functions only, so
  ``import workbench`` and ``workbench store list`` work without importing them.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import workbench

PACKAGE = Path(workbench.__file__).resolve().parent

CORE_LAYERS = ("precision", "store", "devices", "telemetry", "runtime", "serve", "quant")
FRONT_ENDS = ("ui", "server", "cli")
UI_LIBRARIES = ("ipywidgets", "plotly", "IPython")
HEAVY = ("torch", "transformers", "bitsandbytes")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts)


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(path: Path) -> str:
    """``store`` for workbench/store/..., ``precision`` for workbench/precision.py, ``cli`` for workbench/cli/..."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(absolute module name, at module level)`` for every import in ``path``.

    Module level means run at import time: the module body, including ``if``/``try``
    blocks, but not functions and not ``if TYPE_CHECKING:`` blocks (which cost nothing
    at run time).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base)
            module = f"{prefix}.{node.module}" if node.module else prefix
        else:
            module = node.module or ""
        # `from . import ui` imports workbench.ui: count each imported name as a possible submodule.
        return [module, *(f"{module}.{a.name}" for a in node.names)]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((name, top) for name in names(child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _hits(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


ALL_MODULES = _modules()


def test_every_package_is_a_known_layer() -> None:
    """A new subpackage must be added to the rules below, not slip past them (a new top-level
    module gets the core rules)."""
    packages = {p.relative_to(PACKAGE).parts[0] for p in ALL_MODULES if len(p.relative_to(PACKAGE).parts) > 1}
    assert packages <= {*CORE_LAYERS, *FRONT_ENDS}


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_rules(path: Path) -> None:
    layer = _layer(path)
    imports = _imports(path)
    anywhere = [name for name, _ in imports]
    if layer not in (*FRONT_ENDS, "__init__"):
        # Core layers and the base modules: no front end, no notebook libraries, even inside functions.
        forbidden = ("workbench.ui", "workbench.server", "workbench.cli", *UI_LIBRARIES)
        assert not [m for m in anywhere if _hits(m, forbidden)], f"{path}: a core module imports a front end"
    for front_end in FRONT_ENDS:
        if layer == front_end:
            others = tuple(f"workbench.{f}" for f in FRONT_ENDS if f != front_end)
            assert not [m for m in anywhere if _hits(m, others)], f"{path}: {front_end} imports another front end"
    at_import = [name for name, top in imports if top and _hits(name, HEAVY)]
    assert not at_import, f"{path}: {at_import} at import time; import them inside the functions that need them"


@pytest.mark.parametrize("path", [p for p in ALL_MODULES if _layer(p) != "cli"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_command_line_parses_arguments_and_handles_signals(path: Path) -> None:
    """argparse and signal handlers belong to the ``workbench`` command (``workbench/cli/``): a core
    layer called from a kernel or a server must not parse ``sys.argv`` or replace the process's
    signal handlers (``signal.signal`` from a library steals Ctrl-C from Jupyter)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    argparse_imports = [name for name, _ in _imports(path) if _hits(name, ("argparse",))]
    handlers = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == "signal"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "signal"]
    assert (argparse_imports, handlers) == ([], [])


def test_pynvml_is_imported_in_exactly_one_module() -> None:
    importers = sorted(str(p.relative_to(PACKAGE)) for p in ALL_MODULES
                       if any(_hits(name, ("pynvml",)) for name, _ in _imports(p)))
    assert importers == ["devices/nvml.py"]


# --- in a fresh interpreter ----------------------------------------------------------------------

_CORE_FORBIDDEN = (*HEAVY, *UI_LIBRARIES, "workbench.ui", "workbench.server")

# What each import statement must not drag in. Beyond the rules above: the store and the base
# modules need no numpy; devices and telemetry start nothing (no pynvml until asked); the ui loads
# the runtime only when a panel needs it; the server extension loads tornado and jupyter_server
# only when Jupyter calls its hooks.
IMPORTS = {
    "workbench": ("import workbench, workbench.store, workbench.config, workbench.errors, workbench.precision",
                  (*_CORE_FORBIDDEN, "numpy")),
    "devices+telemetry": ("import workbench.devices, workbench.telemetry\n"
                          "from workbench.telemetry import post_event",
                          (*_CORE_FORBIDDEN, "pynvml", "numpy")),
    "runtime": ("import workbench.runtime as r\n"
                "from workbench.runtime import LoadSpec, GenerationParams, get_registry, Registry, generate, stream\n"
                "from workbench.runtime import oneshot",
                _CORE_FORBIDDEN),
    "serve": ("import workbench.serve", _CORE_FORBIDDEN),
    "quant": ("import workbench.quant", _CORE_FORBIDDEN),
    "ui": ("import workbench.ui\nfrom workbench.ui import Workbench",
           ("torch", "transformers", "bitsandbytes", "workbench.runtime", "workbench.server")),
    "cli": ("import workbench.cli\nfrom workbench.cli import app, store, devices, leases, run, serve, endpoints",
            (*HEAVY, *UI_LIBRARIES, "workbench.ui", "workbench.server", "workbench.runtime")),
    "server": ("import workbench.server",
               ("tornado", "jupyter_server", *HEAVY, "ipywidgets", "workbench.ui")),
}


def _loaded_after(code: str, forbidden: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
    probe = (f"import json, sys\n{code}\n"
             f"print(json.dumps(sorted(m for m in {forbidden!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("what", list(IMPORTS))
def test_importing_a_layer_is_light(what: str) -> None:
    code, forbidden = IMPORTS[what]
    assert _loaded_after(code, forbidden) == []


def test_store_list_does_not_import_torch(tmp_path: Path, tiny_models: dict[str, Path], tiny_root: Path,
                                          seeded_root: Path) -> None:
    """The whole listing (broken and unsafe entries, a shared root, the seeded model) without torch."""
    user = tmp_path / "user"
    shutil.copytree(tiny_models["llama"], user / "broken-one")
    (user / "broken-one" / "config.json").write_text("{")
    shutil.copytree(tiny_models["gpt2"], user / "pickled")
    (user / "pickled" / "model.safetensors").rename(user / "pickled" / "pytorch_model.bin")
    env = {**os.environ, "WORKBENCH_STORE": os.pathsep.join(map(str, [user, tiny_root, seeded_root]))}
    code = ("import io, contextlib; from workbench.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): main(['store', 'list', '--json'])\n"
            "assert {'broken-one', 'pickled', 'SmolLM2-135M-Instruct'} <= {i['name'] for i in "
            "json.loads(buf.getvalue())}")
    assert _loaded_after(code, ("torch", "transformers", "bitsandbytes", *UI_LIBRARIES), env) == []
