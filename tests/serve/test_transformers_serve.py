"""The embedded model served on the CPU by a real ``transformers serve``, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.serve import process
from workbench.serve.listener import group_members

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def _workbench(*args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", *args, "--json"], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_serve_ask_and_stop(seeded_store) -> None:
    from openai import OpenAI

    ep = _workbench("serve", SMOL, "--engine", "transformers")
    assert ep["engine"] == "transformers"
    assert ep["devices"] == ["cpu"]
    assert ep["name"] == SMOL
    assert ep["base_url"].startswith("http://127.0.0.1:")
    port = int(ep["base_url"].rsplit(":", 1)[1].split("/")[0])
    pid = ep["pid"]
    try:
        assert process.is_running(pid)
        assert process.port_open("127.0.0.1", port)

        # The official client, streaming, as any OpenAI user would, with the engine's own key
        # (`endpoints share` hands it over; without it the engine answers 401).
        key = _workbench("endpoints", "share", SMOL)["api_key"]
        assert key
        assert key not in json.dumps(ep)
        client = OpenAI(base_url=ep["base_url"], api_key=key, max_retries=0, timeout=300)
        stream = client.chat.completions.create(model=ep["model"], stream=True, max_tokens=24, temperature=0,
                                                messages=[{"role": "user", "content": QUESTION}])
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len([p for p in pieces if p]) > 1  # it streamed, piece by piece
        assert "Paris" in "".join(pieces)

        # Through the workbench: the same JSON as a local run.
        run = _workbench("run", "--endpoint", SMOL, "--prompt", QUESTION, "--max-new-tokens", "24")
        assert "Paris" in run["text"]
        assert run["new_tokens"] > 0
        assert run["ttft_s"] > 0
        assert run["tokens_per_s"] > 0

        # The engine holds about what the fit counted: its paged cache is sized to the counted
        # context (--cb-num-blocks), not to 60-90% of the machine's free RAM (transformers'
        # default: 13 GiB was seen). Above the estimate: the interpreter, torch and the server.
        import psutil

        engine = psutil.Process(pid)
        rss = sum(p.memory_info().rss for p in [engine, *engine.children(recursive=True)])
        assert "--cb-num-blocks" in engine.cmdline()
        assert rss < ep["estimated_bytes"] + (512 << 20), (rss, ep["estimated_bytes"])

        listed = _workbench("endpoints")
        assert [(e["name"], e["state"]) for e in listed] == [(SMOL, "running")]
    finally:
        stopped = _workbench("endpoints", "stop", SMOL)
    assert stopped["was_running"] is True
    assert not process.is_running(pid)
    assert group_members(pid) == []
    assert not process.port_open("127.0.0.1", port)
    assert _workbench("endpoints") == []
