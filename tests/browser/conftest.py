"""A private JupyterLab server and a headless Debian Chromium, for tests that drive the real front end.

Everything the server writes (config, data, runtime, settings, workspaces,
IPython, HOME) lives under the test's temp folder, and the server is stopped by
its PID. Chromium is Debian's (``/usr/bin/chromium``, installed by ``make
chromium``); nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM ``proc`` (servers stop their kernels, proxies and user servers on it); kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def launch_chromium(playwright: object) -> object:
    """Headless Debian Chromium (``make test`` installs it with apt-get; never a browser download)."""
    assert CHROMIUM.exists(), "Debian chromium is not installed: `make chromium` installs it"
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    proc: subprocess.Popen
    log: Path

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _write_settings(settings_dir: Path) -> None:
    # No news toast over the screenshot, no update check (there is no network).
    target = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@pytest.fixture
def lab_server(tmp_path: Path, seeded_root: Path, isolated_store: Path) -> Iterator[LabServer]:
    """JupyterLab on a free localhost port with a token, notebooks copied into a temp root."""
    root = tmp_path / "root"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    home = tmp_path / "home"
    dirs = {name: home / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True)
    _write_settings(dirs["settings"])
    token = secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORKBENCH_DISPLAY", "VSCODE_PID", "JPY_SESSION_NAME") and not k.startswith("PYTEST_")}
    env.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        IPYTHONDIR=str(dirs["ipython"]),
        WORKBENCH_STORE=os.pathsep.join([str(isolated_store), str(seeded_root)]),
        WORKBENCH_CACHE_DIR=str(tmp_path / "cache"),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    args = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within 60 s:\n{server.log_tail()}")
            time.sleep(0.3)
        yield server
    finally:
        stop_process(proc, timeout_s=15)


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[object]:
    """A page in headless Debian Chromium (``make test`` installs it with apt-get)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def save_artifact(src: Path, name: str) -> Path:
    """Copy a test artifact (a screenshot) to ``test-output/`` in the repo (git-ignored)."""
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    dest = out / name
    shutil.copyfile(src, dest)
    return dest
