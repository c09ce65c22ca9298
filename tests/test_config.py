"""Settings: Jupyter config files, then WORKBENCH_* variables, then keyword arguments.

The files are real ``jupyter_workbench_config.py``/``.json`` files in a temporary Jupyter
config folder, read by the real ``workbench`` command and by a real Jupyter kernel in
subprocesses, as a user's would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from workbench.config import ENV_VARS, WorkbenchSettings, get_settings, reset_settings
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A user config folder (JUPYTER_CONFIG_DIR) and a higher-priority one (JUPYTER_CONFIG_PATH), no WORKBENCH_*."""
    user, extra = tmp_path / "jupyter-user", tmp_path / "jupyter-extra"
    user.mkdir()
    extra.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(user))
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    reset_settings()
    return user, extra


def write_py(folder: Path, **values: object) -> Path:
    path = folder / "jupyter_workbench_config.py"
    literal = {float: lambda v: f"float('{v!r}')"}  # repr(nan) is no Python literal
    path.write_text("".join(f"c.WorkbenchSettings.{k} = {literal.get(type(v), repr)(v)}\n"
                            for k, v in values.items()))
    return path


def write_json(folder: Path, **values: object) -> Path:
    path = folder / "jupyter_workbench_config.json"
    path.write_text(json.dumps({"WorkbenchSettings": values}))
    return path


def store_with_one_entry(root: Path) -> Path:
    """A store root holding one (broken) entry, so `store list --json` shows which root was read."""
    (root / "only-config").mkdir(parents=True)
    (root / "only-config" / "config.json").write_text("{}")
    return root


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


# --- the sources, in order ------------------------------------------------------------------


def test_the_cli_reads_the_store_from_a_config_file(jupyter_dirs, tmp_path) -> None:
    user, _ = jupyter_dirs
    store = store_with_one_entry(tmp_path / "store-from-file")
    write_py(user, store_path=str(store))
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    proc = cli("store", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [(i["name"], i["root"]) for i in json.loads(proc.stdout)] == [("only-config", str(store))]

    # WORKBENCH_STORE overrides the file.
    other = store_with_one_entry(tmp_path / "store-from-env")
    proc = cli("store", "list", "--json", env={**env, "WORKBENCH_STORE": str(other)})
    assert [i["root"] for i in json.loads(proc.stdout)] == [str(other)]


def test_a_kernel_reads_the_config_file(jupyter_dirs, tmp_path) -> None:
    """A real ipykernel started by jupyter_client, as a notebook's would be."""
    from jupyter_client.manager import start_new_kernel

    user, _ = jupyter_dirs
    write_py(user, store_path=str(tmp_path / "kernel-store"), telemetry_interval_s=2.5)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=60)
    try:
        code = ("import json; from workbench.config import get_settings; s = get_settings(); "
                "print(json.dumps([s.store_path, s.telemetry_interval_s]))")
        chunks: list[str] = []

        def keep(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                chunks.append(msg["content"]["text"])

        reply = kc.execute_interactive(code, timeout=60, output_hook=keep)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert json.loads("".join(chunks)) == [str(tmp_path / "kernel-store"), 2.5]


def test_priority_files_then_env_then_kwargs(jupyter_dirs, monkeypatch) -> None:
    user, extra = jupyter_dirs
    write_py(user, store_path="/user/py", cache_dir="/user/cache", telemetry_interval_s=2.0,
             telemetry_history_s=600)
    # In one folder the .json file wins over the .py file, as in Jupyter.
    write_json(user, telemetry_history_s=700)
    # JUPYTER_CONFIG_PATH folders rank above the user's folder (jupyter --paths).
    write_py(extra, cache_dir="/extra/cache")
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(extra))
    s = WorkbenchSettings()
    assert (s.store_path, s.cache_dir, s.telemetry_interval_s, s.telemetry_history_s) == \
        ("/user/py", "/extra/cache", 2.0, 700)
    assert s.sources["telemetry_history_s"] == str(user / "jupyter_workbench_config.json")
    assert s.sources["cache_dir"] == str(extra / "jupyter_workbench_config.py")

    monkeypatch.setenv("WORKBENCH_STORE", "/from/env")
    monkeypatch.setenv("WORKBENCH_TELEMETRY_INTERVAL", "0.5")
    s = WorkbenchSettings()
    assert (s.store_path, s.telemetry_interval_s, s.cache_dir) == ("/from/env", 0.5, "/extra/cache")
    assert s.sources["store_path"] == "environment variable WORKBENCH_STORE"

    s = WorkbenchSettings(store_path="/from/kwarg")
    assert (s.store_path, s.telemetry_interval_s) == ("/from/kwarg", 0.5)

    # An empty variable is unset, as a shell's `export WORKBENCH_STORE=` means.
    monkeypatch.setenv("WORKBENCH_STORE", "")
    assert WorkbenchSettings().store_path == "/user/py"


def test_a_servers_config_is_honoured_below_the_environment(jupyter_dirs, monkeypatch) -> None:
    user, _ = jupyter_dirs
    write_py(user, store_path="/file", telemetry_interval_s=3.0)
    server = Config()
    server.WorkbenchSettings.store_path = "/server"
    server.ServerApp.port = 1234  # other sections are the server's business
    s = WorkbenchSettings(config=server)
    assert (s.store_path, s.telemetry_interval_s) == ("/server", 3.0)
    monkeypatch.setenv("WORKBENCH_STORE", "/env")
    assert WorkbenchSettings(config=server).store_path == "/env"


def test_defaults_without_any_source(jupyter_dirs, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    s = get_settings()
    assert s is get_settings()
    assert s.store_roots() == [tmp_path / "data" / "workbench" / "models"]
    assert s.telemetry_interval_s == 1.0
    assert s.sources == {}


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.2, 61, float("nan"), -1])
def test_an_interval_out_of_bounds_is_refused_naming_setting_and_source(jupyter_dirs, monkeypatch, bad) -> None:
    user, _ = jupyter_dirs
    path = write_py(user, telemetry_interval_s=bad)
    with pytest.raises(ConfigError, match=r"telemetry_interval_s.*0\.25 and 60") as exc:
        WorkbenchSettings()
    assert str(path) in str(exc.value)
    assert exc.value.setting == "telemetry_interval_s"

    monkeypatch.setenv("WORKBENCH_TELEMETRY_INTERVAL", str(bad))
    with pytest.raises(ConfigError, match="telemetry_interval_s.*WORKBENCH_TELEMETRY_INTERVAL"):
        WorkbenchSettings()
    monkeypatch.setenv("WORKBENCH_TELEMETRY_INTERVAL", "1")
    with pytest.raises(ConfigError, match="telemetry_interval_s.*keyword argument"):
        WorkbenchSettings(telemetry_interval_s=bad)
    # A refused file value overridden by a good variable is never used, so it is no error.
    assert WorkbenchSettings().telemetry_interval_s == 1.0
    # The bound holds after construction too: it is the trait's.
    with pytest.raises(TraitError, match="telemetry_interval_s"):
        WorkbenchSettings().telemetry_interval_s = bad


def test_bounds_hold_at_both_ends(jupyter_dirs) -> None:
    assert WorkbenchSettings(telemetry_interval_s=0.25).telemetry_interval_s == 0.25
    assert WorkbenchSettings(telemetry_interval_s=60).telemetry_interval_s == 60.0
    with pytest.raises(ConfigError, match="telemetry_history_s"):
        WorkbenchSettings(telemetry_history_s=0)


def test_garbage_is_refused_naming_its_source(jupyter_dirs, monkeypatch) -> None:
    user, _ = jupyter_dirs
    monkeypatch.setenv("WORKBENCH_TELEMETRY_INTERVAL", "fast")
    with pytest.raises(ConfigError, match="WORKBENCH_TELEMETRY_INTERVAL='fast' is not a number"):
        WorkbenchSettings()
    monkeypatch.delenv("WORKBENCH_TELEMETRY_INTERVAL")
    path = write_json(user, telemetry_interval_s="fast")
    with pytest.raises(ConfigError, match="telemetry_interval_s") as exc:
        WorkbenchSettings()
    assert str(path) in str(exc.value)
    path.unlink()
    path = user / "jupyter_workbench_config.py"
    path.write_text("c.WorkbenchSettings.store_path = \n")
    with pytest.raises(ConfigError, match="cannot read the config file") as exc:
        WorkbenchSettings()
    assert str(path) in str(exc.value)
    with pytest.raises(TypeError, match="store_pth is not a workbench setting"):
        WorkbenchSettings(store_pth="/x")


def test_cli_reports_a_bad_config_file_in_one_line(jupyter_dirs) -> None:
    user, _ = jupyter_dirs
    path = write_py(user, telemetry_interval_s=100)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    proc = cli("store", "list", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "telemetry_interval_s" in lines[0], proc.stderr
    assert str(path) in lines[0], proc.stderr


def test_unknown_and_old_names_in_files_are_warned_about(jupyter_dirs, caplog) -> None:
    user, _ = jupyter_dirs
    (user / "jupyter_workbench_config.py").write_text(
        "c.WorkbenchSettings.stor_path = '/typo'\nc.Workbench.store_path = '/old'\n")
    with caplog.at_level("WARNING", logger="workbench.config"):
        s = WorkbenchSettings()
    assert s.store_path not in ("/typo", "/old")
    assert "stor_path is not a workbench setting" in caplog.text
    assert "c.WorkbenchSettings" in caplog.text


def test_every_setting_documents_itself() -> None:
    traits = WorkbenchSettings.class_traits(config=True)
    assert set(ENV_VARS) <= set(traits)
    for name, trait in traits.items():
        assert trait.help, name
        if name in ENV_VARS:
            assert ENV_VARS[name] in trait.help, name


def test_a_servers_own_config_file_reaches_the_settings(jupyter_dirs, monkeypatch) -> None:
    """`c.WorkbenchSettings` in jupyter_server_config.py, read by a real ServerApp as it starts."""
    from jupyter_server.serverapp import ServerApp

    user, _ = jupyter_dirs
    (user / "jupyter_server_config.py").write_text("c.WorkbenchSettings.store_path = '/from/server-config'\n")
    write_py(user, store_path="/from/workbench-config", telemetry_interval_s=4.0)
    app = ServerApp()
    app.load_config_file()
    s = WorkbenchSettings(config=app.config)
    assert (s.store_path, s.telemetry_interval_s) == ("/from/server-config", 4.0)
    monkeypatch.setenv("WORKBENCH_STORE", "/from/env")
    assert WorkbenchSettings(config=app.config).store_path == "/from/env"
