"""Engines answer only whoever started them (issue 15, section 3), attacked by real other users.

Seen: ``transformers serve`` loads the model before it binds its port, and the port is on its
command line (``/proc/PID/cmdline`` is public); another user bound it first, ``workbench serve``
reported "ready", registered the impostor, and the owner's prompt landed in the other user's
log. And any local user got HTTP 200 from another user's engine without a credential.

The other users here are forked children that drop to uid 65534 (``tests/multiuser.py``); the
engines are a real ``transformers serve`` (through the workbench's launcher) on a tiny model,
and the fake engine of ``fake_openai.py`` where only the workbench's side is under test.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 (the other users' children cannot import from root's Python; loaded here)
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from multiuser import NOBODY, require_root, shared_tmp, start_as
from workbench.config import reset_settings
from workbench.errors import EndpointUnreachableError, ListenerNotOursError
from workbench.serve import EndpointClient, EndpointRegistry, ServePlan, plan_serve, process, start, stop
from workbench.serve.listener import group_members

FAKE_SERVER = Path(__file__).with_name("fake_openai.py")
TINY = "tiny-llama"


def _impostor(log: str, ready: str, marker: str) -> None:
    """Another user's server: finds the engine's port on its public command line, binds it first,
    answers /health and /v1/models like an engine, and writes down everything it is sent."""
    port = None
    deadline = time.monotonic() + 120
    while port is None and time.monotonic() < deadline:
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in b" ".join(argv) and b"--port" in argv:
                port = int(argv[argv.index(b"--port") + 1])
                break
        time.sleep(0.01)
    assert port is not None, "the engine's command line never appeared"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
            with open(log, "a") as fh:
                fh.write(json.dumps({"method": self.command, "path": self.path, "body": body,
                                     "authorization": self.headers.get("Authorization")}) + "\n")

        def answer(self, doc: object) -> None:
            data = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self.record()
            self.answer({"status": "ok"} if self.path == "/health" else {"data": [{"id": "stolen", "object": "model"}]})

        def do_POST(self) -> None:  # noqa: N802
            self.record()
            self.answer({"choices": [{"message": {"content": "thanks for the prompt"}}]})

    server = HTTPServer(("127.0.0.1", port), Handler)
    Path(ready).write_text(str(port))
    server.serve_forever()


def _wait_file(path: Path, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise TimeoutError(f"{path} never appeared")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@pytest.fixture
def tiny_store(tiny_root, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(tiny_root))
    reset_settings()
    return tiny_root


@pytest.mark.slow
def test_an_impostor_on_the_engines_port_makes_serve_fail_and_hears_nothing(tiny_store, monkeypatch):
    """Another user binds the port `transformers serve` will use while it loads: serve refuses, names the
    holder, stops the engine; neither the readiness probe, nor its key, nor a prompt reaches the impostor."""
    require_root()
    plan = plan_serve(TINY, engine="transformers", devices=["cpu"])
    assert "workbench.serve.tf_launcher" in plan.argv
    with shared_tmp() as tmp:
        os.chmod(tmp, 0o777)
        log, ready = tmp / "impostor.log", tmp / "ready"
        impostor = start_as(NOBODY, _impostor, str(log), str(ready), str(plan.argv[plan.argv.index("serve") + 1]))
        real_start = process.start
        engine: dict[str, int] = {}

        def start_then_lose_the_race(*args, **kwargs):
            proc = real_start(*args, **kwargs)
            engine["pid"] = proc.pid
            _wait_file(ready)  # the impostor read the port off the command line and bound it
            return proc

        monkeypatch.setattr(process, "start", start_then_lose_the_race)
        try:
            with pytest.raises(ListenerNotOursError) as info:
                start(plan, ready_timeout_s=300)
            message = str(info.value)
            assert f"PID {impostor.pid}" in message
            assert "uid 65534" in message
            assert f"127.0.0.1:{plan.port}" in message
            assert "nothing was sent" in message
            assert not process.is_running(engine["pid"])
            assert group_members(engine["pid"]) == []
            assert EndpointRegistry().list() == []
            heard = log.read_text() if log.exists() else ""
            assert heard == "", heard  # not a probe, not a key, not a prompt
        finally:
            _kill(impostor.pid)


def _as_other_user(base_url: str, key: str) -> dict[str, int]:
    """What another local user gets from the engine: HTTP status per request."""
    root = base_url.rsplit("/v1", 1)[0]
    chat = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    out = {}
    for name, method, url, body, auth in [
        ("health", "GET", root + "/health", None, None),
        ("models", "GET", base_url + "/models", None, None),
        ("chat", "POST", base_url + "/chat/completions", chat, None),
        ("chat-wrong-key", "POST", base_url + "/chat/completions", chat, "Bearer not-the-key"),
        ("reset", "POST", root + "/reset", b"{}", None),
        ("load_model", "POST", root + "/load_model", b'{"model": "/etc"}', None),
        ("models-shared-key", "GET", base_url + "/models", None, f"Bearer {key}"),
    ]:
        req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json",
                                                                              **({"Authorization": auth} if auth else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                out[name] = resp.status
        except urllib.error.HTTPError as exc:
            out[name] = exc.code
    return out


@pytest.mark.slow
def test_another_user_gets_401_from_a_real_engine_and_the_owner_gets_answers(tiny_store, capsys):
    require_root()
    from workbench.cli import main

    ep = start(plan_serve(TINY, engine="transformers", devices=["cpu"]), ready_timeout_s=300)
    try:
        assert ep.secret
        assert len(ep.secret) >= 32
        # The owner's client sends the key: answers come back.
        result = EndpointClient(ep.name).chat("hi", _params())
        assert result.finish_reason in ("stop", "length")
        assert result.new_tokens > 0

        # Another user, without the key, gets nothing but "up"; the key (shared deliberately) works for them too.
        status = start_as(NOBODY, _as_other_user, ep.base_url, ep.secret).result(120)
        assert status == {"health": 200, "models": 401, "chat": 401, "chat-wrong-key": 401, "reset": 401,
                          "load_model": 401, "models-shared-key": 200}, status

        # The key is nowhere public: not on the command line, not in --json, not in the log; the registry is 0600.
        assert ep.secret.encode() not in Path(f"/proc/{ep.pid}/cmdline").read_bytes()
        assert main(["endpoints", "--json"]) == 0
        listed = capsys.readouterr().out
        assert ep.name in listed
        assert ep.secret not in listed
        assert ep.secret not in repr(ep)
        assert ep.secret not in json.dumps(ep.to_dict())
        assert ep.secret not in Path(ep.log_path).read_text(errors="replace")
        reg = EndpointRegistry()
        assert (reg.path.stat().st_mode & 0o777) == 0o600
        assert ep.secret in reg.path.read_text()
        assert (Path(ep.log_path).stat().st_mode & 0o777) == 0o600

        # Sharing is a deliberate act that prints the key and the command a colleague runs.
        assert main(["endpoints", "share", ep.name, "--json"]) == 0
        shared = json.loads(capsys.readouterr().out)
        assert shared["api_key"] == ep.secret
        assert shared["base_url"] == ep.base_url
        export, add = shared["commands"]
        var = shared["api_key_env"]
        assert export == f"export {var}={ep.secret}"
        assert f"--api-key-env {var}" in add
        assert main(["endpoints", "share", ep.name]) == 0
        text = capsys.readouterr().out
        assert ep.secret in text
        assert "trust" in text
    finally:
        stop(ep.name)


def _params():
    from workbench.runtime import GenerationParams

    return GenerationParams(max_new_tokens=3, temperature=0)


def _fake_plan(port: int, name: str = "fake") -> ServePlan:
    argv = [sys.executable, str(FAKE_SERVER), "--port", str(port), "--served-model-name", "fake-model"]
    return ServePlan(name, "tiny", "vllm", ("cpu",), port, tuple(argv), {}, 1, None)


def test_the_engine_gets_its_key_through_the_environment_only(tmp_path, monkeypatch):
    """The fake engine enforces VLLM_API_KEY as vLLM does: the workbench's client must send it."""
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(record))
    port = process.free_port()
    ep = start(_fake_plan(port), ready_timeout_s=60)
    try:
        seen = json.loads(record.read_text())
        assert seen["key_variables"] == ["VLLM_API_KEY"]
        assert ep.secret not in " ".join(seen["argv"])
        assert "Paris" in EndpointClient(ep.name).chat("What is the capital of France?").text
        assert ep.secret not in json.dumps(_fake_plan(port).to_dict())
        req = urllib.request.Request(ep.base_url + "/models")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 401
    finally:
        stop(ep.name)


def _serve_recording(port: int, log: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with open(log, "ab") as fh:
                fh.write(body + b"\n")
            self.send_response(200)
            self.end_headers()

        do_GET = do_POST  # noqa: N815

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def test_a_prompt_never_goes_to_a_port_another_user_took_after_the_engine_died(tmp_path):
    require_root()
    port = process.free_port()
    ep = start(_fake_plan(port, "dies"), ready_timeout_s=60)
    client = EndpointClient(ep.name)
    assert "Paris" in client.chat("What is the capital of France?").text
    with _engine_dies_and_another_user_takes_its_port(ep.pid, port) as log:
        with pytest.raises(EndpointUnreachableError, match="no longer running; nothing was sent"):
            client.chat("my secret prompt")
        assert not log.exists() or b"secret prompt" not in log.read_bytes()
    stop(ep.name)


@contextlib.contextmanager
def _engine_dies_and_another_user_takes_its_port(pid: int, port: int) -> Iterator[Path]:
    """The engine is killed (an OOM kill, a crash); another user binds its port and records what it
    hears (the log it yields); that user's server is stopped at the end."""
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while process.is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with shared_tmp() as tmp:
        os.chmod(tmp, 0o777)
        log = tmp / "heard.log"
        impostor = start_as(NOBODY, _serve_recording, port, str(log))
        try:
            deadline = time.monotonic() + 30
            while not process.port_open("127.0.0.1", port) and time.monotonic() < deadline:
                time.sleep(0.05)
            yield log
        finally:
            _kill(impostor.pid)


def test_a_port_held_by_another_user_is_named_when_refused(tmp_path):
    """Before an engine starts: a port in use says who holds it (uid, PID, command)."""
    require_root()
    port = process.free_port()
    with shared_tmp() as tmp:
        os.chmod(tmp, 0o777)
        impostor = start_as(NOBODY, _serve_recording, port, str(tmp / "x.log"))
        try:
            deadline = time.monotonic() + 30
            while not process.port_open("127.0.0.1", port) and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(Exception, match=re.escape(f"PID {impostor.pid}")) as info:
                start(_fake_plan(port, "late"), ready_timeout_s=30)
            assert "uid 65534" in str(info.value)
            assert "already in use" in str(info.value)
        finally:
            _kill(impostor.pid)


def test_the_telemetry_panel_scrapes_no_port_another_user_took_after_the_engine_died():
    """The panel's engine watcher sends the engine's key with each /metrics scrape: after the engine
    dies and another user binds its port, the scrape is refused before anything is sent."""
    from ui.test_telemetry_panel import FakeHost, HandSampler
    from workbench.telemetry import EventLog
    from workbench.ui import TelemetryPanel

    require_root()
    event_log = EventLog()
    port = process.free_port()
    ep = start(_fake_plan(port, "watched"), ready_timeout_s=60)
    panel = TelemetryPanel(sampler=HandSampler(interval_s=1, history_s=60, sources=[FakeHost()]), window_s=60,
                           event_log=event_log)
    try:
        [watcher] = [w for w in panel.engine_watchers() if w.name == ep.name]
        assert watcher.scrape_once() is not None  # the engine's own page, while it runs
        with _engine_dies_and_another_user_takes_its_port(ep.pid, port) as log:
            assert watcher.scrape_once() is None
            assert isinstance(watcher.last_error, EndpointUnreachableError)
            assert not log.exists()
    finally:
        panel.close()
        event_log.close()
        stop(ep.name)
