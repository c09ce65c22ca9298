"""GPU leases: files and modes, refusals naming holders, stale reclaim, ownership, no double counting,
and several processes racing for one fake GPU.

GPUs are faked at the NVML seam (tests/fakes); the lease folder is the test's own
(WORKBENCH_LEASE_DIR, set by the root conftest). Users are told apart by
``LeaseBook(owner=...)`` in one process, and by ``JUPYTERHUB_USER`` across processes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.fake_pynvml import FakeGpu, FakeProcess
from workbench.devices.leases import (
    STALE_AFTER_S,
    Lease,
    LeaseBook,
    acquire,
    get_lease_book,
    leases_report,
    list_leases,
    release,
)
from workbench.errors import InsufficientMemoryError, LeaseError, LeaseNotOwnedError

GiB = 2**30
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class Clock:
    """An injectable ``time.time``."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def gpu(fake_nvml):
    """One 24 GiB fake GPU, seen by torch as cuda:0; the test may add NVML processes to it."""
    fake = fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    return fake.gpus[0]


@pytest.fixture
def lease_dir(tmp_path) -> Path:
    return Path(os.environ["WORKBENCH_LEASE_DIR"])


def book(owner: str, clock: Clock | None = None, **kw) -> LeaseBook:
    return LeaseBook(owner=owner, clock=clock or Clock(), heartbeat_s=None, **kw)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_lease_file_per_gpu_uuid_in_a_sticky_folder(gpu, lease_dir):
    lease = acquire("cuda:0", 5 * GiB, "Mistral-7B")
    assert stat.S_IMODE(os.stat(lease_dir).st_mode) == 0o1777
    path = lease_dir / f"{gpu.uuid}.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666  # every user can add a lease
    doc = json.loads(path.read_text())
    [entry] = doc["leases"]
    assert doc["gpu_uuid"] == gpu.uuid
    assert entry["pid"] == os.getpid() and entry["model"] == "Mistral-7B" and entry["reserved_bytes"] == 5 * GiB
    assert entry["owner"] == get_lease_book().owner and entry["host"] and entry["heartbeat_s"] > 0
    assert [x.lease_id for x in list_leases()] == [lease.lease_id]
    assert release(lease) is not None
    assert json.loads(path.read_text())["leases"] == [] and list_leases() == []


def test_owner_is_the_hub_user(gpu, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    assert LeaseBook().owner == "alice"
    monkeypatch.delenv("JUPYTERHUB_USER")
    assert LeaseBook().owner != "alice"


def test_refusal_names_the_holder(gpu):
    clock = Clock()
    alice, bob = book("alice", clock), book("bob", clock)
    held = alice.acquire("cuda:0", int(20 * GiB), "Mixtral-8x7B", hold=False)
    alice.update(held, last_used_s=clock.t - 2 * 3600)
    with pytest.raises(InsufficientMemoryError) as err:
        bob.acquire("cuda:0", 10 * GiB, "Llama-3-8B")
    text = str(err.value)
    assert f"cuda:0: 20.0 GiB leased by alice (Mixtral-8x7B, kernel {os.getpid()}, idle 2 h)" in text
    assert "only 4.0 GiB is free" in text
    assert err.value.holders[0]["owner"] == "alice" and err.value.available_bytes == 4 * GiB
    # What fits next to it is granted.
    assert bob.acquire("cuda:0", 4 * GiB, "Llama-3-8B", hold=False).owner == "bob"


def test_nobody_releases_another_users_lease_but_an_admin_can(gpu):
    alice, bob = book("alice"), book("bob")
    lease = alice.acquire("cuda:0", GiB, "m", hold=False)
    with pytest.raises(LeaseNotOwnedError, match="belongs to alice.*--force"):
        bob.release(lease)
    with pytest.raises(LeaseNotOwnedError):
        bob.release(lease.lease_id[:6])
    assert [x.lease_id for x in bob.leases()] == [lease.lease_id]
    assert bob.release(lease.lease_id, force=True).owner == "alice"
    assert bob.leases() == []


def test_no_double_counting_of_memory_the_holder_already_uses(gpu):
    # alice's kernel (this process, alive) leased 10 GiB and NVML already shows it using 8 GiB of them.
    gpu.processes = [FakeProcess(os.getpid(), 8 * GiB)]
    alice, bob = book("alice"), book("bob")
    alice.acquire("cuda:0", 10 * GiB, "Mixtral-8x7B", check=False, hold=False)
    share = bob.share("cuda:0")
    assert share.outstanding_bytes == 2 * GiB  # max(10, 8) - 8, not 10 on top of NVML's 8
    assert share.leased_bytes == 10 * GiB
    # NVML: 24 - 8 = 16 GiB free; minus the 2 GiB still promised: 14 GiB for bob, not 6 and not 16.
    assert bob.acquire("cuda:0", 14 * GiB, "Llama", hold=False)
    with pytest.raises(InsufficientMemoryError):
        bob.acquire("cuda:0", 1, "one byte more")
    # Once the holder uses more than it leased, its lease adds nothing to what NVML already counts.
    gpu.processes = [FakeProcess(os.getpid(), 12 * GiB)]
    assert bob.share("cuda:0", exclude=[x.lease_id for x in bob.leases() if x.owner == "bob"]).outstanding_bytes == 0


def test_fit_check_counts_other_leases(gpu):
    from workbench.runtime import LoadSpec, check_fit
    from workbench.runtime.fit import require_fit
    from workbench.store import ModelEntry, WeightStats

    params = 4_000_000_000  # 8 GB of bfloat16 weights
    entry = ModelEntry(name="m-4b", path=Path("/nonexistent/m"), root=Path("/nonexistent"), writable=False,
                       format="safetensors", params=params, dtype="bfloat16", num_layers=32, num_kv_heads=8,
                       head_dim=128, weights=WeightStats(params=params, linear_params=int(params * 0.9),
                                                         linear_rows=100_000, linear_count=200,
                                                         bytes_by_dtype={"BF16": 2 * params}))
    spec = LoadSpec(entry, devices=("cuda:0",)).validate()
    assert check_fit(entry, spec).fits is True
    book("alice").acquire("cuda:0", 18 * GiB, "Mixtral-8x7B", hold=False)
    chk = check_fit(entry, spec)
    assert chk.budgets[0].free_bytes == 24 * GiB and chk.budgets[0].leased_bytes == 18 * GiB
    assert chk.fits is False
    with pytest.raises(InsufficientMemoryError, match=r"cuda:0: 18.0 GiB leased by alice \(Mixtral-8x7B, kernel"):
        require_fit(entry, spec)


def test_stale_leases_are_reclaimed(gpu, lease_dir):
    clock = Clock()
    mine = book("alice", clock)
    a = mine.acquire("cuda:0", GiB, "dead-kernel", pid=dead_pid(), hold=False)
    b = mine.acquire("cuda:0", GiB, "recycled-pid", hold=False)
    c = mine.acquire("cuda:0", GiB, "frozen-kernel", hold=False)
    d = mine.acquire("cuda:0", GiB, "engine", pid=os.getpid(), watch="pid", hold=False)
    path = lease_dir / f"{gpu.uuid}.json"
    doc = json.loads(path.read_text())
    for e in doc["leases"]:
        if e["lease_id"] == b.lease_id:
            e["pid_start_s"] -= 3600  # same PID, another process: the kernel that held it is gone
    path.write_text(json.dumps(doc))
    reader = book("bob", clock)
    assert {x.lease_id for x in reader.leases()} == {c.lease_id, d.lease_id}
    # The dead ones are gone from the file itself, not only hidden.
    assert {e["lease_id"] for e in json.loads(path.read_text())["leases"]} == {c.lease_id, d.lease_id}
    clock.t += STALE_AFTER_S - 1
    assert {x.lease_id for x in reader.leases()} == {c.lease_id, d.lease_id}
    clock.t += 2  # no heartbeat for over a minute: a frozen kernel; a PID-watched engine stays
    assert [x.lease_id for x in reader.leases()] == [d.lease_id]
    assert a.lease_id not in path.read_text()


def test_heartbeat_keeps_a_lease_alive_and_reports_last_use(gpu):
    clock = Clock()
    holder = book("alice", clock)
    lease = holder.acquire("cuda:0", GiB, "m")
    holder.set_activity(lease, lambda: clock.t - 30)
    reader = book("bob", clock)
    clock.t += STALE_AFTER_S + 5
    holder.heartbeat()
    [seen] = reader.leases()
    assert seen.heartbeat_s == clock.t and seen.idle_s(clock.t) == 30
    holder.release_all()
    assert reader.leases() == []


def test_release_of_a_reclaimed_lease_is_none_and_update_says_gone(gpu):
    alice = book("alice")
    lease = alice.acquire("cuda:0", GiB, "m", hold=False)
    assert alice.release(lease) is not None
    assert alice.release(lease) is None
    with pytest.raises(LeaseError, match="reclaimed"):
        alice.update(lease, reserved_bytes=2 * GiB)


def test_report_is_json(gpu):
    lease = acquire("cuda:0", 3 * GiB, "m")
    doc = json.loads(json.dumps(leases_report()))
    [item] = doc["leases"]
    assert item["lease_id"] == lease.lease_id and item["device"] == "cuda:0" and item["reserved_bytes"] == 3 * GiB
    assert {"owner", "host", "pid", "model", "heartbeat_s", "idle_s", "gpu_uuid"} <= set(item)
    assert Lease.from_dict(item).lease_id == lease.lease_id


def test_damaged_lease_file_reads_as_empty(gpu, lease_dir):
    lease_dir.mkdir(exist_ok=True)
    (lease_dir / f"{gpu.uuid}.json").write_text('{"version": 1, "leases": [{"lease_')
    assert list_leases() == []
    assert acquire("cuda:0", GiB, "m").model == "m"


def _child(env: dict[str, str], nbytes: int, model: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "_lease_child.py"), str(nbytes), model],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_processes_racing_for_one_gpu(lease_dir, gpu):
    """Four kernels of four users each want 10 GiB of one 24 GiB GPU: exactly two get it."""
    base = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [_child(dict(base, JUPYTERHUB_USER=f"user{i}"), 10 * GiB, f"model-{i}") for i in range(4)]
    try:
        results = []
        for p in procs:
            line = p.stdout.readline()
            assert line, p.stderr.read()[-2000:]
            results.append(json.loads(line))
        winners = [r for r in results if r["ok"]]
        losers = [r for r in results if not r["ok"]]
        assert len(winners) == 2 and len(losers) == 2
        for r in losers:
            assert "GiB leased by user" in r["error"] and "only 4.0 GiB is free" in r["error"]
        held = list_leases()
        assert sorted(x.lease_id for x in held) == sorted(r["lease_id"] for r in winners)
        assert {x.owner for x in held} < {f"user{i}" for i in range(4)}
        # One winner crashes (no atexit): its lease is reclaimed as its PID is gone.
        crashed = next(p for p, r in zip(procs, results, strict=True) if r["ok"])
        crashed.send_signal(signal.SIGKILL)
        crashed.wait(timeout=60)
        assert len(list_leases()) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=60)
            else:
                p.stdin.close()
    # The other winner exited normally: atexit released its lease.
    assert list_leases() == []
    assert json.loads((lease_dir / f"{gpu.uuid}.json").read_text())["leases"] == []


NOBODY_SCRIPT = """
import json, os, sys
from workbench.devices.leases import LeaseBook
from workbench.errors import LeaseNotOwnedError
book = LeaseBook(sys.argv[1], heartbeat_s=None)
out = {"owner": book.owner}
lease = book.acquire(sys.argv[2], 2 * 2**30, "nobody-model", pid=int(sys.argv[3]), watch="pid", hold=False)
out["acquired"] = lease.lease_id
theirs = [x for x in book.leases() if x.owner != book.owner]
try:
    book.release(theirs[0])
    out["release"] = "released"
except LeaseNotOwnedError as exc:
    out["release"] = str(exc)
try:
    os.unlink(book.path_for(sys.argv[2]))
    out["unlink"] = "deleted"
except PermissionError:
    out["unlink"] = "refused"
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as another OS user needs root")
def test_another_os_user_adds_to_the_same_lease_file_but_cannot_take_ours(tmp_path):
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="wb-leases-", dir="/tmp"))  # reachable by nobody, unlike tmp_path
    try:
        os.chmod(base, 0o755)
        lease_dir = base / "leases"
        uuid = "GPU-11111111-2222-3333-4444-555555555555"
        mine = LeaseBook(lease_dir, heartbeat_s=None).acquire(uuid, GiB, "root-model", hold=False)
        env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_USER"}
        env.update(HOME=str(base), PYTHONPATH=str(ROOT))
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               NOBODY_SCRIPT, str(lease_dir), uuid, str(os.getpid())],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout)
        assert out["owner"] == "nobody"
        assert f"belongs to {mine.owner}, not nobody" in out["release"]
        assert out["unlink"] == "refused"  # the sticky bit: nobody may not delete root's lease file
        owners = sorted((x.owner, x.model) for x in LeaseBook(lease_dir, heartbeat_s=None).leases())
        assert owners == sorted([(mine.owner, "root-model"), ("nobody", "nobody-model")])
    finally:
        shutil.rmtree(base, ignore_errors=True)
