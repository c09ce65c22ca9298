"""The server extension through a real jupyter_server (pytest-jupyter): JSON shapes, auth, /metrics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError

from fakes.fake_pynvml import FakeGpu, FakeProcess, GiB

ENDPOINTS = ["devices", "telemetry", "store", "leases", "kernels"]


async def get_json(jp_fetch, *path: str, **params: str):
    response = await jp_fetch("workbench", "api", *path, params=params or None)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def test_devices_is_the_cli_document(jp_fetch, fake_nvml) -> None:
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB, processes=[FakeProcess(4242, 3 * GiB)])], torch=True)
    doc = await get_json(jp_fetch, "devices")
    from workbench.devices import devices_report

    cli = json.loads(json.dumps(devices_report(), default=str))
    # The same document as the CLI's; the CPU's free RAM moves between the two calls.
    assert doc.keys() == cli.keys()
    assert doc["processes"] == cli["processes"]
    assert doc["nvml"] == cli["nvml"]
    assert doc["devices"][0] == cli["devices"][0]
    assert doc["devices"][1].keys() == cli["devices"][1].keys()
    assert [d["name"] for d in doc["devices"]] == ["cuda:0", "cpu"]
    assert doc["devices"][0]["memory_total_bytes"] == 24 * GiB
    assert [p["pid"] for p in doc["processes"]["cuda:0"]] == [4242]


async def test_devices_without_a_driver_lists_the_cpu_and_says_why(jp_fetch, no_nvml_driver) -> None:
    doc = await get_json(jp_fetch, "devices")
    assert [d["name"] for d in doc["devices"]] == ["cpu"]
    assert doc["no_gpu_reason"]
    assert "driver" in doc["no_gpu_reason"].lower()


async def test_store_lists_the_roots_from_the_server_config(jp_fetch, shared_root: Path, tmp_path: Path) -> None:
    doc = await get_json(jp_fetch, "store")
    assert [e["name"] for e in doc] == ["tiny-llama"]
    [entry] = doc
    assert entry["root"] == str(shared_root)
    assert entry["writable"] is False
    assert entry["path"] == str(shared_root / "tiny-llama")
    # The same document as the CLI over the same roots.
    import subprocess
    import sys

    env = {**os.environ, "WORKBENCH_STORE": os.pathsep.join([str(tmp_path / "server-user-store"), str(shared_root)])}
    cli = subprocess.run([sys.executable, "-m", "workbench.cli", "store", "list", "--json"],
                         capture_output=True, text=True, env=env, check=True, timeout=120)
    assert json.loads(cli.stdout) == doc
    from safetensors import safe_open

    params = 0
    for file in sorted((shared_root / "tiny-llama").glob("*.safetensors")):
        with safe_open(str(file), "np") as f:
            params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert entry["params"] == params > 0


async def test_telemetry_on_a_gpu_less_machine(jp_fetch, no_nvml_driver) -> None:
    doc = await get_json(jp_fetch, "telemetry", since="30")
    assert doc["gpus"] == []
    assert doc["latest"]["gpus"] == []
    import psutil

    assert doc["latest"]["ram_total_bytes"] == psutil.virtual_memory().total
    assert doc["notices"]
    assert "CPU and RAM" in doc["notices"][0]
    assert [r["type"] for r in doc["history"]].count("sample") >= 1


async def test_telemetry_with_fake_gpus_and_one_shared_sampler(jp_fetch, jp_serverapp, fake_nvml) -> None:
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB, utilization_percent=37), FakeGpu(name="NVIDIA L4")], torch=True)
    first = await get_json(jp_fetch, "telemetry")
    state = jp_serverapp.web_app.settings["workbench_state"]
    sampler = state.sampler(start=False)
    assert sampler is not None
    assert sampler.running
    second = await get_json(jp_fetch, "telemetry", since="3600")
    assert state.sampler(start=False) is sampler  # one sampler per server, not one per request
    assert first["gpus"] == second["gpus"] == ["cuda:0", "cuda:1"]
    gpu0 = second["latest"]["gpus"][0]
    assert gpu0["utilization_percent"] == 37
    assert gpu0["memory_total_bytes"] == 24 * GiB
    assert all("cuda:0/utilization_percent" in r for r in second["history"] if r["type"] == "sample")
    assert len(second["history"]) >= len([r for r in first["history"] if r["type"] == "sample"])


@pytest.mark.parametrize("since", ["-1", "abc", "nan"])
async def test_telemetry_rejects_a_bad_since(jp_fetch, since: str) -> None:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("workbench", "api", "telemetry", params={"since": since})
    assert err.value.code == 400


async def test_leases_is_the_cli_document(jp_fetch, fake_nvml, tmp_path: Path) -> None:
    fake = fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    empty = await get_json(jp_fetch, "leases")
    assert empty["leases"] == []
    assert empty["lease_dir"] == str(tmp_path / "leases")
    from workbench.devices.leases import LeaseBook, leases_report

    book = LeaseBook(tmp_path / "leases", hub_user="alice", heartbeat_s=None)
    lease = book.acquire("cuda:0", 3 * GiB, "tiny-llama")
    doc = await get_json(jp_fetch, "leases")
    [item] = doc["leases"]
    assert item["owner"] == book.owner
    assert item["hub_user"] == "alice"
    assert item["model"] == "tiny-llama"
    assert item["reserved_bytes"] == 3 * GiB
    assert item["gpu_uuid"] == fake.gpus[0].uuid
    assert item["device"] == "cuda:0"
    assert item["pid"] == os.getpid()
    cli = leases_report(LeaseBook(tmp_path / "leases", heartbeat_s=None))
    assert [x["lease_id"] for x in cli["leases"]] == [item["lease_id"]] == [lease.lease_id]
    metrics = {f.name: f for f in text_string_to_metric_families((await jp_fetch("metrics")).body.decode())}
    [reserved] = metrics["workbench_gpu_lease_reserved_bytes"].samples
    assert reserved.value == 3 * GiB
    assert reserved.labels["owner"] == book.owner
    assert reserved.labels["hub_user"] == "alice"
    assert reserved.labels["uuid"] == fake.gpus[0].uuid
    book.release(lease)
    assert (await get_json(jp_fetch, "leases"))["leases"] == []


async def test_kernels_get_the_settings_of_the_servers_config(jp_fetch, jp_serverapp, tmp_path: Path) -> None:
    """A kernel the server starts reads the lease folder the server's config names, through its environment."""
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(response.body)["id"]
    try:
        km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        outputs: list[dict] = []
        code = ("from workbench.config import get_settings; s = get_settings(); "
                "print(s.lease_dir, s.telemetry_interval_s, s.store_roots()[-1])")
        reply = await client.execute_interactive(code, timeout=60, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok"
        text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        assert text.split() == [str(tmp_path / "leases"), "0.25", str(tmp_path / "shared-store")]
        client.stop_channels()
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_no_token_gets_no_data(jp_fetch, endpoint: str) -> None:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("workbench", "api", endpoint, headers={"Authorization": ""})
    assert err.value.code == 403
    body = err.value.response.body.decode()
    assert "tiny-llama" not in body
    assert "ram_total_bytes" not in body
    assert "devices" not in body


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_wrong_token_gets_no_data(jp_fetch, endpoint: str) -> None:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("workbench", "api", endpoint, headers={"Authorization": "token not-the-token"})
    assert err.value.code == 403


async def test_no_file_under_a_model_folder_is_served(jp_fetch, shared_root: Path) -> None:
    config = (shared_root / "tiny-llama" / "config.json").read_text()
    for path in (("store", "tiny-llama", "config.json"), ("files", "config.json")):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("workbench", "api", *path)
        assert err.value.code == 404
    # The entry itself is its listing item, not the folder's files.
    entry = await get_json(jp_fetch, "store", "tiny-llama")
    assert entry == (await get_json(jp_fetch, "store"))[0]
    assert json.loads(config)["model_type"] == entry["model_type"]
    assert config not in json.dumps(entry)


async def test_metrics_carry_the_workbench_series(jp_fetch, fake_nvml) -> None:
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB, processes=[FakeProcess(7, 2 * GiB)])], torch=True)
    await get_json(jp_fetch, "telemetry")  # the sampler starts with the first use
    response = await jp_fetch("metrics")
    text = response.body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "http_request_duration_seconds" in families  # jupyter_server's own series are still there
    used = {s.labels["device"]: s.value for s in families["workbench_gpu_memory_used_bytes"].samples}
    total = {s.labels["device"]: s.value for s in families["workbench_gpu_memory_total_bytes"].samples}
    assert total == {"cuda:0": 24 * GiB}
    assert used["cuda:0"] >= 2 * GiB
    assert families["workbench_ram_total_bytes"].samples[0].value > 0
    assert [s.value for s in families["workbench_gpu_leases"].samples] == [0]
    assert all(name.startswith("workbench_") for name in families if "workbench" in name)


async def test_metrics_need_a_token(jp_fetch) -> None:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("metrics", headers={"Authorization": ""})
    assert err.value.code == 403


def test_the_wheel_enables_the_extension() -> None:
    """The jupyter-config file the wheel installs names this module, and this module has the hooks."""
    import tomllib

    import workbench.server

    root = Path(__file__).resolve().parents[2]
    shared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "shared-data"]
    [source] = [src for src, dest in shared.items() if dest == "etc/jupyter/jupyter_server_config.d"]
    [config] = list((root / source).glob("*.json"))
    assert json.loads(config.read_text()) == {"ServerApp": {"jpserver_extensions": {"workbench.server": True}}}
    assert workbench.server._jupyter_server_extension_points() == [{"module": "workbench.server"}]
