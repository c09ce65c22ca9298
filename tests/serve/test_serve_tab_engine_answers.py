"""The Serve tab's `transformers serve` engine answers the Prompt tab (every Sampling control set),
`workbench run --endpoint NAME --temperature 0.7`, and the README's Python example.

One real engine on the CPU for the whole test (starting one takes most of its time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.runtime import GenerationParams
from workbench.serve import EndpointClient
from workbench.ui.prompt_panel import PromptPanel
from workbench.ui.serve_panel import ServePanel

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def test_the_serve_tabs_engine_answers_every_panel_and_command(seeded_store, tmp_path: Path) -> None:
    from workbench.runtime import Registry
    from workbench.store import ModelStore

    serve_tab = ServePanel()
    ep = serve_tab.start_engine(SMOL, engine="transformers", devices="cpu")
    prompt_tab = None
    try:
        prompt_tab = PromptPanel(Registry(ModelStore([tmp_path / "empty"], cache_path=None)))
        client = EndpointClient(ep.name)
        # Greedy first (transformers' continuous batching keeps the first request's sampling
        # settings), with a stop string the engine itself does not apply per request.
        greedy = client.chat(QUESTION, GenerationParams(temperature=0, max_new_tokens=24))
        assert "Paris" in greedy.text
        cut = client.chat(QUESTION, GenerationParams(temperature=0, max_new_tokens=24, stop=("Paris",)))
        assert cut.stopped_by == "stop_string"
        assert "Paris" not in cut.text
        assert greedy.text.startswith(cut.text)

        # The Prompt tab with its defaults (temperature 0.7, top k 50): answered, not HTTP 422.
        prompt_tab.widget  # noqa: B018 (the live widgets)
        prompt_tab.refresh_models()
        prompt_tab.controls.model.value = f"endpoint:{ep.name}"
        r = prompt_tab.send(QUESTION)
        assert r.text
        assert r.new_tokens > 0
        assert r.ttft_s > 0
        assert r.not_sent == ("top_k",)
        assert "top_k=50 was not sent" in prompt_tab.message[0]

        # Every control of the Sampling section, through its widget.
        c = prompt_tab.controls
        c.params["max_new_tokens"].value = 6
        c.params["temperature"].value = 0.9
        c.params["top_p"].value = 0.8
        c.params["top_k"].value = 20
        c.params["repetition_penalty"].value = 1.3
        c.seed.value = "3"
        c.stop_at.value = "###"
        r = prompt_tab.send("Say hello.")
        assert r.text
        assert 0 < r.new_tokens <= 6
        assert r.stopped_by in ("max_new_tokens", "eos", "stop_string")
        assert r.not_sent == ("top_k", "repetition_penalty")
        assert "repetition_penalty=1.3 was not sent" in prompt_tab.message[0]

        # The command line, with sampling on.
        out = subprocess.run([sys.executable, "-m", "workbench.cli", "run", "--endpoint", ep.name, "--prompt",
                              QUESTION, "--temperature", "0.7", "--max-new-tokens", "16", "--json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        doc = json.loads(out.stdout)
        assert doc["text"]
        assert doc["new_tokens"] > 0
        assert doc["not_sent"] == ["top_k"]
        assert "top_k=50 was not sent" in out.stderr

        # The README's "Serving" example, as written there.
        results = client.batch(["Hello", "Bonjour"], GenerationParams(max_new_tokens=32))
        assert len(results) == 2
        assert all(x.text for x in results)
        assert all(x.new_tokens <= 32 for x in results)
    finally:
        if prompt_tab is not None:
            prompt_tab.close()
        serve_tab.stop_endpoint(ep.name)
        serve_tab.close()
