"""The Load and Prompt tabs with a GGUF entry: it runs on llama.cpp, the Load tab says so, and it answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbench.store import ModelStore
from workbench.store.importer import DEFAULT_GGUF_NAME, embedded_gguf_path, keep_gguf
from workbench.ui import LoadPanel, PromptPanel

pytestmark = pytest.mark.slow


@pytest.fixture
def gguf_store(monkeypatch: pytest.MonkeyPatch, isolated_store: Path, tmp_path: Path) -> Path:
    from workbench.config import reset_settings

    root = tmp_path / "gguf-root"
    keep_gguf(embedded_gguf_path(), ModelStore([root], cache_path=None), name=DEFAULT_GGUF_NAME)
    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(root)]))
    reset_settings()
    return root


def test_a_gguf_entry_loads_on_llamacpp_and_answers_in_the_prompt_tab(gguf_store: Path) -> None:
    from workbench.runtime import get_registry

    registry = get_registry()
    try:
        panel = LoadPanel(registry=registry)
        _ = panel.widget
        panel.controls.model.value = DEFAULT_GGUF_NAME
        assert "in Q4_1 needs about" in panel.outputs.check.value
        assert "llama.cpp compute buffers" in panel.outputs.check.value
        panel.controls.load.click()
        loaded = panel.wait()
        assert loaded.engine == "llamacpp"
        assert "llama.cpp" in panel.outputs.loaded.value
        assert "Q4_1" in panel.outputs.loaded.value

        prompt = PromptPanel(registry=registry)
        _ = prompt.widget
        prompt.controls.model.value = loaded.name
        prompt.controls.system_prompt.value = "You are a helpful assistant."
        prompt.controls.params["temperature"].value = 0.0
        prompt.controls.params["max_new_tokens"].value = 24
        prompt.controls.input.value = "What is the capital of France?"
        prompt.controls.send.click()
        result = prompt.wait()
        assert "Paris" in result.text
        assert "Paris" in prompt.outputs.transcript.value
        assert "Tokens/s" in prompt.outputs.metrics.value
        assert result.tokens_per_s > 0
    finally:
        for m in list(registry.list()):
            registry.unload(m.name)
