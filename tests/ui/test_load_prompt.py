"""Load and Prompt panels, and the Workbench app, driven through their widgets with the real runtime on tiny models."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from workbench.ui import LoadPanel, PromptPanel, Workbench

pytestmark = pytest.mark.slow


def _load(registry, model: str = "tiny-llama"):
    return LoadPanel(registry=registry).load_model(model, devices=["cpu"], dtype="float32")


def test_load_panel_checks_loads_places_and_unloads(tiny_store: Path, registry) -> None:
    panel = LoadPanel(registry=registry)
    _ = panel.widget
    panel.controls.model.value = "tiny-llama"
    panel.controls.dtype.value = "float32"
    assert ": fits" in panel.outputs.check.value
    assert "in float32 needs about" in panel.outputs.check.value
    panel.controls.budgets["cpu"].value = 0.00001  # about 10 KiB
    assert "does not fit" in panel.outputs.check.value
    panel.controls.budgets["cpu"].value = 0.0
    panel.controls.quant.value = "nf4"
    assert not panel.controls.double_quant.disabled
    assert "in nf4 needs about" in panel.outputs.check.value
    panel.controls.quant.value = "none"
    assert panel.controls.double_quant.disabled

    panel.controls.load.click()
    loaded = panel.wait()
    assert loaded.name in [m.name for m in registry.list()]
    assert panel.outputs.progress.value == 1.0
    assert panel.outputs.progress.bar_style == "success"
    assert loaded.name in panel.outputs.loaded.value
    assert "cpu:" in panel.outputs.loaded.value
    assert panel.message[1] == "ok"

    panel.controls.unload_pick.value = loaded.name
    panel.controls.unload.click()
    assert registry.list() == [] or loaded.name not in [m.name for m in registry.list()]
    assert "freed" in panel.outputs.banner.value
    assert "No model loaded" in panel.outputs.loaded.value


def test_load_errors_show_in_the_banner_and_the_panel_stays_usable(tiny_store: Path, registry) -> None:
    panel = LoadPanel(registry=registry)
    _ = panel.widget
    panel.controls.model.value = "tiny-llama"
    panel.controls.budgets["cpu"].value = 0.00001
    panel.controls.load.click()
    with pytest.raises(Exception):  # noqa: B017 - whichever WorkbenchError the runtime raises
        panel.wait()
    kind, html = panel.message[1], panel.outputs.banner.value
    assert kind == "error"
    assert "Traceback" not in html
    assert panel.outputs.progress.bar_style == "danger"
    assert not panel.controls.load.disabled
    panel.controls.budgets["cpu"].value = 0.0
    panel.controls.load.click()
    assert panel.wait().name


def test_prompt_streams_in_coarse_batches_with_metrics_clear_and_batch(tiny_store: Path, registry) -> None:
    _load(registry)
    panel = PromptPanel(registry=registry)
    _ = panel.widget
    assert panel.controls.model.value == "tiny-llama"
    assert not panel.controls.send.disabled
    panel.controls.params["max_new_tokens"].value = 48
    panel.controls.seed.value = "0"
    panel.controls.input.value = "Hello <world>"
    panel.controls.send.click()
    assert panel.controls.input.value == ""
    result = panel.wait()
    assert result.new_tokens > 0
    assert "Hello &lt;world&gt;" in panel.outputs.transcript.value
    assert "Tokens/s" in panel.outputs.metrics.value
    assert "TTFT" in panel.outputs.metrics.value
    # One unit per kind: TTFT and total both in seconds.
    assert f"{result.ttft_s:.3f} s" in panel.outputs.metrics.value
    assert " ms<" not in panel.outputs.metrics.value
    assert f"{result.total_s:.3f} s" in panel.outputs.metrics.value
    # At most ~10 repaints a second while streaming, plus the first and the last.
    assert panel.flushes <= result.total_s * 10 + 4
    assert [m["role"] for m in panel.history] == ["user", "assistant"]

    panel.controls.batch_input.value = "The capital of France\nHello world\n\n"
    panel.controls.run_batch.click()
    results = panel.wait()
    assert len(results) == 2
    assert "Batch" in panel.outputs.batch.value
    assert "Hello world" in panel.outputs.batch.value

    panel.clear()
    assert panel.history == []
    assert "No messages yet" in panel.outputs.transcript.value
    static = panel.static_html()
    assert "Tokens/s" in static
    assert "Batch" in static


def test_stop_ends_a_long_answer(tiny_store: Path, registry) -> None:
    _load(registry)
    panel = PromptPanel(registry=registry)
    _ = panel.widget
    panel.set_params(max_new_tokens=2000, seed=0, temperature=1.0)
    panel.send("Count to a thousand", wait=False)
    deadline = time.monotonic() + 60
    while not panel.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    panel.controls.stop.click()
    result = panel.wait()
    assert result.new_tokens < 2000
    assert panel.controls.stop.disabled
    assert not panel.controls.send.disabled


def test_prompt_errors_show_in_the_banner(tiny_store: Path, registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.ui.prompt_panel as prompt_panel

    monkeypatch.setattr(prompt_panel, "_endpoint_choices", lambda: [])  # this user has no endpoints either
    panel = PromptPanel(registry=registry)
    _ = panel.widget
    # Before anything is loaded the transcript says where a model comes from.
    assert "load one in the Load tab" in panel.outputs.transcript.value
    panel.controls.input.value = "hello"
    panel.controls.send.click()  # nothing loaded
    assert panel.message[1] == "error"
    assert "load" in panel.message[0].lower()
    _load(registry)
    panel.refresh_models()
    assert "No messages yet" in panel.outputs.transcript.value
    panel.controls.input.value = "   "
    panel.controls.send.click()
    assert panel.message[1] == "error"
    assert "empty" in panel.message[0]
    panel.controls.seed.value = "abc"
    assert "whole number" in panel.message[0]


def test_workbench_links_the_panels(tiny_store: Path, registry, monkeypatch: pytest.MonkeyPatch) -> None:
    wb = Workbench(registry=registry)
    _ = wb.widget
    assert wb.selected_tab == "Load"
    assert list(wb.panels) == ["Store", "Load", "Prompt", "Telemetry", "Quantization", "Serve"]
    wb.load.controls.model.value = "tiny-gpt2"
    wb.load.controls.load.click()
    loaded = wb.load.wait()
    # The Load tab stays, showing the placement and footprint, and offers the next step.
    assert wb.selected_tab == "Load"
    assert wb.prompt.model == loaded.name
    assert loaded.name in wb.load.outputs.loaded.value
    nxt = wb.load.controls.next
    assert nxt.layout.display != "none"
    assert "Prompt" in nxt.description
    nxt.click()
    assert wb.selected_tab == "Prompt"
    result = wb.prompt.send("Hello", wait=True)
    assert result.new_tokens > 0
    monkeypatch.setenv("WORKBENCH_DISPLAY", "static")
    html = wb._repr_mimebundle_()["text/html"]
    for title in ("Store", "Load", "Prompt", "Telemetry", "Tokens/s", "Plotly.newPlot"):
        assert title in html
    monkeypatch.setenv("WORKBENCH_DISPLAY", "live")
    assert "application/vnd.jupyter.widget-view+json" in wb._repr_mimebundle_()
    wb.close()
