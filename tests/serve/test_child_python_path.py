"""Python children import nothing from the folder they were started from (another user may write it).

``python -m MODULE`` puts the working directory first on ``sys.path``. Another user plants
``workbench/`` and ``llama_cpp/`` packages in a sticky folder a notebook sits in; the
chat-template worker and an engine started from there must run the real modules
(workbench/_child_python.py: ``-P``, ``PYTHONSAFEPATH``, the child's own working folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from multiuser import OTHER, require_root, run_as, shared_tmp, sticky_folder
from workbench import chat_template
from workbench._child_python import python_module_argv
from workbench.serve import process

PAYLOAD = "import os, pathlib\npathlib.Path({marker!r}).write_text(str(os.getuid()))\nraise SystemExit(0)\n"


def _plant(folder: str, marker: str) -> None:
    for pkg in ("workbench", "llama_cpp", "llama_cpp/server"):
        os.makedirs(f"{folder}/{pkg}", exist_ok=True)
        Path(f"{folder}/{pkg}/__init__.py").write_text(PAYLOAD.format(marker=marker))
    Path(f"{folder}/workbench/_template_worker.py").write_text(PAYLOAD.format(marker=marker))
    Path(f"{folder}/llama_cpp/server/__main__.py").write_text(PAYLOAD.format(marker=marker))


def test_children_started_from_a_folder_another_user_writes_run_the_real_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    with shared_tmp() as base:
        shared = sticky_folder(base / "team")
        marker = str(base / "team" / "planted-code-ran")
        run_as(OTHER, _plant, str(shared), marker)
        assert (shared / "workbench" / "_template_worker.py").stat().st_uid == OTHER
        monkeypatch.chdir(shared)
        # The chat-template worker: a fresh one, started from the planted folder.
        worker = chat_template._Worker()
        try:
            worker._start(64 << 20)
            assert worker.proc is not None
            assert worker.proc.poll() is None
        finally:
            worker.kill()
        # An engine: llama-cpp-python's server, asked for its help only.
        log = tmp_path / "logs" / "engine.log"
        proc = process.start([*python_module_argv("llama_cpp.server"), "--help"], env=dict(os.environ),
                             log_path=log)
        assert proc.wait(timeout=120) == 0
        assert "--n_ctx" in log.read_text()
        assert not os.path.exists(marker)
