"""GGUF entries served by llama.cpp: llama-cpp-python's real server answering the openai client,
and a ``llama-server`` command (a fake engine) given its slots, context and key."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.serve import process
from workbench.store import ModelStore
from workbench.store.importer import DEFAULT_GGUF_NAME, embedded_gguf_path, keep_gguf

from .conftest import FAKE_SERVER

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def gguf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gguf-serve-store")
    keep_gguf(embedded_gguf_path(), ModelStore([root], cache_path=None), name=DEFAULT_GGUF_NAME)
    return root


@pytest.fixture
def gguf_store(monkeypatch, isolated_store, gguf_root) -> Path:
    from workbench.config import reset_settings

    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(gguf_root)]))
    monkeypatch.delenv("WORKBENCH_LLAMACPP_COMMAND", raising=False)
    reset_settings()
    return gguf_root


def _workbench(*args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", *args, "--json"], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_auto_picks_llamacpp_for_a_gguf_entry_and_counts_its_slots(gguf_store) -> None:
    from workbench.serve.launch import plan_serve
    from workbench.store.gguf_estimate import llamacpp_parts

    plan = plan_serve(DEFAULT_GGUF_NAME, engine="auto", max_model_len=1024, free=lambda d: 64 * 2**30)
    assert plan.engine == "llamacpp"
    assert plan.served_model == DEFAULT_GGUF_NAME
    assert plan.argv[1:4] == ("-P", "-m", "llama_cpp.server")
    assert "--n_ctx" in plan.argv
    assert plan.argv[plan.argv.index("--n_ctx") + 1] == "1024"
    assert plan.argv[plan.argv.index("--n_gpu_layers") + 1] == "0"
    entry = ModelStore().get(DEFAULT_GGUF_NAME)
    one = plan.needed_bytes
    two = plan_serve(DEFAULT_GGUF_NAME, engine="llamacpp", max_model_len=1024, parallel=2,
                     free=lambda d: 64 * 2**30).needed_bytes
    assert two - one == llamacpp_parts(entry, 2048, n_seq=2)["kv_cache"] - llamacpp_parts(entry, 1024)["kv_cache"] \
        + llamacpp_parts(entry, 2048, n_seq=2)["compute_buffer"] - llamacpp_parts(entry, 1024)["compute_buffer"]
    with pytest.raises(Exception, match="own quantization"):
        plan_serve(DEFAULT_GGUF_NAME, engine="llamacpp", quant="nf4")


def test_a_llama_server_command_gets_slots_and_its_key_in_the_environment(gguf_store, tmp_path, monkeypatch) -> None:
    from workbench.config import reset_settings
    from workbench.serve.launch import plan_serve, start, stop

    exe = tmp_path / "bin" / "llama-server"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(FAKE_SERVER)!r}\n"
                   f"runpy.run_path({str(FAKE_SERVER)!r}, run_name='__main__')\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "argv.json"
    monkeypatch.setenv("WORKBENCH_LLAMACPP_COMMAND", str(exe))
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(record))
    reset_settings()
    plan = plan_serve(DEFAULT_GGUF_NAME, engine="llamacpp", max_model_len=512, parallel=3)
    ep = start(plan, ready_timeout_s=60)
    try:
        seen = json.loads(record.read_text())
        argv = seen["argv"]
        assert argv[argv.index("--parallel") + 1] == "3"
        assert argv[argv.index("-c") + 1] == "1536"
        assert argv[argv.index("--alias") + 1] == DEFAULT_GGUF_NAME
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert "LLAMA_API_KEY" in seen["key_variables"]
        assert ep.secret not in " ".join(argv)
        assert ep.model == DEFAULT_GGUF_NAME
        assert ep.engine == "llamacpp"
    finally:
        stop(ep.name)
    assert not process.is_running(ep.pid)


@pytest.mark.slow
def test_serve_a_gguf_with_llamacpp_and_ask_with_the_openai_client(gguf_store, monkeypatch) -> None:
    from openai import AuthenticationError, OpenAI

    # llama_cpp.server reads any of its settings from the environment by bare name: a user's
    # CONFIG_FILE would replace the command line, VOCAB_ONLY would load no weights. The engine
    # must not inherit them (serve/engines.py inherited_settings).
    monkeypatch.setenv("CONFIG_FILE", str(gguf_store / "no-such-config.json"))
    monkeypatch.setenv("vocab_only", "true")
    ep = _workbench("serve", DEFAULT_GGUF_NAME, "--engine", "llamacpp", "--max-model-len", "1024",
                    "--ready-timeout", "240", timeout=300)
    pid = ep["pid"]
    port = int(ep["base_url"].rsplit(":", 1)[1].split("/")[0])
    try:
        assert ep["engine"] == "llamacpp"
        assert ep["model"] == DEFAULT_GGUF_NAME
        key = _workbench("endpoints", "share", DEFAULT_GGUF_NAME)["api_key"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert key
        assert key not in cmdline
        assert "llama_cpp.server" in cmdline
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=ep["base_url"], api_key="wrong", max_retries=0, timeout=60).models.list()
        client = OpenAI(base_url=ep["base_url"], api_key=key, max_retries=0, timeout=300)
        stream = client.chat.completions.create(
            model=ep["model"], stream=True, max_tokens=24, temperature=0,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len([p for p in pieces if p]) > 1
        assert "Paris" in "".join(pieces)
        # The same through `workbench run --endpoint`, its --system included (a new user's run lost it and
        # got the model's default persona; llama_cpp.server also penalises repeats, 1.1, unless told not to).
        run = _workbench("run", "--endpoint", DEFAULT_GGUF_NAME, "--prompt", QUESTION, "--system", SYSTEM,
                         "--max-new-tokens", "24")
        assert "Paris" in run["text"]
    finally:
        stopped = _workbench("endpoints", "stop", DEFAULT_GGUF_NAME)
    assert stopped["was_running"] is True
    assert not process.is_running(pid)
    assert not process.port_open("127.0.0.1", port)


def test_the_settings_llama_cpp_server_reads_from_the_environment_are_dropped_for_it() -> None:
    from llama_cpp.server.settings import Settings

    from workbench.serve.engines import inherited_settings

    argv = [sys.executable, "-m", "llama_cpp.server", "--model", "m.gguf"]
    dropped = inherited_settings("llamacpp", argv)
    assert {n.lower() for n in Settings.model_fields} | {"config_file"} <= dropped
    # A llama-server binary and the other engines read only their own prefixed variables.
    assert inherited_settings("llamacpp", ["/usr/bin/llama-server", "-m", "m.gguf"]) == frozenset()
    assert inherited_settings("vllm", ["vllm", "serve", "m"]) == frozenset()
