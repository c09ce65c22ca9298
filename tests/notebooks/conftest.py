"""Run the curated notebooks headless with nbclient, as ``nbconvert --execute`` would."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def outputs_text(nb) -> str:
    """Every output of every code cell as one string (text, HTML, errors)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif out.get("output_type") == "error":
                parts.append("\n".join(out.get("traceback", [])))
            else:
                data = out.get("data", {})
                parts.append(str(data.get("text/html", "")) + "\n" + str(data.get("text/plain", "")))
    return "\n".join(parts)


WIDGET_MIMETYPES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def widget_outputs(nb) -> list[str]:
    """``"cell N: mimetype"`` for every output that is a widget view (blank in a static report)."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            for mime in out.get("data", {}):
                if mime in WIDGET_MIMETYPES or "jupyter.widget" in mime:
                    found.append(f"cell {i}: {mime} ({''.join(cell.get('source', ''))[:60]!r})")
    return found


@pytest.fixture
def notebook_env(monkeypatch: pytest.MonkeyPatch, isolated_store: Path, seeded_root: Path, tmp_path: Path) -> Path:
    """An environment like a fresh user's: an empty user store over the seeded model, no live front end."""
    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(seeded_root)]))
    for var in ("WORKBENCH_DISPLAY", "JPY_SESSION_NAME", "VSCODE_PID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return work


@pytest.fixture
def run_notebook(notebook_env: Path) -> Callable[[str], object]:
    """Execute one notebook (by file name) in a fresh kernel, in its own folder; returns the executed notebook.

    Fails if any output is a widget view (see :func:`widget_outputs`).
    """
    import nbformat
    from nbclient import NotebookClient

    # Per cell: a bound for a hung kernel, generous because a shared 2-core CI machine runs the
    # five-variant quantization study several times slower than an idle one.
    def run(name: str, timeout_s: int = 900):
        path = notebook_env / name
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                                resources={"metadata": {"path": str(notebook_env)}})
        client.execute()
        nbformat.write(nb, path)
        # Headless there is no front end: a widget view would be stored and render as nothing.
        # Every notebook run here is checked, whatever the test then looks for.
        assert widget_outputs(nb) == [], f"{name} left widget views in its outputs"
        return nb

    return run
