"""pytest-jupyter's server fixtures (jp_serverapp, jp_fetch), for this folder only, and the fakes.

The fixtures are imported here rather than named in a root ``pytest_plugins`` so
that their autouse event-loop fixture applies to the server tests alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403


@pytest.fixture(autouse=True)
def _clean_slate(request: pytest.FixtureRequest):
    """No NVML state or samplers from earlier tests; the server's sampler closed afterwards."""
    request.getfixturevalue("clean_devices")
    serverapp = request.getfixturevalue("jp_serverapp")
    yield
    state = serverapp.web_app.settings.get("workbench_state")
    if state is not None:
        state.close()
        for var in state.exported_env:  # set in this process by the extension, for its kernels
            os.environ.pop(var, None)


@pytest.fixture
def shared_root(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    """A read-only shared store root holding one tiny model (a copy, so the listing is small)."""
    import shutil

    root = tmp_path / "shared-store"
    root.mkdir()
    shutil.copytree(tiny_models["llama"], root / "tiny-llama")
    return root


@pytest.fixture
def jp_server_config(isolated_store: Path, shared_root: Path, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> dict:
    """The extension enabled; the store and lease folder set through the server's config.

    The environment variables would override the server's config, so they are unset here.
    """
    monkeypatch.delenv("WORKBENCH_STORE", raising=False)
    monkeypatch.delenv("WORKBENCH_LEASE_DIR", raising=False)
    return {
        "ServerApp": {"jpserver_extensions": {"workbench.server": True}},
        "WorkbenchSettings": {
            "store_path": os.pathsep.join([str(tmp_path / "server-user-store"), str(shared_root)]),
            "lease_dir": str(tmp_path / "leases"),
            "telemetry_interval_s": 0.25,
        },
    }
