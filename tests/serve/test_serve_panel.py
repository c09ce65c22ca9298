"""The Serve tab: start an engine (the fake vllm on fake GPUs), see it listed with its log, stop it."""

from __future__ import annotations

from fakes.fake_pynvml import FakeGpu
from workbench.errors import LoadSpecError
from workbench.serve import process
from workbench.ui.serve_panel import ServePanel

SMOL = "SmolLM2-135M-Instruct"


def test_start_watch_stop_and_errors_in_the_banner(seeded_store, fake_vllm, fake_nvml, clean_devices) -> None:
    fake_nvml([FakeGpu(memory_total_bytes=8 * 2**30, memory_used_bytes=5 * 2**30)], torch=True)
    panel = ServePanel()
    panel.widget  # noqa: B018 (build the widgets, as a live display would)
    assert SMOL in panel.controls.model.options

    # A refused start: the banner says why, and the panel stays usable.
    try:
        panel.start_engine(SMOL, engine="vllm", devices="cpu")
    except LoadSpecError:
        pass
    assert panel.message[1] == "error"
    assert "GPUs only" in panel.message[0]

    ep = panel.start_engine(SMOL, engine="vllm", devices="cuda:0")
    assert panel.message[1] == "ok"
    assert ep.base_url in panel.message[0]
    assert panel.controls.endpoint.value == SMOL
    assert "running" in panel.outputs.table.value
    assert "fake engine serving" in panel.outputs.log.value
    assert SMOL in panel.static_html()
    assert ep.base_url in panel.static_html()

    assert panel.stop_endpoint(SMOL).was_running
    assert not process.is_running(ep.pid)
    assert panel.controls.endpoint.options == ()
    assert "No endpoints" in panel.outputs.table.value
    panel.close()
