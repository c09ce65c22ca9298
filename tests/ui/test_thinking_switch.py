"""The Prompt tab's thinking switch (templates that take enable_thinking) and reasoning folded above the answer."""

from __future__ import annotations

import pytest

from runtime.test_generation import THINK_TEMPLATE, cjk_model


@pytest.fixture(scope="module")
def thinking_llama(tmp_path_factory):
    reg, loaded = cjk_model(tmp_path_factory, "tiny-thinker", THINK_TEMPLATE)
    yield loaded
    reg.unload_all()


@pytest.fixture(scope="module")
def plain_llama(tmp_path_factory):
    reg, loaded = cjk_model(tmp_path_factory, "tiny-plain")
    yield loaded
    reg.unload_all()


def test_the_prompt_tab_shows_the_thinking_switch_and_folds_the_reasoning(thinking_llama, plain_llama):
    from workbench.ui.prompt_panel import PromptPanel

    class Two:  # the panel's registry: both models loaded
        def list(self):
            return [plain_llama, thinking_llama]

        def get(self, name):
            return {m.name: m for m in self.list()}[name]

    panel = PromptPanel(Two())
    try:
        panel.widget  # noqa: B018 (the live widgets)
        c = panel.controls
        c.model.value = plain_llama.name
        assert c.thinking.layout.display == "none"  # no chat template at all
        c.model.value = thinking_llama.name
        assert c.thinking.layout.display is None
        c.params["temperature"].value = 0.0
        c.params["max_new_tokens"].value = 6
        r = panel.send("你是人")
        assert len(r.reasoning) == 6
        assert r.text == ""
        assert "<details class='workbench-reasoning'" in panel.outputs.transcript.value
        assert r.reasoning in panel.outputs.transcript.value
        c.thinking.value = False
        assert panel.generation_params().enable_thinking is False
        r = panel.send("你是人")
        assert r.reasoning == ""
        assert len(r.text) == 6
    finally:
        panel.close()
