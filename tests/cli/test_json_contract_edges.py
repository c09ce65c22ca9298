"""ARCHITECTURE.md section 3 at its edges: with ``--json`` every exit leaves one JSON document on
stdout (argparse's usage errors and an interrupt included), a closed pipe is no traceback, and a
``workbench serve`` killed while it waits leaves no engine behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workbench import cli


def _workbench(*argv: str, tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORKBENCH_STORE": str(tmp_path / "user"), "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "workbench.cli", *argv], text=True, env=env, timeout=120, **kw)


@pytest.mark.parametrize("argv, said", [
    (["store", "list", "--json", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["run", "m", "--prompt", "p", "--dtype", "float8", "--json"], "argument --dtype: invalid choice: 'float8'"),
    (["store", "--json"], "the following arguments are required"),
])
def test_a_usage_error_with_json_is_one_document(tmp_path, argv, said) -> None:
    proc = _workbench(*argv, tmp_path=tmp_path, capture_output=True)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["error"] == "UsageError"
    assert said in doc["message"]
    assert said in proc.stderr


def test_a_usage_error_without_json_leaves_stdout_empty(tmp_path) -> None:
    proc = _workbench("store", "list", "--no-such-flag", tmp_path=tmp_path, capture_output=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--no-such-flag" in proc.stderr


def test_help_is_not_an_error_document(tmp_path) -> None:
    proc = _workbench("store", "list", "--json", "--help", tmp_path=tmp_path, capture_output=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage:")


def test_an_interrupt_with_json_is_one_document(monkeypatch, capsys) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("workbench.cli.devices.cmd_devices", interrupted)
    assert cli.main(["devices", "--json"]) == 130
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "KeyboardInterrupt"
    assert "interrupted" in out.err


def test_a_reader_that_goes_away_is_no_traceback(tmp_path) -> None:
    (tmp_path / "user").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "store", "list", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WORKBENCH_STORE": str(tmp_path / "user"),
                                 "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")})
    proc.stdout.close()  # like `| head -0`: the first write meets a closed pipe
    err = proc.stderr.read()
    proc.wait(timeout=120)
    proc.stderr.close()
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err
    assert proc.returncode == 1


CHILD = textwrap.dedent("""
    import sys
    from workbench import cli
    from workbench.cli import serve as serve_cli
    from workbench.serve import launch
    from workbench.serve.launch import ServePlan
    from workbench.serve.process import free_port

    # An engine that never answers: the command waits for it until it is killed.
    engine = [sys.executable, "-c", "import time; time.sleep(600)"]
    plan = ServePlan(name="never-ready", store_model="m", engine="transformers", devices=("cpu",),
                     port=free_port(), argv=tuple(engine), env={}, needed_bytes=0, served_model=None)
    launch.plan_serve = lambda *a, **k: plan
    serve_cli.preflight = lambda *a, **k: plan.name  # no store model "m": the checks before the plan pass
    sys.exit(cli.main(["serve", "m", "--engine", "transformers", "--json", "--ready-timeout", "300"]))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_serve_while_it_waits_stops_the_engine(tmp_path, sig) -> None:
    env = {**os.environ, "WORKBENCH_STORE": str(tmp_path / "user"), "WORKBENCH_CACHE_DIR": str(tmp_path / "cache"),
           "WORKBENCH_ENDPOINTS_FILE": str(tmp_path / "endpoints.json")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    engine_pid = None
    deadline = time.monotonic() + 120
    while engine_pid is None and time.monotonic() < deadline and proc.poll() is None:
        kids = subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True, text=True).stdout.split()
        engine_pid = next((int(k) for k in kids if _parent_chain_has(int(k), proc.pid)), None)
        time.sleep(0.2)
    try:
        assert engine_pid is not None, "the fake engine never started"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert json.loads(out)["error"] == "KeyboardInterrupt"
        assert "Traceback" not in err
        assert not _alive(engine_pid), "the engine outlived the killed command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if engine_pid and _alive(engine_pid):
            os.kill(engine_pid, signal.SIGKILL)


def _parent_chain_has(pid: int, ancestor: int) -> bool:
    for _ in range(5):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("extra, named", [
    (["SmolLM2-135M-Instruct"], "a model name"),
    (["--quant", "nf4"], "--quant"),
    (["--device", "cuda:0", "--dtype", "float32"], "--device, --dtype"),
])
def test_local_load_options_with_endpoint_are_refused_not_ignored(monkeypatch, capsys, extra, named) -> None:
    monkeypatch.setattr("workbench.cli.run.cmd_run_endpoint", lambda args: pytest.fail("the options were ignored"))
    assert cli.main(["run", "--endpoint", "team", "--prompt", "hi", "--json", *extra]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "ConfigError"
    assert f"{named} cannot go with --endpoint team" in doc["message"]
