"""`workbench run` streams and keeps what arrived on Ctrl-C; `workbench serve` refuses bad arguments
before torch is imported; `workbench store inspect` prints a summary for people.

Real subprocesses: SIGINT is sent once the answer has started to arrive on stdout (read
from the pipe, not timed), and torch's absence is read from the command's own modules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SMOL = "SmolLM2-135M-Instruct"


@pytest.fixture
def env(isolated_store: Path, seeded_root: Path) -> dict[str, str]:
    store = os.pathsep.join([str(isolated_store), str(seeded_root)])
    return {**os.environ, "WORKBENCH_STORE": store, "PYTHONUNBUFFERED": "1"}


def _interrupt_once_streaming(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Start the command, wait until stdout has text, send SIGINT; ``(rc, stdout, stderr)``."""
    # A command started in the background (CI, `make test &`) inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: give the child the terminal's default, as a user has.
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
        assert first, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (first + rest).decode(), err.decode()


def test_run_streams_and_ctrl_c_keeps_what_arrived(env) -> None:
    rc, out, err = _interrupt_once_streaming(
        ["run", SMOL, "--prompt", "Count from 1 to 1000, one number per line.", "--max-new-tokens", "800"], env)
    assert rc == 130, err[-2000:]
    assert out.strip()
    assert "interrupted:" in err
    assert "tokens" in err  # what arrived, then its numbers


def test_run_endpoint_streams_and_ctrl_c_keeps_what_arrived(env, tmp_path: Path) -> None:
    from serve.fake_openai import ANSWER, serve_in_thread
    from workbench.serve import EndpointRegistry

    srv, _log = serve_in_thread("fake-model")
    try:
        EndpointRegistry().add_remote("slow", f"http://127.0.0.1:{srv.server_address[1]}/v1", model="slow")
        rc, out, err = _interrupt_once_streaming(["run", "--endpoint", "slow", "--prompt", "hi"], env)
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 130, err[-2000:]
    # The fake sends a word every 0.2 s: what arrived before Ctrl-C is printed, nothing else.
    assert out.strip()
    assert "".join(ANSWER).startswith(out.strip())
    assert "interrupted:" in err


def test_run_json_is_one_document_at_the_end(env) -> None:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "run", SMOL, "--prompt",
                          "What is the capital of France?", "--max-new-tokens", "12", "--temperature", "0",
                          "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert "Paris" in doc["text"]
    assert doc["interrupted"] is False
    assert doc["reasoning"] == ""


PROBE = ("import sys\nfrom workbench.cli import main\nrc = main(sys.argv[1:])\n"
         "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\nsys.exit(rc)\n")


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, "serve", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=300)


def test_serve_refuses_bad_arguments_before_torch_is_imported(env) -> None:
    from workbench.serve import EndpointRegistry

    # A device that is not there (no GPU here, or not that many).
    out = _serve(env, SMOL, "--device", "cuda:7")
    assert out.returncode == 1
    assert "no device 'cuda:7'" in out.stderr
    assert "NO-TORCH" in out.stderr
    assert json.loads(out.stdout)["error"] == "DeviceNotFoundError"
    # A model that is not in the store.
    out = _serve(env, "no-such-model")
    assert out.returncode == 1
    assert "no-such-model" in out.stderr
    assert "NO-TORCH" in out.stderr
    # A name already in use.
    EndpointRegistry().add_remote("taken", "http://127.0.0.1:9/v1")
    out = _serve(env, SMOL, "--name", "taken")
    assert out.returncode == 1
    assert "'taken' is already registered" in out.stderr
    assert "NO-TORCH" in out.stderr
    assert "starting" not in out.stderr  # nothing was started, nor announced


def test_store_inspect_prints_a_summary_for_people(env) -> None:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "store", "inspect", SMOL], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(subprocess.run([sys.executable, "-m", "workbench.cli", "store", "inspect", SMOL, "--json"],
                                    capture_output=True, text=True, env=env, timeout=300).stdout)
    text = out.stdout
    assert SMOL in text
    assert "None" not in text
    assert "[]" not in text
    assert "{" not in text
    assert f"{doc['params']:,}" in text or "M" in text  # the parameter count, for people
    assert "Memory to load" in text
    assert "nf4" in text
    assert "KV cache" in text
