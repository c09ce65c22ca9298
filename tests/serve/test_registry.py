"""The endpoint registry file: records, locking, and no secrets."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import ConfigError, EndpointNotFoundError
from workbench.serve import Endpoint, EndpointRegistry
from workbench.serve.registry import normalize_base_url


def test_add_get_list_remove(endpoints_file: Path) -> None:
    reg = EndpointRegistry()
    assert reg.path == endpoints_file
    reg.add_remote("team-llama", "http://gpu-box:8000", api_key_env="TEAM_KEY")
    reg.add_remote("ollama", "http://127.0.0.1:11434/v1/", model="llama3")
    assert [e.name for e in reg.list()] == ["ollama", "team-llama"]
    ep = reg.get("team-llama")
    assert ep.base_url == "http://gpu-box:8000/v1"
    assert ep.engine == "remote"
    assert ep.api_key_env == "TEAM_KEY"
    assert reg.get("ollama").base_url == "http://127.0.0.1:11434/v1"
    # What another process reads back is what was written.
    doc = json.loads(endpoints_file.read_text())
    assert set(doc["endpoints"]) == {"ollama", "team-llama"}
    reg.remove("ollama")
    with pytest.raises(EndpointNotFoundError, match="ollama.*known: team-llama"):
        reg.get("ollama")


def test_api_key_is_never_written(endpoints_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEY", "sk-very-secret-123")
    ep = EndpointRegistry().add_remote("team", "https://llm.example.org/v1", api_key_env="TEAM_KEY")
    assert ep.api_key() == "sk-very-secret-123"
    assert "sk-very-secret" not in endpoints_file.read_text()
    assert "sk-very-secret" not in json.dumps(ep.to_dict())
    with pytest.raises(ConfigError, match="NAME"):
        EndpointRegistry().add_remote("bad", "https://x.org", api_key_env="sk-very-secret-123")


def test_names_urls_and_duplicates_are_checked() -> None:
    reg = EndpointRegistry()
    with pytest.raises(ConfigError, match="not an http"):
        reg.add_remote("x", "ftp://host/v1")
    with pytest.raises(ConfigError, match="not usable"):
        reg.add_remote("../etc", "http://host:1/v1")
    reg.add_remote("x", "http://host:1/v1")
    with pytest.raises(ConfigError, match="already exists"):
        reg.add_remote("x", "http://host:2/v1")
    assert reg.add_remote("x", "http://host:2/v1", replace=True).base_url == "http://host:2/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"


def test_exited_local_engine_is_listed_as_exited_and_replaceable() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    reg = EndpointRegistry()
    reg.put(Endpoint("old", "transformers", "http://127.0.0.1:1/v1", pid=proc.pid, pid_create_time=1.0))
    assert [s.state for s in reg.statuses()] == ["exited"]
    reg.put(Endpoint("old", "transformers", "http://127.0.0.1:2/v1"))  # no error: the old one is gone
    assert reg.get("old").base_url.endswith(":2/v1")


def _add_many(path: str, start: int) -> None:
    reg = EndpointRegistry(path)
    for i in range(start, start + 10):
        reg.add_remote(f"ep{i}", f"http://127.0.0.1:{1000 + i}/v1")


def test_concurrent_writers_lose_nothing(endpoints_file: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(endpoints_file), k * 10)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(e.name for e in EndpointRegistry(endpoints_file).list()) == sorted(f"ep{i}" for i in range(40))
    assert not list(endpoints_file.parent.glob(".endpoints-*"))  # no temporary file left


def test_cli_add_list_stop(endpoints_file: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from workbench.cli import main

    monkeypatch.setenv("MY_KEY", "sk-cli-secret")
    assert main(["endpoints", "add", "remote1", "http://10.0.0.5:8000", "--api-key-env", "MY_KEY", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["base_url"] == "http://10.0.0.5:8000/v1"
    assert added["api_key_env"] == "MY_KEY"
    assert main(["endpoints", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["name"], e["state"]) for e in listed] == [("remote1", "remote")]
    assert main(["endpoints", "stop", "remote1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert main(["endpoints", "stop", "remote1"]) == 1
    assert "no endpoint called 'remote1'" in capsys.readouterr().err
    assert "sk-cli-secret" not in endpoints_file.read_text()


def test_reading_a_registry_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "workbench" / "endpoints.json"
    reg = EndpointRegistry(path)
    assert reg.list() == []
    assert reg.statuses() == []
    assert not path.parent.exists()
    reg.add_remote("first", "http://127.0.0.1:9/v1")
    assert [e.name for e in EndpointRegistry(path).list()] == ["first"]


def test_a_registry_others_could_read_or_write_is_refused(endpoints_file: Path, tmp_path: Path) -> None:
    """It holds engines' keys: written 0600, and a file that is not ours, not private, or a link is never used."""
    import os
    import stat

    reg = EndpointRegistry()
    reg.add_remote("a", "http://h:1/v1")
    assert stat.S_IMODE(endpoints_file.stat().st_mode) == 0o600
    lock = endpoints_file.with_name(endpoints_file.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    os.chmod(endpoints_file, 0o644)
    with pytest.raises(ConfigError, match="readable or writable by other users.*chmod 600"):
        reg.list()
    os.chmod(endpoints_file, 0o600)
    os.chown(endpoints_file, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to nobody, not to you"):
        reg.add_remote("b", "http://h:2/v1")
    os.chown(endpoints_file, os.getuid(), os.getgid())
    assert [e.name for e in reg.list()] == ["a"]
    planted = tmp_path / "planted.json"
    planted.write_text(endpoints_file.read_text())
    os.chmod(planted, 0o600)
    link = tmp_path / "linked.json"
    link.symlink_to(planted)
    with pytest.raises(ConfigError, match="symbolic link"):
        EndpointRegistry(link).list()
