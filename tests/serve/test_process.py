"""Engine processes: started in their own group, stopped with everything they spawned, failures reported."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.errors import EngineStartError
from workbench.serve import EndpointClient, EndpointRegistry, ServePlan, process, start, stop
from workbench.serve.listener import group_members

FAKE_SERVER = Path(__file__).with_name("fake_openai.py")


def _plan(argv: list[str], port: int, name: str = "fake") -> ServePlan:
    return ServePlan(name, "tiny", "transformers", ("cpu",), port, tuple(argv), {}, 1, None)


def _fake_argv(port: int, *, spawn_file: Path | None = None) -> list[str]:
    if spawn_file is None:
        return [sys.executable, str(FAKE_SERVER), "--port", str(port), "--served-model-name", "fake-model"]
    code = (f"import subprocess, sys, runpy\n"
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(spawn_file)!r}, 'w').write(str(c.pid))\n"
            f"sys.argv = [{str(FAKE_SERVER)!r}, '--port', '{port}', '--served-model-name', 'fake-model']\n"
            f"runpy.run_path({str(FAKE_SERVER)!r}, run_name='__main__')\n")
    return [sys.executable, "-c", code]


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_running(pid):
            return True
        time.sleep(0.1)
    return False


def test_start_answers_and_stop_takes_the_whole_group(tmp_path: Path) -> None:
    port = process.free_port()
    spawned = tmp_path / "grandchild.pid"
    ep = start(_plan(_fake_argv(port, spawn_file=spawned), port), detach=True, ready_timeout_s=60)
    assert ep.pid
    assert ep.model == "fake-model"
    assert ep.base_url == f"http://127.0.0.1:{port}/v1"
    assert EndpointRegistry().get("fake").pid == ep.pid
    grandchild = int(spawned.read_text())
    assert process.is_running(grandchild)
    assert group_members(ep.pid)
    assert "Paris" in EndpointClient("fake").chat("What is the capital of France?").text

    report = stop("fake")
    assert report.was_running
    assert not process.is_running(ep.pid)
    assert _gone(grandchild)
    assert group_members(ep.pid) == []
    assert not process.port_open("127.0.0.1", port)
    assert EndpointRegistry().list() == []


def test_a_recycled_pid_is_never_signalled() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        # A record whose start time is not this process's: the PID now belongs to someone else.
        assert process.stop_group(victim.pid, pid_create_time=12345.0) is False
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_engine_that_crashes_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    port = process.free_port()
    argv = [sys.executable, "-c", "import sys; print('loading weights...'); "
                                  "sys.exit('ValueError: this checkpoint is damaged (fake)')"]
    with pytest.raises(EngineStartError) as info:
        start(_plan(argv, port), ready_timeout_s=60)
    err = info.value
    assert err.returncode == 1
    assert "this checkpoint is damaged" in str(err)
    assert "this checkpoint is damaged" in err.log_tail
    assert "loading weights" in Path(err.log_path).read_text()
    assert EndpointRegistry().list() == []


def test_engine_that_never_answers_is_stopped(tmp_path: Path) -> None:
    port = process.free_port()
    pid_file = tmp_path / "hang.pid"
    argv = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                  "print('still loading', flush=True); time.sleep(600)"]
    with pytest.raises(EngineStartError, match="did not answer .* within 3 s") as info:
        start(_plan(argv, port), ready_timeout_s=3)
    assert "still loading" in info.value.log_tail
    pid = int(pid_file.read_text())
    assert not process.is_running(pid)
    assert group_members(pid) == []
    assert EndpointRegistry().list() == []


def _child_script(port: int, detach: bool) -> str:
    return (
        "import sys\n"
        f"sys.path[:0] = [{str(FAKE_SERVER.parent)!r}]\n"
        "from workbench.serve import ServePlan, start\n"
        f"plan = ServePlan('kernel-ep', 'tiny', 'transformers', ('cpu',), {port}, "
        f"tuple({_fake_argv(port)!r}), {{}}, 1, None)\n"
        f"ep = start(plan, detach={detach}, ready_timeout_s=60)\n"
        "print(ep.pid, flush=True)\n"
    )


@pytest.mark.parametrize("detach", [False, True])
def test_engine_started_from_a_kernel_stops_at_its_exit_unless_detached(detach: bool) -> None:
    port = process.free_port()
    out = subprocess.run([sys.executable, "-c", _child_script(port, detach)], capture_output=True, text=True,
                         timeout=120, check=True)
    pid = int(out.stdout.split()[-1])
    if detach:
        assert process.is_running(pid)
        assert process.port_open("127.0.0.1", port)
        status = EndpointRegistry().statuses()[0]
        assert status.state == "running"
        assert not status.orphaned
        assert stop("kernel-ep").was_running
    else:
        # atexit ran in the child before it exited: the engine is gone and unregistered.
        assert not process.is_running(pid)
        assert group_members(pid) == []
        assert EndpointRegistry().list() == []
    assert not process.port_open("127.0.0.1", port)


def test_a_port_in_use_is_refused_before_the_engine_starts(seeded_store, tmp_path) -> None:
    import socket

    from workbench.errors import ConfigError
    from workbench.serve.launch import plan_serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plan = plan_serve("SmolLM2-135M-Instruct", engine="transformers", port=port)
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            start(plan)
        assert time.monotonic() - t0 < 5  # refused, not found out after the engine loaded
    assert EndpointRegistry().list() == []
