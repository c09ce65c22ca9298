"""Fixtures for the serving tests: a private endpoint registry, stores, and fake engines.

Every test gets its own registry file, and whatever it leaves registered is stopped
afterwards, so no engine outlives a test even when an assertion fails.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_SERVER = Path(__file__).with_name("fake_openai.py")
SMOL = "SmolLM2-135M-Instruct"


@pytest.fixture(autouse=True)
def endpoints_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_store: Path) -> Iterator[Path]:
    """A private registry file; engines still registered at the end are stopped."""
    from workbench.config import reset_settings

    path = tmp_path / "endpoints.json"
    monkeypatch.setenv("WORKBENCH_ENDPOINTS_FILE", str(path))
    monkeypatch.setenv("WORKBENCH_VLLM_COMMAND", str(tmp_path / "no-vllm-here"))
    reset_settings()
    yield path
    from workbench.serve import EndpointRegistry, stop

    for ep in EndpointRegistry(path).list():
        stop(ep.name, registry=EndpointRegistry(path))


@pytest.fixture
def seeded_store(monkeypatch: pytest.MonkeyPatch, isolated_store: Path, seeded_root: Path) -> Path:
    """WORKBENCH_STORE = the empty user store, then the seeded SmolLM2 as a shared root."""
    from workbench.config import reset_settings

    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(seeded_root)]))
    reset_settings()
    return seeded_root / SMOL


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``vllm`` executable that records its argv and environment to the returned JSON path,
    then serves a minimal OpenAI API on the ``--port`` it is given; ``vllm_command`` points at it."""
    from workbench.config import reset_settings

    bin_dir = tmp_path / "vllm-env" / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(FAKE_SERVER)!r}\n"
                   f"runpy.run_path({str(FAKE_SERVER)!r}, run_name='__main__')\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "vllm-argv.json"
    monkeypatch.setenv("WORKBENCH_VLLM_COMMAND", str(exe))
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(record))
    reset_settings()
    return record
