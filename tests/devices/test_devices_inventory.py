"""Device inventory: UUID matching, CUDA_VISIBLE_DEVICES, graceful degradation, the real path."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import workbench
from fakes.fake_pynvml import (
    FakeGpu,
    FakeProcess,
    GiB,
    NVMLError_GpuIsLost,
    NVMLError_NoPermission,
    NVMLError_NotSupported,
    fake_torch_cuda,
    install_fake_nvml,
    install_fake_torch_cuda,
)
from workbench.devices import (
    cgroup,
    devices_report,
    format_devices,
    get_device,
    gpu_processes,
    list_devices,
    memory_free_bytes,
    nvml_status,
    visibility,
    visible_gpus,
)
from workbench.devices.nvml import NVMLGpu
from workbench.errors import DeviceNotFoundError

PACKAGE = Path(workbench.__file__).parent


def three_boards() -> list[FakeGpu]:
    return [
        FakeGpu(name="NVIDIA A10", compute_capability=(8, 6)),
        FakeGpu(name="NVIDIA L4", compute_capability=(8, 9)),
        FakeGpu(name="NVIDIA H200", compute_capability=(9, 0), memory_total_bytes=141 * GiB),
    ]


# --- the real path on this machine -------------------------------------------------------------


def test_real_machine_lists_what_nvml_allows() -> None:
    status = nvml_status()
    devices = list_devices()
    assert devices[-1].name == "cpu"
    assert devices[-1].kind == "cpu"
    assert devices[-1].memory_total_bytes
    assert devices[-1].memory_free_bytes
    assert devices[-1].cores
    assert devices[-1].cores >= 1
    if status.available:  # a GPU machine: every listed GPU is named the torch way
        assert all(d.name == f"cuda:{i}" for i, d in enumerate(devices[:-1]))
        return
    # No NVIDIA driver here: just the CPU, and a reason saying why.
    assert [d.name for d in devices] == ["cpu"]
    assert status.reason
    assert "CPU and RAM only" in status.reason
    report = devices_report()
    assert report["no_gpu_reason"] == status.reason
    assert json.loads(json.dumps(report))["devices"][0]["name"] == "cpu"
    assert "No GPU:" in format_devices(report)


def test_nvml_is_initialised_lazily_and_once(fake_nvml) -> None:
    fake = fake_nvml([FakeGpu()])
    assert fake.calls["nvmlInit"] == 0  # installing (and importing) started nothing
    barrier = threading.Barrier(8)

    def first_use() -> None:
        barrier.wait()
        nvml_status()

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.init_count == 1
    assert nvml_status() == nvml_status()
    assert nvml_status().driver_version == "550.54.15"
    assert nvml_status().cuda_driver_version == "12.4"


# --- matching by UUID ---------------------------------------------------------------------------


def test_torch_order_differs_from_nvml_order(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml(three_boards())
    # torch sees two of the three boards, H200 first (fastest first, or CUDA_VISIBLE_DEVICES=2,0).
    install_fake_torch_cuda(monkeypatch, fake.torch_cuda(order=[2, 0]))
    devices = list_devices(include_cpu=False)
    assert [(d.name, d.label, d.nvml_index) for d in devices] == [
        ("cuda:0", "NVIDIA H200", 2),
        ("cuda:1", "NVIDIA A10", 0),
    ]
    assert devices[0].uuid == fake.gpus[2].uuid
    assert devices[0].compute_capability == (9, 0)
    assert visible_gpus().matched_by == "torch"


def test_torch_uuid_unknown_to_nvml_is_listed_from_torch(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml([FakeGpu()])
    install_fake_torch_cuda(monkeypatch, fake_torch_cuda([fake.gpus[0].uuid, "GPU-deadbeef-0000"]))
    devices = list_devices(include_cpu=False)
    assert [d.name for d in devices] == ["cuda:0", "cuda:1"]
    assert devices[1].uuid == "GPU-deadbeef-0000"
    assert devices[1].memory_free_bytes is None
    assert any("not among NVML" in n for n in visible_gpus().notes)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2,0", [2, 0]),
        ("1", [1]),
        (" 2 , 1 ", [2, 1]),
        ("1,x,0", [1]),  # CUDA stops at the first invalid entry
        ("1,7,0", [1]),  # ... or out-of-range index
        ("0,0", []),  # a repeated entry leaves nothing
        ("", []),
        ("-1", []),
    ],
)
def test_cuda_visible_devices_indices(fake_nvml, monkeypatch, value, expected) -> None:
    fake_nvml(three_boards())  # no torch: the fallback path
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    devices = list_devices(include_cpu=False)
    assert [d.nvml_index for d in devices] == expected
    assert [d.name for d in devices] == [f"cuda:{i}" for i in range(len(expected))]


def test_cuda_visible_devices_uuids_and_prefixes(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml(three_boards())
    full, prefix = fake.gpus[2].uuid, fake.gpus[1].uuid[:6]  # "GPU-2" is a unique prefix
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{full},{prefix}")
    assert [d.nvml_index for d in list_devices(include_cpu=False)] == [2, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-")  # ambiguous: matches every board
    assert list_devices(include_cpu=False) == []
    report = devices_report()
    assert report["matched_by"] == "CUDA_VISIBLE_DEVICES"
    assert "selects no GPU" in report["no_gpu_reason"]


def test_no_torch_no_env_means_nvml_order_and_mixed_boards_warn(fake_nvml, monkeypatch) -> None:
    fake_nvml(three_boards())
    vis = visible_gpus()
    assert vis.matched_by == "nvml"
    assert [g.nvml.nvml_index for g in vis.gpus] == [0, 1, 2]
    assert any("CUDA_DEVICE_ORDER" in n for n in vis.notes)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert visible_gpus().notes == ()


def test_cpu_only_torch_on_a_gpu_machine_is_reported(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml([FakeGpu()])
    cuda = fake.torch_cuda()
    cuda.available = False  # a CPU build of torch
    install_fake_torch_cuda(monkeypatch, cuda)
    report = devices_report()
    assert [d["name"] for d in report["devices"]] == ["cuda:0", "cpu"]  # NVML still shows the board
    assert any("is_available() is False" in n and "on the CPU" in n for n in report["notes"])
    assert "Note: torch.cuda.is_available() is False" in format_devices(report)


def test_parse_visible_devices_is_pure() -> None:
    boards = [NVMLGpu(0, "GPU-aaa", 0), NVMLGpu(1, "GPU-abb", 1), NVMLGpu(1, "MIG-ccc", 2, True, 0)]
    assert [g.handle for g in visibility.parse_visible_devices("MIG-c,GPU-ab", boards)] == [2, 1]
    assert visibility.parse_visible_devices("GPU-a", boards) == []  # ambiguous prefix
    assert [g.handle for g in visibility.parse_visible_devices("1", boards)] == [1]  # MIG not indexed


def test_mig_instances_are_matched_by_their_uuid(fake_nvml, monkeypatch) -> None:
    mig = [FakeGpu(name="NVIDIA A100 MIG 1g.10gb", memory_total_bytes=10 * GiB) for _ in range(2)]
    fake = fake_nvml([FakeGpu(name="NVIDIA A100", mig_mode=True, mig_instances=mig)])
    child = fake.gpus[0].mig_instances[1]
    install_fake_torch_cuda(monkeypatch, fake_torch_cuda([child.uuid]))
    (device,) = list_devices(include_cpu=False)
    assert device.uuid == child.uuid
    assert device.uuid.startswith("MIG-")
    assert device.mig_mode is True
    assert device.memory_total_bytes == 10 * GiB


# --- graceful degradation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init_error", "words"),
    [
        ("library_not_found", "NVIDIA driver not found"),
        ("driver_not_loaded", "not loaded"),
        ("no_permission", "no permission"),
        ("version_mismatch", "different versions"),
        ("unknown", "NVML failed to start"),
    ],
)
def test_nvml_failures_degrade_to_cpu_with_a_reason(fake_nvml, init_error, words) -> None:
    fake_nvml([FakeGpu()], init_error=init_error)
    status = nvml_status()
    assert not status.available
    assert words in status.reason
    assert status.reason.endswith("CPU and RAM only")
    assert [d.name for d in list_devices()] == ["cpu"]
    with pytest.raises(DeviceNotFoundError) as info:
        get_device("cuda:0")
    assert "available: cpu" in str(info.value)
    assert words in str(info.value)
    assert info.value.device == "cuda:0"
    assert info.value.available == ["cpu"]


def test_no_nvml_but_cuda_torch_already_imported_lists_torch_gpus(fake_nvml, monkeypatch) -> None:
    # Jetson, some VMs: no NVML, yet the torch this kernel already imported can use GPUs.
    fake_nvml([], library_missing=True)
    install_fake_torch_cuda(monkeypatch, fake_torch_cuda(["GPU-0123abcd"], names=["Orin"]))
    devices = list_devices()
    assert [(d.name, d.label, d.uuid) for d in devices] == [
        ("cuda:0", "Orin", "GPU-0123abcd"),
        ("cpu", *[devices[1].label, None]),
    ]
    assert devices[0].memory_free_bytes is None
    assert any("without live metrics" in n for n in visible_gpus().notes)


def test_pynvml_not_installed(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, None)  # sys.modules["pynvml"] = None: ImportError
    assert "nvidia-ml-py is not installed" in nvml_status().reason
    assert [d.name for d in list_devices()] == ["cpu"]


def test_unsupported_fields_are_none(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml([FakeGpu(unsupported={"compute_capability", "memory", "name"}, mig_mode=None)])
    (d,) = list_devices(include_cpu=False)
    assert d.compute_capability is None
    assert d.mig_mode is None
    assert d.memory_total_bytes is None
    assert d.memory_free_bytes is None
    assert d.memory_total_str == "N/A"
    assert d.compute_capability_str == "N/A"
    assert d.label == "NVIDIA GPU"
    assert memory_free_bytes("cuda:0") is None
    # With torch, what NVML cannot say comes from torch.
    install_fake_torch_cuda(monkeypatch, fake.torch_cuda())
    (d,) = list_devices(include_cpu=False)
    assert d.label == "NVIDIA A10"
    assert d.compute_capability == (8, 6)


def test_a_board_that_fails_is_skipped_not_fatal(fake_nvml) -> None:
    fake = fake_nvml([FakeGpu(name="broken"), FakeGpu(name="fine")])
    fake.gpus[0].fail("handle", NVMLError_GpuIsLost)
    assert [d.label for d in list_devices(include_cpu=False)] == ["fine"]


# --- get_device, memory, processes --------------------------------------------------------------


def test_get_device_and_memory_free_accounts_for_other_users(fake_nvml) -> None:
    # The runtime's scenario: two 24 GiB GPUs, 3 GiB taken by another process on the first.
    fake_nvml(
        [FakeGpu(processes=[FakeProcess(4242, 3 * GiB)]), FakeGpu()],
        torch=True,
    )
    assert memory_free_bytes("cuda:0") == 21 * GiB
    assert memory_free_bytes("cuda:1") == 24 * GiB
    assert get_device("cuda").name == "cuda:0"  # torch's "cuda" is the current device, 0
    d = get_device("cuda:0")
    assert d.memory_used_bytes == 3 * GiB
    assert d.memory_free_str == "21.0 GiB"
    assert d.to_dict()["compute_capability"] == [8, 6]
    assert memory_free_bytes("cpu") > 0
    with pytest.raises(DeviceNotFoundError, match=r"available: cuda:0, cuda:1, cpu"):
        memory_free_bytes("cuda:2")


def _dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_gpu_processes_are_joined_with_psutil(fake_nvml) -> None:
    me, gone = os.getpid(), _dead_pid()
    fake_nvml([FakeGpu(processes=[FakeProcess(me, 2 * GiB), FakeProcess(gone, None)])], torch=True)
    mine, ghost = gpu_processes("cuda:0")
    assert mine.pid == me
    assert mine.user
    assert mine.command
    assert "python" in mine.command.lower()
    assert mine.used_memory_bytes == 2 * GiB
    assert mine.device == "cuda:0"
    assert (ghost.pid, ghost.user, ghost.command, ghost.used_memory_bytes) == (gone, None, None, None)
    assert gpu_processes("cpu") == []


def test_devices_report_and_table(fake_nvml) -> None:
    fake_nvml(
        [
            FakeGpu(
                name="NVIDIA H200", memory_total_bytes=141 * GiB, processes=[FakeProcess(os.getpid(), GiB)]
            )
        ],
        torch=True,
    )
    report = json.loads(json.dumps(devices_report()))  # JSON-clean
    assert report["nvml"]["available"] is True
    assert report["no_gpu_reason"] is None
    assert [d["name"] for d in report["devices"]] == ["cuda:0", "cpu"]
    assert report["devices"][0]["uuid"].startswith("GPU-")
    assert report["processes"]["cuda:0"][0]["pid"] == os.getpid()
    text = format_devices(report)
    assert "NVIDIA driver 550.54.15, CUDA 12.4" in text
    assert "cuda:0" in text
    assert "NVIDIA H200" in text
    assert "141.0 GiB" in text
    assert "Processes on cuda:0:" in text
    assert str(os.getpid()) in text


@pytest.mark.parametrize("error", [NVMLError_NoPermission, NVMLError_NotSupported])
def test_process_list_nvml_cannot_read_is_unknown_not_empty(fake_nvml, capsys, error) -> None:
    """``null`` means "NVML cannot say"; ``[]`` means "NVML says nobody": the two must not be confused."""
    from workbench.cli import main

    fake_nvml([FakeGpu(processes=[FakeProcess(os.getpid(), GiB)], errors={"processes": error}), FakeGpu()],
              torch=True)
    assert gpu_processes("cuda:0") is None
    assert gpu_processes("cuda:1") == []
    assert main(["devices", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["processes"] == {"cuda:0": None, "cuda:1": []}
    text = format_devices(report)
    assert "Processes on cuda:0: unknown" in text
    assert "Processes on cuda:1" not in text


def test_load_panel_says_when_processes_are_unknown(fake_nvml) -> None:
    from workbench.ui.load_panel import UNKNOWN_PROCESSES, LoadPanel, device_holders

    fake_nvml([FakeGpu(errors={"processes": NVMLError_NoPermission}),
               FakeGpu(processes=[FakeProcess(os.getpid(), GiB)])], torch=True)
    unknown, held = (LoadPanel.device_html(get_device(name)) for name in ("cuda:0", "cuda:1"))
    assert "processes: unknown" in unknown
    assert "held by" not in unknown
    assert "held by" in held
    assert str(os.getpid()) in held
    assert "unknown" not in held
    assert device_holders("cuda:0")[1] is None
    assert device_holders("cuda:1")[1] != []
    assert UNKNOWN_PROCESSES in unknown


# --- the CPU --------------------------------------------------------------------------------------


def test_cpu_device() -> None:
    cpu = get_device("cpu")
    assert cpu.kind == "cpu"
    assert cpu.index is None
    assert cpu.uuid is None
    assert cpu.label
    assert cpu.cores == len(os.sched_getaffinity(0))
    assert cpu.memory_used_bytes == cpu.memory_total_bytes - cpu.memory_free_bytes


def test_cgroup_v2_limit_caps_ram(tmp_path, monkeypatch) -> None:
    (tmp_path / "proc").write_text("0::/user.slice/jupyter-alice.scope\n")
    root = tmp_path / "cgroup"
    leaf = root / "user.slice" / "jupyter-alice.scope"
    leaf.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    (leaf / "memory.max").write_text(f"{4 * GiB}\n")
    (leaf / "memory.current").write_text(f"{3 * GiB}\n")
    (leaf / "memory.stat").write_text(f"anon 1\ninactive_file {GiB}\n")
    (root / "user.slice" / "memory.max").write_text("max\n")
    monkeypatch.setattr(cgroup, "_PROC_SELF_CGROUP", tmp_path / "proc")
    monkeypatch.setattr(cgroup, "_CGROUP_ROOT", root)
    assert cgroup.cgroup_memory() == (4 * GiB, 2 * GiB)  # inactive page cache counts as free
    cpu = get_device("cpu")
    assert cpu.memory_total_bytes <= 4 * GiB
    assert cpu.memory_free_bytes <= 2 * GiB


def test_cgroup_v1_unlimited_is_ignored(tmp_path, monkeypatch) -> None:
    (tmp_path / "proc").write_text("4:memory:/job\n0::/\n")
    mount = tmp_path / "cgroup" / "memory"
    mount.mkdir(parents=True)
    (mount / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (mount / "memory.usage_in_bytes").write_text("100\n")
    monkeypatch.setattr(cgroup, "_PROC_SELF_CGROUP", tmp_path / "proc")
    monkeypatch.setattr(cgroup, "_CGROUP_ROOT", tmp_path / "cgroup")
    assert cgroup.cgroup_memory() is None
    (mount / "memory.limit_in_bytes").write_text(f"{GiB}\n")
    assert cgroup.cgroup_memory() == (GiB, GiB - 100)
