"""A real JupyterHub on localhost: jupyterhub from PyPI, configurable-http-proxy from the npm registry.

Two users (dummy authenticator, one shared password) get servers from the simple
local spawner. Every user server and kernel sees the same fake NVML GPUs
(``fake_site/sitecustomize.py``, switched on by ``WORKBENCH_TEST_FAKE_GPUS`` in the
spawner's environment), the same read-only shared store and the same lease folder,
and its own user store. An admin service token drives the hub's REST API.
Everything is stopped by PID: SIGTERM to the hub stops the proxy and the user
servers; anything left is killed by the PIDs the hub recorded.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from browser.conftest import stop_process

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHP_VERSION = "5.3.0"
#: Where the proxy is installed once (git-ignored build folder, reused by later runs).
CHP_DIR = REPO / "build" / "hub-proxy"
PASSWORD = "workbench-test-password"
GiB = 2**30
#: The fake GPUs every user process sees (one 24 GiB card).
FAKE_GPUS = [{"name": "NVIDIA A10", "memory_total_bytes": 24 * GiB, "utilization_percent": 37}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_command() -> Path:
    """``configurable-http-proxy`` from the npm registry, installed into ``build/hub-proxy`` once."""
    binary = CHP_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
    if not binary.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install configurable-http-proxy (Debian: apt-get install npm)"
        CHP_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(CHP_DIR),
                        f"configurable-http-proxy@{CHP_VERSION}"], check=True, capture_output=True, timeout=300)
    return binary


@dataclass
class Hub:
    url: str
    admin_token: str
    folder: Path
    proc: subprocess.Popen
    log: Path
    shared_root: Path
    lease_dir: Path
    user_tokens: dict[str, str] = field(default_factory=dict)

    def log_tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                timeout: float = 30) -> tuple[int, Any]:
        """One HTTP request to the hub's public URL; returns ``(status, parsed JSON or text)``."""
        data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"token {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.request(method, "/hub/api" + path, body, token=self.admin_token)

    def start_server(self, user: str, timeout_s: float = 90) -> None:
        status, body = self.api("POST", f"/users/{user}/server")
        assert status in (201, 202), (status, body, self.log_tail())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, info = self.api("GET", f"/users/{user}")
            server = (info.get("servers") or {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(0.5)
        raise AssertionError(f"{user}'s server was not ready within {timeout_s} s:\n{self.log_tail()}")

    def stop_server(self, user: str, timeout_s: float = 60) -> None:
        status, body = self.api("DELETE", f"/users/{user}/server")
        assert status in (202, 204), (status, body)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, info = self.api("GET", f"/users/{user}")
            if not info.get("servers"):
                return
            time.sleep(0.5)
        raise AssertionError(f"{user}'s server did not stop within {timeout_s} s:\n{self.log_tail()}")

    def token_for(self, user: str) -> str:
        if user not in self.user_tokens:
            status, body = self.api("POST", f"/users/{user}/tokens", {"expires_in": 3600, "note": "workbench test"})
            assert status in (200, 201), (status, body)
            self.user_tokens[user] = body["token"]
        return self.user_tokens[user]

    def user_get(self, user: str, path: str, as_user: str | None = None) -> tuple[int, Any]:
        """GET ``/user/<user>/<path>`` with ``as_user``'s token (default: the user's own)."""
        return self.request("GET", f"/user/{user}/{path}", token=self.token_for(as_user or user))


def _spawner_environment(folder: Path, shared_root: Path, lease_dir: Path) -> dict[str, Any]:
    env: dict[str, Any] = {
        # The fake-GPU seam first, then this checkout (the code under test).
        "PYTHONPATH": os.pathsep.join([str(HERE / "fake_site"), str(REPO)]),
        "WORKBENCH_TEST_FAKE_GPUS": json.dumps(FAKE_GPUS),
        "WORKBENCH_LEASE_DIR": str(lease_dir),
        "WORKBENCH_TELEMETRY_INTERVAL": "0.5",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    # A development run may point Jupyter at an uninstalled build (JUPYTER_PATH, JUPYTER_CONFIG_PATH);
    # `make setup` installs both extensions into the environment, where no variable is needed.
    for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def _write_config(folder: Path, shared_root: Path, lease_dir: Path, port: int, admin_token: str) -> Path:
    bindir = Path(sys.executable).parent
    home = folder / "home"
    args = ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []
    env = _spawner_environment(folder, shared_root, lease_dir)
    config = folder / "jupyterhub_config.py"
    config.write_text(f"""
import json
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{str(proxy_command())!r}]
c.ConfigurableHTTPProxy.pid_file = {str(folder / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{folder / "hub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(folder / "cookie_secret")!r}
c.JupyterHub.pid_file = {str(folder / "hub.pid")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(home / "{username}")!r}
c.Spawner.cmd = [{str(bindir / "jupyterhub-singleuser")!r}]
c.Spawner.args = {args!r}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120

_env = json.loads({json.dumps(env)!r})
# Each user's own writable store first, then the team's read-only shared store.
_env["WORKBENCH_STORE"] = lambda spawner: "{home}/" + spawner.user.name + "/models" + {os.pathsep!r} + {str(shared_root)!r}
_env["WORKBENCH_CACHE_DIR"] = lambda spawner: "{home}/" + spawner.user.name + "/cache"
c.Spawner.environment = _env

c.JupyterHub.services = [{{"name": "workbench-test", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "workbench-test",
    "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users", "access:servers"],
    "services": ["workbench-test"],
}}]
""")
    return config


def _kill_pid_file(path: Path) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def hub(tmp_path: Path, tiny_models: dict[str, Path]) -> Iterator[Hub]:
    """A running hub with users alice and bob created (no servers started yet)."""
    folder = tmp_path / "hub"
    folder.mkdir()
    shared_root = folder / "shared-models"
    shared_root.mkdir()
    shutil.copytree(tiny_models["llama"], shared_root / "tiny-llama")
    lease_dir = folder / "leases"
    port = free_port()
    admin_token = secrets.token_hex(16)
    config = _write_config(folder, shared_root, lease_dir, port, admin_token)
    log = folder / "jupyterhub.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "JUPYTERHUB_", "JPY_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=folder, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hub = Hub(f"http://127.0.0.1:{port}", admin_token, folder, proc, log, shared_root, lease_dir)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterHub exited with {proc.returncode}:\n{hub.log_tail()}")
            try:
                status, _ = hub.api("GET", "/", None)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterHub did not answer within 90 s:\n{hub.log_tail()}")
            time.sleep(0.3)
        status, body = hub.api("POST", "/users", {"usernames": ["alice", "bob"]})
        assert status == 201, (status, body)
        yield hub
    finally:
        # SIGTERM to the hub stops the proxy and the user servers; then make sure by PID.
        stop_process(proc, timeout_s=30)
        _kill_pid_file(folder / "proxy.pid")
        _kill_left_in(folder)


def _kill_left_in(folder: Path) -> None:
    """Kill, by PID, any process still working in the hub's folder (a user server or kernel the hub lost)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
