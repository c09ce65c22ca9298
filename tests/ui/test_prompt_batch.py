"""The Prompt panel's batch: rows fill in as they finish under a count, and Stop stops the batch.

Real runtime, tiny-llama on the CPU; the Stop button is clicked from the batch table's own
repaint (when the second row is shown running), so the test does not depend on timing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workbench.runtime import GenerationParams, generate
from workbench.ui import LoadPanel, PromptPanel
from workbench.ui.display import esc

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France", "Hello world", "Count to ten"]


@pytest.fixture
def loaded(tiny_store: Path):
    from workbench.runtime import get_registry

    reg = get_registry()
    model = LoadPanel(registry=reg).load_model("tiny-llama", devices=["cpu"], dtype="float32")
    yield reg, model
    reg.unload_all()


def _captions(values: list[str]) -> list[str]:
    return [m.group(1) for v in values if (m := re.search(r"Batch: ([^<]+)<", v))]


def test_batch_rows_fill_in_as_they_finish_with_a_count(loaded) -> None:
    reg, model = loaded
    panel = PromptPanel(registry=reg)
    try:
        panel.set_params(temperature=0.0, max_new_tokens=6)
        shown: list[str] = []
        panel.outputs.batch.observe(lambda ch: shown.append(ch["new"]), names="value")
        panel.controls.batch_input.value = "\n".join(PROMPTS)
        panel.controls.run_batch.click()
        results = panel.wait()
        answers = [generate(model, p, GenerationParams(temperature=0.0, max_new_tokens=6)).text for p in PROMPTS]
        assert [r.text for r in results] == answers  # each row is the answer a single Send gives
        counts = list(dict.fromkeys(_captions(shown)))
        assert counts == ["0 of 3 done", "1 of 3 done", "2 of 3 done", "3 of 3 done"]
        # While the second row ran, the first one's answer was on show and the third was waiting.
        second_running = next(v for v in shown if "1 of 3 done" in v and "running" in v)
        assert (esc(answers[0]) in second_running, "waiting" in second_running) == (True, True)
        assert [r.state for r in panel.batch_rows] == ["done", "done", "done"]
        assert (panel.controls.stop_batch.disabled, panel.controls.run_batch.disabled) == (True, False)
    finally:
        panel.close()


def test_stop_ends_the_batch_and_marks_the_rest_stopped(loaded) -> None:
    reg, _model = loaded
    panel = PromptPanel(registry=reg)
    try:
        panel.set_params(temperature=0.0, max_new_tokens=200)
        shown: list[str] = []

        def repainted(change: dict) -> None:
            shown.append(change["new"])
            rows = panel.batch_rows
            if len(rows) == 3 and rows[1].state == "running" and not panel.controls.stop_batch.disabled:
                panel.controls.stop_batch.click()

        panel.outputs.batch.observe(repainted, names="value")
        panel.controls.batch_input.value = "\n".join(PROMPTS)
        panel.controls.run_batch.click()
        results = panel.wait()
        assert len(results) == 2
        assert [r.state for r in panel.batch_rows] == ["done", "done", "stopped"]
        assert panel.batch_rows[1].result.stopped_by == "cancelled"
        assert panel.batch_rows[1].result.new_tokens < 200
        assert _captions(shown)[-1] == "2 of 3 done, 1 stopped"
        assert "stopped" in panel.static_html()
        assert (panel.controls.stop_batch.disabled, panel.controls.run_batch.disabled) == (True, False)
    finally:
        panel.close()
