"""GPU leases as one user sees them: files and modes, refusals naming holders, staleness, counting,
and 8 processes racing for one fake GPU (the same user's, and 8 different users').

GPUs are faked at the NVML seam (tests/fakes); the lease folder is the test's own
(WORKBENCH_LEASE_DIR, set by the root conftest). What other users can and cannot do
to these files is tests/devices/test_lease_attacks.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes.clock import FakeClock
from fakes.fake_pynvml import FakeGpu, FakeProcess
from multiuser import require_root, shared_tmp, start_as, sticky_folder
from workbench._process_identity import ProcessIdentity
from workbench.devices.leases import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    LeaseBook,
    acquire,
    get_lease_book,
    leases_report,
    list_leases,
    release,
)
from workbench.devices.leases.record import parse_name, user_name
from workbench.errors import InsufficientMemoryError, LeaseError, LeaseNotOwnedError

GiB = 2**30
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]



@pytest.fixture
def gpu(fake_nvml):
    """One 24 GiB fake GPU, seen by torch as cuda:0; the test may add NVML processes to it."""
    fake = fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    return fake.gpus[0]


@pytest.fixture
def lease_dir(tmp_path) -> Path:
    return Path(os.environ["WORKBENCH_LEASE_DIR"])


def book(hub_user: str, clock: FakeClock | None = None, **kw) -> LeaseBook:
    return LeaseBook(hub_user=hub_user, clock=clock or FakeClock(time.time()), heartbeat_s=None, **kw)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def lease_files(lease_dir: Path) -> list[Path]:
    return sorted(p for p in lease_dir.iterdir() if p.name.endswith(".lease"))


def test_one_file_per_lease_owned_by_its_holder_in_a_sticky_folder(gpu, lease_dir):
    lease = acquire("cuda:0", 5 * GiB, "Mistral-7B")
    assert stat.S_IMODE(os.stat(lease_dir).st_mode) == 0o1777
    [path] = lease_files(lease_dir)
    st = path.stat()
    # Only its owner may change it; the owner is the file's, not a field anyone can write.
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o644
    name = parse_name(path.name)
    assert (name.gpu_uuid, name.uid, name.lease_id) == (gpu.uuid, os.geteuid(), lease.lease_id)
    doc = json.loads(path.read_text())
    assert "owner" not in doc
    assert "heartbeat_s" not in doc
    assert doc["pid"] == os.getpid()
    assert doc["model"] == "Mistral-7B"
    assert doc["reserved_bytes"] == 5 * GiB
    me = ProcessIdentity.current()
    assert (doc["pid_ns"], doc["boot_id"], doc["pid_start_ticks"]) == (me.pid_ns, me.boot_id, me.start_ticks)
    assert [x.lease_id for x in list_leases()] == [lease.lease_id]
    [seen] = list_leases()
    assert seen.owner == get_lease_book().owner
    assert seen.uid == os.geteuid()
    assert seen.heartbeat_s == pytest.approx(st.st_ctime, abs=1e-6)  # the heartbeat is the file's ctime
    assert release(lease) is not None
    assert lease_files(lease_dir) == []
    assert list_leases() == []


def test_the_owner_is_the_uid_and_the_hub_user_a_label(gpu, monkeypatch):
    import pwd

    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    b = LeaseBook(heartbeat_s=None)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert (b.owner, b.hub_user, b.holder) == (me, "alice", f"{me} (hub user alice)")
    lease = b.acquire("cuda:0", GiB, "m", hold=False)
    assert lease.describe().startswith(f"cuda:0: 1.0 GiB leased by {me} (hub user alice) (m, kernel")
    monkeypatch.delenv("JUPYTERHUB_USER")
    assert LeaseBook(heartbeat_s=None).holder == me


def test_refusal_names_the_holder(gpu):
    clock = FakeClock(time.time())
    alice, bob = book("alice", clock), book("bob", clock)
    held = alice.acquire("cuda:0", int(20 * GiB), "Mixtral-8x7B", hold=False)
    alice.update(held, last_used_s=clock.now - 2 * 3600)
    with pytest.raises(InsufficientMemoryError) as err:
        bob.acquire("cuda:0", 10 * GiB, "Llama-3-8B")
    text = str(err.value)
    assert f"20.0 GiB leased by {alice.owner} (hub user alice) (Mixtral-8x7B, kernel {os.getpid()}, idle 2 h)" in text
    assert "only 4.0 GiB is free" in text
    assert err.value.holders[0]["hub_user"] == "alice"
    assert err.value.available_bytes == 4 * GiB
    # What fits next to it is granted.
    assert bob.acquire("cuda:0", 4 * GiB, "Llama-3-8B", hold=False).hub_user == "bob"


def test_the_same_uid_with_another_hub_label_needs_force(gpu):
    """Where every hub user has one uid (see README) leases are cooperative: a label is no
    protection, but nobody releases another hub user's lease by accident."""
    alice, bob = book("alice"), book("bob")
    lease = alice.acquire("cuda:0", GiB, "m", hold=False)
    with pytest.raises(LeaseNotOwnedError, match=r"belongs to .*hub user alice.*--force"):
        bob.release(lease.lease_id[:6])
    assert [x.lease_id for x in bob.leases()] == [lease.lease_id]
    assert bob.release(lease.lease_id, force=True).hub_user == "alice"
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
    assert bob.share("cuda:0", exclude=[x.lease_id for x in bob.leases() if x.hub_user == "bob"]
                     ).outstanding_bytes == 0


def test_fit_check_counts_other_leases(gpu, tmp_path):
    from transformers import LlamaConfig

    from workbench.runtime import LoadSpec, check_fit
    from workbench.runtime.fit import require_fit
    from workbench.store import ModelEntry, WeightStats

    params = 4_000_000_000
    # A config of its shape, so its KV cache is measured (unknown otherwise): 6.7B parameters, 13.5 GB in bfloat16.
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=32000).save_pretrained(tmp_path / "m")
    entry = ModelEntry(name="m-4b", path=tmp_path / "m", root=tmp_path, writable=False,
                       format="safetensors", params=params, dtype="bfloat16", num_layers=32, num_kv_heads=8,
                       head_dim=128, weights=WeightStats(params=params, linear_params=int(params * 0.9),
                                                         linear_rows=100_000, linear_count=200,
                                                         bytes_by_dtype={"BF16": 2 * params}))
    spec = LoadSpec(entry, devices=("cuda:0",)).validate()
    assert check_fit(entry, spec).fits is True
    book("alice").acquire("cuda:0", 18 * GiB, "Mixtral-8x7B", hold=False)
    chk = check_fit(entry, spec)
    assert chk.budgets[0].free_bytes == 24 * GiB
    assert chk.budgets[0].leased_bytes == 18 * GiB
    assert chk.fits is False
    with pytest.raises(InsufficientMemoryError, match=r"18.0 GiB leased by .*hub user alice\) \(Mixtral-8x7B, kernel"):
        require_fit(entry, spec)


def _forge_own(lease_dir: Path, lease, **changes) -> None:
    """Rewrite one of our own lease files with other content (as its owner may)."""
    path = lease_dir / lease.file
    doc = json.loads(path.read_text())
    doc.update(changes)
    st = path.stat()
    os.chmod(path, 0o644)
    path.write_text(json.dumps(doc))
    os.chmod(path, stat.S_IMODE(st.st_mode))


def test_stale_leases_are_ignored_and_their_owner_removes_them(gpu, lease_dir):
    clock = FakeClock(time.time())
    mine = book("alice", clock)
    a = mine.acquire("cuda:0", GiB, "dead-kernel", pid=dead_pid(), hold=False)
    b = mine.acquire("cuda:0", GiB, "recycled-pid", hold=False)
    c = mine.acquire("cuda:0", GiB, "frozen-kernel", hold=False)
    d = mine.acquire("cuda:0", GiB, "engine", pid=os.getpid(), watch="pid", hold=False)
    # Same PID, another process: the kernel that held it is gone.
    _forge_own(lease_dir, b, pid_start_ticks=ProcessIdentity.current().start_ticks - 100)
    # The dead kernel's lease was removed by its owner (this uid) at its next look (the next acquire).
    assert a.lease_id not in {parse_name(p.name).lease_id for p in lease_files(lease_dir)}
    reader = book("bob", clock)
    live, dead, _ = reader.survey()
    assert {x.lease_id for x in live} == {c.lease_id, d.lease_id}
    assert {x.lease_id: why for x, why in dead} == {b.lease_id: f"process {b.pid} on {b.host} is gone"}
    # Their owner removed them from the folder, not only from the listing.
    assert {parse_name(p.name).lease_id for p in lease_files(lease_dir)} == {c.lease_id, d.lease_id}
    clock.now += STALE_AFTER_S - 1
    assert {x.lease_id for x in reader.leases()} == {c.lease_id, d.lease_id}
    clock.now += 2  # no heartbeat for over a minute: a frozen kernel; a PID-watched engine stays
    assert [x.lease_id for x in reader.leases()] == [d.lease_id]


def test_zombie_holders_are_gone(gpu):
    """PID 1 of these machines does not reap: an exited holder stays a zombie, and is gone all the same."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while ProcessIdentity.of(child.pid).status() != "gone" and time.monotonic() < deadline:
            time.sleep(0.05)  # exited, not yet reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as fh:
            assert fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        lease = book("alice").acquire("cuda:0", GiB, "zombie-engine", pid=child.pid, watch="pid", hold=False)
        assert lease.process.start_ticks is not None
        assert book("bob").leases() == []
    finally:
        child.wait(timeout=60)


def test_heartbeat_touches_the_file_and_reports_last_use(gpu, lease_dir):
    holder = book("alice", clock=time.time)
    lease = holder.acquire("cuda:0", GiB, "m")
    used_at = time.time() - 30
    holder.set_activity(lease, lambda: used_at)
    before = (lease_dir / lease.file).stat().st_ctime_ns
    time.sleep(0.02)  # the ctime clock must move for the assertion below (not a timing test)
    [beat] = holder.heartbeat()
    st = (lease_dir / lease.file).stat()
    assert st.st_ctime_ns > before
    assert st.st_mtime == pytest.approx(used_at, abs=1e-3)
    [seen] = book("bob", clock=time.time).leases()
    assert seen.heartbeat_s == pytest.approx(st.st_ctime, abs=1e-6)
    assert seen.last_used_s == pytest.approx(used_at, abs=1e-3)
    assert seen.idle_s(used_at + 30) == pytest.approx(30, abs=1e-2)
    assert beat.last_used_s == used_at
    holder.release_all()
    assert book("bob").leases() == []
    assert lease_files(lease_dir) == []
    assert HEARTBEAT_S < STALE_AFTER_S / 3


def test_a_new_reservation_is_a_new_generation_counted_once(gpu, lease_dir):
    b = book("alice")
    lease = b.acquire("cuda:0", 10 * GiB, "m")
    settled = b.update(lease, reserved_bytes=3 * GiB)
    assert settled.lease_id == lease.lease_id
    assert settled.generation == 1
    # Both generations are on disk until the next heartbeat; readers count the newest only.
    assert len(lease_files(lease_dir)) == 2
    [seen] = book("bob").leases()
    assert (seen.reserved_bytes, seen.generation) == (3 * GiB, 1)
    assert book("bob").share("cuda:0").outstanding_bytes == 3 * GiB
    b.heartbeat()
    assert [parse_name(p.name).generation for p in lease_files(lease_dir)] == [1]
    b.release(settled)
    assert lease_files(lease_dir) == []


def test_release_of_a_released_lease_is_none_and_update_says_gone(gpu):
    alice = book("alice")
    lease = alice.acquire("cuda:0", GiB, "m", hold=False)
    assert alice.release(lease) is not None
    assert alice.release(lease) is None
    with pytest.raises(LeaseError, match="gone"):
        alice.update(lease, reserved_bytes=2 * GiB)


def test_report_is_json(gpu):
    lease = acquire("cuda:0", 3 * GiB, "m")
    doc = json.loads(json.dumps(leases_report()))
    [item] = doc["leases"]
    assert item["lease_id"] == lease.lease_id
    assert item["device"] == "cuda:0"
    assert item["reserved_bytes"] == 3 * GiB
    assert {"owner", "uid", "hub_user", "holder", "host", "pid", "model", "heartbeat_s", "idle_s", "gpu_uuid",
            "granted", "process"} <= set(item)
    assert item["pid"] == os.getpid()
    assert item["process"]["pid_ns"] == ProcessIdentity.current().pid_ns
    assert doc["stale"] == []
    assert doc["skipped"] == []


def test_cpu_loads_take_no_lease_and_leases_off_take_none(gpu, monkeypatch):
    from workbench.config import reset_settings
    from workbench.devices.leases import policy

    assert policy.take({"cpu": GiB}, "m") == ()
    [lease] = policy.take({"cuda:0": GiB, "cpu": GiB}, "m")
    policy.give_back([lease])
    monkeypatch.setenv("WORKBENCH_LEASES", "false")
    reset_settings()
    assert policy.take({"cuda:0": GiB}, "m") == ()
    assert list_leases() == []


# --- racing ---------------------------------------------------------------------------------


def _child(env: dict[str, str], nbytes: int, model: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "_lease_child.py"), str(nbytes), model],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_eight_processes_racing_for_one_gpu(lease_dir, gpu):
    """Eight kernels want 10 GiB each of one 24 GiB GPU at the same moment: exactly two get it."""
    base = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [_child(dict(base, JUPYTERHUB_USER=f"user{i}"), 10 * GiB, f"model-{i}") for i in range(8)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
        for p in procs:  # all of them at once
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            line = p.stdout.readline()
            assert line, p.stderr.read()[-2000:]
            results.append(json.loads(line))
        winners = [r for r in results if r["ok"]]
        losers = [r for r in results if not r["ok"]]
        assert len(winners) == 2
        assert len(losers) == 6
        for r in losers:
            assert "GiB leased by" in r["error"]
            assert "only 4.0 GiB is free" in r["error"]
        held = list_leases()
        assert sorted(x.lease_id for x in held) == sorted(r["lease_id"] for r in winners)
        assert sum(x.reserved_bytes for x in held) <= 24 * GiB
        # One winner crashes (no atexit): its lease goes stale at once, its PID being gone.
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


def _take_and_hold(lease_dir: str, nbytes: int, model: str, out_w: int, hold_r: int, hold_w: int) -> None:
    """As another user: take a lease, say how it went on ``out_w``, hold it until the parent closes ``hold_w``."""
    os.close(hold_w)  # our inherited copy: the parent's close must reach us as end of file
    b = LeaseBook(lease_dir, heartbeat_s=None, hub_user=None, admin_group="")
    try:
        lease = b.acquire("cuda:0", nbytes, model, hold=False)
        out = {"ok": True, "lease_id": lease.lease_id, "uid": os.geteuid(), "file": lease.file}
    except InsufficientMemoryError as exc:
        out = {"ok": False, "error": str(exc), "uid": os.geteuid()}
    os.write(out_w, (json.dumps(out) + "\n").encode())
    os.read(hold_r, 1)


def test_eight_users_racing_for_one_gpu(gpu):
    """The same race between eight different OS users in one sticky folder: still never over 24 GiB."""
    require_root()
    import psutil  # noqa: F401 (imported here: the children could not read it from /root)

    uids = [65534, *range(64990, 64997)]
    out_r, out_w = os.pipe()
    hold_r, hold_w = os.pipe()
    with shared_tmp() as base:
        folder = sticky_folder(base / "leases")
        children = [start_as(uid, _take_and_hold, str(folder), 10 * GiB, f"model-{uid}", out_w, hold_r, hold_w,
                             wait=True) for uid in uids]
        os.close(out_w)
        try:
            for child in children:  # all of them at once
                child.go()
            with os.fdopen(out_r) as lines:
                results = [json.loads(lines.readline()) for _ in uids]
            winners = [r for r in results if r["ok"]]
            assert len(winners) == 2, results
            assert {r["uid"] for r in results} == set(uids)
            for r in results:
                assert r["ok"] or "only 4.0 GiB is free" in r["error"], r
            # Root sees the two winners' leases, each file owned by its winner.
            seen = LeaseBook(folder, heartbeat_s=None).leases()
            assert sorted(x.lease_id for x in seen) == sorted(r["lease_id"] for r in winners)
            assert {x.uid for x in seen} == {r["uid"] for r in winners}
            assert {x.owner for x in seen} == {user_name(r["uid"]) for r in winners}
            assert sum(x.reserved_bytes for x in seen) <= 24 * GiB
        finally:
            os.close(hold_w)
            for child in children:
                child.result(60)
            os.close(hold_r)
        # Their holders gone, the leases are stale: ignored, and left for their owners to remove.
        assert LeaseBook(folder, heartbeat_s=None).leases() == []
        assert len([p for p in folder.iterdir() if p.name.endswith(".lease")]) == 2
