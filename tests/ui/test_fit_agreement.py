"""The Store tab, the Load tab and the CLI give one answer to "does it fit?" (issue 16, section 4).

The cases are the ones where the Store tab used to disagree with the load: a model
whose weights fit in the GPU's raw free memory, but not once the CUDA context is held
back, or once another user's lease is counted. The Store tab must say it does not fit,
with the very numbers the Load tab shows and ``workbench run`` refuses with.
GPUs are faked at the NVML seam; panels are read through their public surface.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from fakes.fake_pynvml import FakeGpu
from workbench.cli import main
from workbench.devices.leases import LeaseBook
from workbench.runtime import LoadSpec, Registry
from workbench.runtime.fit import CUDA_CONTEXT_BYTES, check_fit
from workbench.store import ModelStore, estimate, format_bytes
from workbench.ui import LoadPanel, StorePanel

GiB = 2**30
MiB = 2**20
MODEL = "tiny-llama"


class _Rows(HTMLParser):
    """Table rows of an HTML fragment, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def rows_of(html: str) -> list[list[str]]:
    parser = _Rows()
    parser.feed(html)
    return parser.rows


def fit_row(html: str, device: str, precision: str) -> list[str]:
    [row] = [r for r in rows_of(html) if r[:2] == [device, precision]]
    return row


@pytest.fixture(params=["reserves", "lease"])
def tight_gpu(request, tiny_store, fake_nvml, clean_devices):
    """One GPU whose raw free memory holds the model's weights, but not after reserves or others' leases."""
    entry = ModelStore().get(MODEL)
    weights = estimate(entry, "float32").total_bytes
    if request.param == "reserves":
        # Room for the weights and the KV cache, not for torch's CUDA context on top.
        fake_nvml([FakeGpu(memory_total_bytes=CUDA_CONTEXT_BYTES // 2)], torch=True)
    else:
        fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
        # Another user's lease on most of it (not allocated yet, so NVML still calls it free).
        LeaseBook(hub_user="alice", heartbeat_s=None).acquire("cuda:0", 24 * GiB - 200 * MiB, "Mixtral-8x7B",
                                                              pid=1, watch="pid", hold=False, check=False)
    from workbench.devices import memory_free_bytes

    assert memory_free_bytes("cuda:0") > 100 * weights  # raw free memory: it would fit many times over
    return request.param


def test_store_tab_says_what_the_load_tab_says(tight_gpu, static_mode):
    store_panel = StorePanel()
    store_panel.select(MODEL)
    _ = store_panel.widget
    details = store_panel.outputs.details.value
    assert "does not fit on cuda:0 at any precision" in details

    load_panel = LoadPanel(registry=Registry())
    chk = load_panel.select(model=MODEL, devices=["cuda:0"], dtype="float32")
    assert chk.fits is False
    _ = load_panel.widget
    shown = load_panel.outputs.check.value
    assert "does not fit" in shown
    # The same row, part by part: weights, KV cache, fixed state, reserves, leases, free, needed, verdict.
    load_row = fit_row(shown, "cuda:0", "float32")
    assert fit_row(details, "cuda:0", "float32") == load_row
    assert load_row[-2] == format_bytes(chk.needed_bytes)
    assert load_row[-1] == "does not fit"
    if tight_gpu == "lease":
        assert "(hub user alice)" in load_row[6]
        assert "(hub user alice)" in details
    else:
        assert "CUDA context" in load_row[5]
    store_panel.close()
    load_panel.close()


def test_cli_inspect_says_what_run_refuses(tight_gpu, capsys):
    assert main(["store", "inspect", MODEL, "--json"]) == 0
    fits = json.loads(capsys.readouterr().out)["fits"]
    gpu = {f["precision"]: f for f in fits if f["device"] == "cuda:0"}
    assert set(gpu) == {"float32", "bfloat16", "int8", "nf4"}
    assert not any(f["fits"] for f in gpu.values())
    entry = ModelStore().get(MODEL)
    chk = check_fit(entry, LoadSpec(entry, devices=("cuda:0",), dtype="float32").validate())
    assert gpu["float32"]["needed_bytes"] == chk.needed_bytes
    assert gpu["float32"]["parts"] == chk.parts
    assert gpu["float32"]["message"] == chk.message

    assert main(["run", MODEL, "--device", "cuda:0", "--dtype", "float32", "--prompt", "Hi", "--json"]) == 1
    err = json.loads(capsys.readouterr().out)
    assert err["error"] == "InsufficientMemoryError"
    assert err["message"].startswith(chk.message)
