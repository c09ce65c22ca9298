"""Issue 15, section 2: another user's files in the lease folder and a shared store, against a real `jupyter server`.

The server is a `jupyter server` process of its own (root's, as a hub's user server is
its user's), with the fake GPU of the hub tests (``tests/hub/fake_site``). "nobody" (a
forked child that dropped its uid, tests/multiuser.py) plants a FIFO, a 1 TiB file and
symlinks in the sticky lease folder, and hostile entries in a shared store root anyone
may write. Of before, a FIFO lease file froze the server at the first /metrics scrape
(the collector read leases on the event loop) and `workbench leases` for good.
Each request here must answer within a generous bound, with every hostile file named
once and skipped, and the server must go on answering afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from browser.conftest import free_port, stop_process
from fakes.fake_pynvml import FakeGpu
from multiuser import NOBODY, require_root, run_as, shared_tmp, sticky_folder
from workbench.devices.leases import LeaseBook
from workbench.devices.leases.record import user_name

GiB = 2**30
TiB = 2**40
REPO = Path(__file__).resolve().parents[2]
FAKE_SITE = REPO / "tests" / "hub" / "fake_site"
#: A bound far above what any answer here costs (a cold listing of the store below: well under a
#: second), far below "never": the code of before never answered.
ANSWER_WITHIN_S = 60.0


def plant_lease_folder(folder: str, gpu_uuid: str) -> list[str]:
    """As nobody: a FIFO, a 1 TiB sparse file and symlinks, all named as lease files; their names."""
    folder_p = Path(folder)

    def name() -> str:
        return f"{gpu_uuid}.u{NOBODY}.{uuid_module.uuid4().hex[:12]}.0.lease"

    fifo, huge, link_zero, link_fifo = name(), name(), name(), name()
    os.mkfifo(folder_p / fifo, 0o644)
    os.mkfifo(folder_p / f"{gpu_uuid}.json", 0o644)  # the per-GPU file of the old design
    fd = os.open(folder_p / huge, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, TiB)
    os.close(fd)
    os.symlink("/dev/zero", folder_p / link_zero)
    os.symlink(folder_p / fifo, folder_p / link_fifo)
    return [fifo, huge, link_zero, link_fifo]


def plant_store(root: str) -> None:
    """As nobody: entries in a shared store root that would block, exhaust or escape a careless reader."""
    r = Path(root)
    (r / "fifo-model").mkdir()
    os.mkfifo(r / "fifo-model" / "config.json", 0o644)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (r / "fifo-model" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    os.mkfifo(r / "fifo-model" / "tokenizer_config.json", 0o644)
    (r / "huge-config").mkdir()
    with open(r / "huge-config" / "config.json", "wb") as f:
        f.truncate(TiB)  # sparse: costs the disk nothing, a reader that trusts it a terabyte
    (r / "deep-config").mkdir()
    (r / "deep-config" / "config.json").write_text("[" * 200_000)
    os.symlink("/etc", r / "escape")  # a folder outside the root
    os.symlink("/dev/zero", r / "zero.gguf")


def request(url: str, token: str, timeout_s: float = ANSWER_WITHIN_S) -> tuple[int, bytes, float]:
    """``(status, body, seconds)`` of one GET."""
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read(), time.monotonic() - start
    except urllib.error.HTTPError as err:
        return err.code, err.read(), time.monotonic() - start


@pytest.fixture
def hostile_machine(tmp_path: Path, fake_nvml, tiny_models):
    """The lease folder and the shared store, with nobody's files in them, and root's own lease."""
    require_root()
    import psutil  # noqa: F401 (the child inherits it)

    gpu = fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True).gpus[0]
    with shared_tmp() as base:
        leases = sticky_folder(base / "leases")
        shared = sticky_folder(base / "shared-store")
        shutil.copytree(tiny_models["llama"], shared / "tiny-llama")
        mine = LeaseBook(leases, heartbeat_s=None).acquire("cuda:0", 3 * GiB, "tiny-llama")
        planted = run_as(NOBODY, plant_lease_folder, str(leases), gpu.uuid)
        run_as(NOBODY, plant_store, str(shared))
        yield {"leases": leases, "shared": shared, "lease": mine, "planted": planted, "gpu": gpu}


@pytest.fixture
def server(tmp_path: Path, hostile_machine):
    """A real `jupyter server` process whose settings name that lease folder and shared store."""
    config_dir = tmp_path / "jupyter-config"
    config_dir.mkdir()
    settings = {"store_path": os.pathsep.join([str(tmp_path / "user-store"), str(hostile_machine["shared"])]),
                "lease_dir": str(hostile_machine["leases"]), "cache_dir": str(tmp_path / "cache")}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"workbench.server": True}}, "WorkbenchSettings": settings}))
    token, port = secrets.token_hex(16), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "WORKBENCH_"))}
    env.update(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([str(FAKE_SITE), str(REPO)]),
               WORKBENCH_TEST_FAKE_GPUS=json.dumps([{"memory_total_bytes": 24 * GiB}]))
    log = tmp_path / "server.log"
    args = [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}", "--ServerApp.log_level=INFO"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                if request(f"{url}/api/status", token, timeout_s=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "jupyter server did not start:\n" + log.read_text()[-4000:]
            time.sleep(0.3)
        yield url, token, log
    finally:
        stop_process(proc, timeout_s=15)


def test_nobodys_files_block_no_request_and_cost_one_warning_each(server, hostile_machine) -> None:
    url, token, log = server
    planted, mine = hostile_machine["planted"], hostile_machine["lease"]
    nobody = user_name(NOBODY)
    api = f"{url}/workbench/api"

    for _ in range(2):
        status, body, took = request(f"{api}/leases", token)
        assert status == 200, body[-2000:]
        assert took < ANSWER_WITHIN_S, body[-2000:]
        doc = json.loads(body)
        assert [x["lease_id"] for x in doc["leases"]] == [mine.lease_id]
        skipped = {s["file"]: s for s in doc["skipped"]}
        assert set(planted) <= set(skipped), skipped
        assert all(skipped[name]["owner"] == nobody for name in planted)

        status, body, took = request(f"{url}/metrics", token)
        assert status == 200
        assert took < ANSWER_WITHIN_S
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert [s.value for s in families["workbench_gpu_leases"].samples] == [1]
        [reserved] = families["workbench_gpu_lease_reserved_bytes"].samples
        assert reserved.labels["lease_id"] == mine.lease_id
        assert reserved.value == 3 * GiB

        status, body, took = request(f"{api}/store", token)
        assert status == 200, body[-2000:]
        assert took < ANSWER_WITHIN_S, body[-2000:]
        entries = {e["name"]: e for e in json.loads(body)}
        assert entries["tiny-llama"]["status"] == "ok"
        hostile = {"fifo-model", "huge-config", "deep-config", "escape", "zero"} & set(entries)
        assert {"fifo-model", "huge-config", "deep-config"} <= hostile, sorted(entries)
        for name in hostile:
            assert entries[name]["status"] != "ok", entries[name]
            assert entries[name]["problem"], entries[name]

    status, body, took = request(f"{api}/store/deep-config", token)
    assert status == 200
    assert json.loads(body)["status"] == "broken"
    assert took < ANSWER_WITHIN_S
    status, body, took = request(f"{api}/store/fifo-model", token)
    assert status == 200
    assert "config.json is a FIFO" in json.loads(body)["problem"]
    assert took < ANSWER_WITHIN_S
    status, body, _ = request(f"{api}/store/nothing-here", token)
    assert status == 404
    assert set(json.loads(body)) == {"message", "reason"}
    # The server goes on answering.
    status, body, took = request(f"{url}/api/status", token, timeout_s=30)
    assert status == 200
    assert took < 30

    text = log.read_text(errors="replace")
    for name in planted:  # two REST reads and two scrapes: one warning per bad file
        assert sum(1 for line in text.splitlines() if "skipping" in line and name in line) == 1, text[-4000:]
