"""The Prompt panel with an OpenAI-compatible endpoint instead of a loaded model (a local fake server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.fake_openai import ANSWER, serve_in_thread
from workbench.errors import EndpointModelNotFoundError
from workbench.serve import EndpointRegistry
from workbench.ui.prompt_panel import PromptPanel


@pytest.fixture
def panel(tmp_path: Path) -> Iterator[PromptPanel]:
    from workbench.runtime import Registry
    from workbench.store import ModelStore

    srv, _ = serve_in_thread("fake-model")
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    EndpointRegistry().add_remote("fake", url)
    EndpointRegistry().add_remote("wrong-model", url, model="missing")
    p = PromptPanel(Registry(ModelStore([tmp_path / "empty"], cache_path=None)))
    yield p
    p.close()
    srv.shutdown()
    srv.server_close()


def test_chat_and_batch_through_an_endpoint(panel: PromptPanel) -> None:
    panel.widget  # noqa: B018 (the live widgets, as in a notebook)
    assert panel.refresh_models() == ["endpoint:fake", "endpoint:wrong-model"]
    assert panel.model == "endpoint:fake"
    panel.set_params(temperature=0.0)
    r = panel.send("What is the capital of France?")
    assert r.text == "".join(ANSWER)
    assert r.new_tokens == len(ANSWER)
    assert r.ttft_s > 0
    assert panel.history[-1] == {"role": "assistant", "content": "".join(ANSWER)}
    assert "Paris" in panel.outputs.transcript.value
    assert "eos" in panel.outputs.metrics.value

    results = panel.run_batch(["one", "two"])
    assert [x.text for x in results] == ["".join(ANSWER)] * 2


def test_an_endpoint_error_shows_in_the_banner_and_the_panel_stays_usable(panel: PromptPanel) -> None:
    panel.refresh_models()
    panel.model = "endpoint:wrong-model"
    with pytest.raises(EndpointModelNotFoundError):
        panel.send("hi")
    assert panel.message[1] == "error"
    assert "wrong-model" in panel.message[0]
    panel.model = "endpoint:fake"
    assert "Paris" in panel.send("hi").text
