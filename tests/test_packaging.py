"""`pip install` ships the whole product: the sdist and wheel a release would build, and a fresh venv.

The source tree is copied as a clean clone has it (tracked files only: no built labextension, no
node_modules), then built with ``python -m build`` in its isolated environments, whose build
requirements (hatchling, hatch-jupyter-builder, jupyterlab for jlpm) come from the package index as
a user's build gets them. The jupyter-builder hook then builds the labextension from its TypeScript
sources with jlpm (packages from the npm registry, ``.yarn/cache`` copied over to spare the download).

The sdist is then installed in a fresh venv. Its dependencies (torch, transformers, JupyterLab...)
would take minutes to install, so the venv borrows the test venv's site-packages through a ``.pth``
file, placed after its own: what ``pip install`` put in the fresh venv (the package, the
labextension in ``share/jupyter/labextensions``, the server config in ``etc/jupyter``) is what is
found, since the test venv's editable install and its data files are not on the fresh venv's paths.
That install uses ``--no-build-isolation`` (the build requirements come from the same borrowed
site-packages): the isolated build was already proven by ``python -m build``, and a third isolated
environment would cost another half minute for nothing new.
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
import sysconfig
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXT = "extensions/gpu-meter"
LABEXT_NAME = "llm-workbench-gpu-meter"
SERVER_CONFIG = "etc/jupyter/jupyter_server_config.d/workbench.server.json"
BUILT = ("node_modules/", ".yarn/", "lib/", "labextension/")


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _clean_copy(dest: Path) -> None:
    for rel in _tracked_files():
        assert not any(rel.startswith(f"{EXT}/{b}") for b in BUILT), f"{rel} is built output in git"
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    cache = REPO / EXT / ".yarn" / "cache"
    if cache.is_dir():
        shutil.copytree(cache, dest / EXT / ".yarn" / "cache")


def _run(cmd: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    _clean_copy(src)
    assert not (src / EXT / "labextension").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HATCH_JUPYTER", "SKIP_JUPYTER"))}
    _run([sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(src)], timeout_s=900, env=env)
    (sdist,) = (root / "dist").glob("llm_workbench-*.tar.gz")
    (wheel,) = (root / "dist").glob("llm_workbench-*.whl")
    return sdist, wheel


def test_the_sdist_has_the_extension_sources_and_no_installed_packages(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for rel in ("package.json", "yarn.lock", "tsconfig.json", ".yarnrc.yml", "src/index.ts", "style/index.css"):
        assert f"{EXT}/{rel}" in names, f"the sdist lacks {EXT}/{rel}"
    assert "extensions/jupyter-config/jupyter_server_config.d/workbench.server.json" in names
    # Built by the sdist's hook from those sources (the template's sdists carry it: no node needed to install).
    assert f"{EXT}/labextension/package.json" in names
    leaked = sorted(n for n in names if n.startswith((f"{EXT}/node_modules/", f"{EXT}/.yarn/", f"{EXT}/lib/")))
    assert not leaked, f"the sdist carries jlpm's installs or caches: {leaked[:5]}"


def test_the_wheel_ships_the_labextension_and_the_server_config(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        data = next(n.split("/data/", 1)[0] for n in names if ".data/data/" in n) + "/data/"
        labext = f"{data}share/jupyter/labextensions/{LABEXT_NAME}/"
        meta = json.loads(z.read(f"{labext}package.json"))
        config = json.loads(z.read(f"{data}{SERVER_CONFIG}"))
    assert meta["name"] == LABEXT_NAME
    # The federated module JupyterLab loads, built from the TypeScript sources by the hook.
    assert any(n.startswith(f"{labext}static/remoteEntry.") and n.endswith(".js") for n in names)
    assert meta["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    assert config == {"ServerApp": {"jpserver_extensions": {"workbench.server": True}}}
    assert "workbench/server/__init__.py" in names
    # The figures' front-end loader (ui/figures.py reads it next to the module).
    assert "workbench/ui/static/plotly_widget_loader.js" in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if _get(url)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server did not answer within 90 s:\n{log.read_text()[-3000:]}")


def test_pip_install_of_the_sdist_in_a_fresh_venv_gives_the_labextension_and_the_rest_api(
        dists: tuple[Path, Path], tmp_path: Path) -> None:
    sdist, _ = dists
    venv = tmp_path / "fresh"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)], timeout_s=120)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     timeout_s=30).stdout.strip())
    (site / "zz_borrowed_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "JUPYTER", "WORKBENCH_DISPLAY", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               PATH=f"{venv / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    _run([sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check", "install", "-q",
          "--no-deps", "--no-build-isolation", str(sdist)], timeout_s=600, env=env, cwd=tmp_path)

    where = _run([str(py), "-c", "import workbench; print(workbench.__file__)"], timeout_s=60, env=env,
                 cwd=tmp_path).stdout
    assert where.strip().startswith(str(site)), f"the fresh venv imports workbench from {where}"
    listed = _run([str(py), "-m", "jupyterlab.labextensions", "list"], timeout_s=120, env=env, cwd=tmp_path)
    out = listed.stdout + listed.stderr
    line = next((ln for ln in out.splitlines() if LABEXT_NAME in ln), "")
    assert "enabled" in line, f"jupyter labextension list:\n{out}"
    assert "OK" in line, f"jupyter labextension list:\n{out}"
    assert str(venv / "share" / "jupyter" / "labextensions") in out, out
    assert (venv / SERVER_CONFIG).is_file()

    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "server.log"
    args = [str(py), "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    with log.open("wb") as out_f:
        proc = subprocess.Popen(args, env=env, stdout=out_f, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(proc, f"{base}/api/status?token={token}", log)
        # Enabled by nothing but the config file the wheel put in the fresh venv's etc/jupyter.
        status, body = _get(f"{base}/workbench/api/devices?token={token}")
        assert status == 200, f"/workbench/api/devices answered {status}: {body[:500]!r}\n{log.read_text()[-2000:]}"
        devices = json.loads(body)["devices"]
        assert [d["name"] for d in devices if d["kind"] == "cpu"] == ["cpu"]
        assert next(d for d in devices if d["kind"] == "cpu")["cores"] == len(os.sched_getaffinity(0))
        assert _get(f"{base}/workbench/api/devices")[0] == 403
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
