"""The Store panel, driven headless through its widgets and methods, on the tiny models."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest

from workbench.ui import StorePanel
from workbench.ui.store_panel import entries_table_html


def test_lists_sorts_and_filters_through_the_widgets(tiny_store: Path) -> None:
    panel = StorePanel()
    names = [e.name for e in panel.entries]
    assert {"tiny-llama", "tiny-gpt2", "tiny-llama-sharded"} <= set(names)
    _ = panel.widget  # build
    panel.controls.filter.value = "llama"
    assert {e.name for e in panel.visible} == {"tiny-llama", "tiny-llama-sharded"}
    assert "tiny-llama-sharded" in panel.outputs.table.value
    assert "tiny-gpt2" not in panel.outputs.table.value
    panel.controls.filter.value = ""
    panel.controls.sort.value = "params"
    panel.controls.descending.value = True
    params = [e.params for e in panel.visible]
    assert params == sorted(params, reverse=True)


def test_details_show_estimates_and_fits(tiny_store: Path) -> None:
    panel = StorePanel()
    _ = panel.widget
    panel.controls.pick.value = "tiny-qwen2"
    details = panel.outputs.details.value
    assert panel.selected == "tiny-qwen2"
    for text in ("Estimate (before loading)", "float32", "nf4", "KV cache / 1k tokens", "fits on cpu in"):
        assert text in details


def test_broken_entry_shows_its_reason_and_errors_go_to_the_banner(tiny_store: Path, tiny_models) -> None:
    damaged = tiny_store / "damaged"
    shutil.copytree(tiny_models["llama"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    panel = StorePanel()
    _ = panel.widget
    entry = next(e for e in panel.entries if e.name == "damaged")
    assert entry.status == "broken"
    panel.select("damaged")
    assert "broken:" in panel.outputs.details.value
    assert "damaged" in panel.outputs.details.value
    # A failing callback lands in the banner, escaped, and the panel keeps working.
    panel.guarded(panel.select)("no-such-<model>")
    kind, html = panel.message[1], panel.outputs.banner.value
    assert kind == "error"
    assert "no-such-&lt;model&gt;" in html
    assert "Traceback" not in html
    panel.refresh()
    assert panel.outputs.table.value


def test_text_from_model_folders_is_escaped(tiny_store: Path) -> None:
    entry = StorePanel().entries[0]
    evil = replace(entry, model_type="<script>alert(1)</script>", dtype="<b>x</b>")
    html = entries_table_html([evil])
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<b>x</b>" not in html


def test_import_a_model_folder(tiny_store: Path, tiny_models) -> None:
    panel = StorePanel()
    entry = panel.import_model(tiny_models["gpt2"], name="my-gpt2")
    assert entry.name == "my-gpt2"
    assert entry.writable
    assert "my-gpt2" in [e.name for e in panel.entries]
    assert panel.selected == "my-gpt2"
    with pytest.raises(FileNotFoundError):
        panel.import_model(tiny_store / "nowhere")
    assert panel.message[1] == "error"


def test_static_twin_and_live_bundle(tiny_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    panel = StorePanel()
    monkeypatch.setenv("WORKBENCH_DISPLAY", "static")
    bundle = panel._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}
    assert "tiny-llama" in bundle["text/html"]
    assert not panel.built  # a report never creates widgets
    monkeypatch.setenv("WORKBENCH_DISPLAY", "live")
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "tiny-llama" in bundle["text/html"]
    # The mark JupyterLab's extension finds (extensions/gpu-meter/src/gone.ts, VIEW_MIME there):
    # what the output says where this view cannot come back, and what to run.
    mark = bundle["application/vnd.llm-workbench.view+json"]
    assert mark["title"] == "Store"
    assert mark["gone"].startswith("This Store view belongs to a kernel session that is gone")
    assert "Run this cell again" in mark["gone"]
    # A notebook holding that output is valid nbformat (nbformat's own schema, not ours).
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "panel", outputs=[nbformat.v4.new_output("display_data", data=bundle)])])
    nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))
