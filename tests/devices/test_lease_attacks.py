"""Issue 15, section 1, as real OS users attacking each other's GPU leases in one sticky folder.

The attacker is a forked child that became "nobody" (65534) or another unused uid
(tests/multiuser.py); the victim is root (this process) or uid 64999. Each test is one
kind of attack the issue lists; each failed on the lease files of before (one
world-writable JSON file per GPU whose owner was a field in it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
import tracemalloc
import uuid as uuid_module
from pathlib import Path

import pytest

from fakes.clock import FakeClock
from multiuser import NOBODY, OTHER, ChildFailed, require_root, run_as, shared_tmp, start_as
from workbench._process_identity import ProcessIdentity
from workbench.devices.leases import LeaseBook, leases_report, policy
from workbench.devices.leases.record import Lease, user_name
from workbench.errors import InsufficientMemoryError, LeaseFolderError, LeaseNotOwnedError

GiB = 2**30
TiB = 2**40
ROOT = Path(__file__).resolve().parents[2]
NOBODY_NAME = user_name(NOBODY)



def book(folder: Path, clock=None, **kw) -> LeaseBook:
    return LeaseBook(folder, heartbeat_s=None, admin_group=kw.pop("admin_group", ""), clock=clock or time.time, **kw)


def lease_name(uuid: str, uid: int) -> str:
    return f"{uuid}.u{uid}.{uuid_module.uuid4().hex[:12]}.0.lease"


def forged_content(name: str, **fields) -> bytes:
    parts = name.split(".")
    me = ProcessIdentity.current()
    doc = {"version": 2, "lease_id": parts[2], "gpu_uuid": parts[0], "device": "cuda:0", "hub_user": "alice",
           "host": os.uname().nodename, "pid": 1, "pid_start_ticks": None, "pid_create_time_s": None,
           "pid_ns": me.pid_ns, "boot_id": me.boot_id, "model": "forged", "reserved_bytes": TiB,
           "created_s": time.time() + 365 * 86400, "watch": "heartbeat"}
    doc.update(fields)
    return json.dumps(doc).encode()


def plant(folder: Path, name: str, data: bytes, mode: int = 0o644, mtime_s: float | None = None) -> None:
    """As the calling (child) user: a file in the lease folder with any content, mode and mtime."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.fchmod(fd, mode)
    if mtime_s is not None:
        os.utime(fd, (mtime_s, mtime_s))
    os.close(fd)


def snapshot(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def test_another_user_cannot_edit_touch_delete_or_rename_my_lease(folder, gpu):
    mine = book(folder).acquire("cuda:0", 5 * GiB, "root-model", hold=False)
    path = folder / mine.file
    before = snapshot(path)

    def attack() -> dict[str, int]:
        tries = {
            "write": lambda: os.open(path, os.O_WRONLY),
            "truncate": lambda: os.truncate(path, 0),
            "touch": lambda: os.utime(path),
            "date_ahead": lambda: os.utime(path, (time.time() + 86400 * 365,) * 2),
            "chmod": lambda: os.chmod(path, 0o666),
            "unlink": lambda: os.unlink(path),
            "rename": lambda: os.rename(path, folder / "mine-now"),
        }
        outcome = {}
        for what, fn in tries.items():
            try:
                fn()
                outcome[what] = 0
            except OSError as exc:
                outcome[what] = exc.errno
        # Replacing it with a file of our own under the same name: the sticky folder refuses too.
        plant(folder, "decoy", forged_content(mine.file, hub_user=None, reserved_bytes=1))
        try:
            os.rename(folder / "decoy", path)
            outcome["replace"] = 0
        except OSError as exc:
            outcome["replace"] = exc.errno
        return outcome

    outcome = run_as(NOBODY, attack)
    assert all(code in (errno.EACCES, errno.EPERM) for code in outcome.values()), outcome
    assert snapshot(path) == before
    [seen] = [x for x in book(folder).leases() if x.lease_id == mine.lease_id]
    assert (seen.uid, seen.reserved_bytes, seen.model) == (0, 5 * GiB, "root-model")


def test_a_forged_lease_is_its_writers_counts_at_most_the_gpu_and_goes_stale(folder, gpu, caplog):
    """Forged: in the victim's name, on PID 1, for 1 TiB, with a heartbeat and a start a year ahead."""
    uuid = gpu.uuid
    in_roots_name = lease_name(uuid, 0)
    in_own_name = lease_name(uuid, NOBODY)
    year = time.time() + 365 * 86400

    def forge() -> None:
        plant(folder, in_roots_name, forged_content(in_roots_name, hub_user=None), mtime_s=year)
        plant(folder, in_own_name, forged_content(in_own_name), mtime_s=year)

    run_as(NOBODY, forge)
    planted = {n: snapshot(folder / n) for n in (in_roots_name, in_own_name)}
    clock = FakeClock(time.time())
    reader = book(folder, clock)
    with caplog.at_level(logging.WARNING, logger="workbench.devices.leases"):
        live, _dead, listing = reader.survey()
    # A file claiming root's uid but owned by nobody is no lease at all, and the warning says whose it is.
    assert [(b.name, b.owner) for b in listing.bad] == [(in_roots_name, NOBODY_NAME)]
    assert f"{in_roots_name} (owned by {NOBODY_NAME}): its name says uid 0" in caplog.text
    # The other is nobody's own lease, shown as theirs whatever name it gives, and capped at the GPU.
    [forged] = live
    assert (forged.uid, forged.owner, forged.holder) == (NOBODY, NOBODY_NAME, f"{NOBODY_NAME} (hub user alice)")
    assert forged.reserved_bytes == 24 * GiB
    assert forged.heartbeat_s <= clock.now
    assert forged.created_s <= clock.now
    with pytest.raises(InsufficientMemoryError, match=f"leased by {NOBODY_NAME} \\(hub user alice\\)"):
        reader.acquire("cuda:0", GiB, "victim", hold=False)
    # Nobody touches its heartbeat (only the kernel can date a ctime): a minute later it no longer counts.
    clock.now += 61
    assert reader.leases() == []
    assert reader.acquire("cuda:0", 20 * GiB, "victim", hold=False).granted
    # Readers (even root, who could) never changed or deleted another user's files.
    assert {n: snapshot(folder / n) for n in planted} == planted


def _release_as_cli(folder: Path, lease_id: str, admin_group: str) -> dict:
    import contextlib
    import io

    from workbench import cli
    from workbench.config import reset_settings

    os.environ["WORKBENCH_LEASE_DIR"] = str(folder)
    os.environ["WORKBENCH_LEASE_ADMIN_GROUP"] = admin_group
    os.environ.pop("JUPYTERHUB_USER", None)
    reset_settings()
    from workbench.devices import leases

    leases._book = None  # this user's own book, not the parent's
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["leases", "release", lease_id, "--force", "--json"])
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _admin_group() -> tuple[str, int]:
    import grp

    for name in ("users", "staff", "adm"):
        try:
            return name, grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    raise AssertionError("no group to play the administrators' group with")


def test_release_force_needs_root_or_the_administrators_group(folder, gpu):
    holder = book(folder)
    mine = holder.acquire("cuda:0", 5 * GiB, "root-model")  # held: it heartbeats
    # nobody, in no group, with --force: refused by the CLI, the lease untouched.
    out = run_as(NOBODY, _release_as_cli, folder, mine.lease_id, "")
    assert out["code"] == 1, out
    doc = json.loads(out["stdout"])
    assert doc["error"] == "LeaseNotOwnedError"
    assert "only root may release it" in doc["message"]
    assert [x.lease_id for x in book(folder).leases()] == [mine.lease_id]
    # A group nobody can name for themselves is not enough either: membership is the kernel's word.
    group, gid = _admin_group()
    out = run_as(NOBODY, _release_as_cli, folder, mine.lease_id, group)
    assert out["code"] == 1
    assert "or a member of the group" in json.loads(out["stdout"])["message"]
    # A real member of the administrators' group: the release is a revocation (only root may delete here).
    out = run_as(OTHER, _release_as_cli, folder, mine.lease_id, group, groups=(gid,))
    assert out["code"] == 0, out
    assert json.loads(out["stdout"])["released"] is True, out
    assert (folder / (mine.file + ".revoked")).stat().st_uid == OTHER
    assert (folder / mine.file).exists()  # not deletable by them
    assert book(folder, admin_group=group).leases() == []  # readers whose settings name the group
    assert [x.lease_id for x in book(folder, admin_group="").leases()] == [mine.lease_id]  # theirs don't
    # The holder gives it up at its next heartbeat, and removes its file.
    holder.folder.admin_group = group
    assert holder.heartbeat() == []
    assert holder.held == []
    assert not (folder / mine.file).exists()


def test_root_force_releases_another_users_lease(folder, gpu):
    def take() -> str:
        return book(folder).acquire("cuda:0", 5 * GiB, "nobodys-model", hold=False).lease_id

    lease_id = run_as(NOBODY, take)
    root = book(folder)
    with pytest.raises(LeaseNotOwnedError, match=f"belongs to {NOBODY_NAME}.*--force"):
        root.release(lease_id)
    gone = root.release(lease_id, force=True)
    assert gone.owner == NOBODY_NAME
    assert [p for p in folder.iterdir() if p.name.endswith(".lease")] == []


def test_a_bad_file_costs_one_warning_and_drops_no_other_lease(folder, gpu, caplog):
    """Invalid JSON and a field of the wrong type: skipped, named, and the other leases still count."""
    victim = book(folder)
    victim.acquire("cuda:0", 20 * GiB, "victims-model", hold=False)
    torn, typed, nested = (lease_name(gpu.uuid, NOBODY) for _ in range(3))

    def plant_bad() -> None:
        plant(folder, torn, b'{"version": 2, "leases": [{"lease_')
        plant(folder, typed, forged_content(typed, pid="abc", created_s=time.time()))
        plant(folder, nested, b"[" * 2000 + b"]" * 2000)  # deeper than json may recurse

    run_as(NOBODY, plant_bad)
    with caplog.at_level(logging.WARNING, logger="workbench.devices.leases"):
        for _ in range(3):  # warned about once per file, not on every read
            live, _dead, listing = victim.survey()
    assert [x.model for x in live] == ["victims-model"]
    reasons = {b.name: b.reason for b in listing.bad}
    assert reasons[torn].startswith("not JSON")
    assert reasons[typed] == "pid must be a whole number from 1 to 2147483647, not 'abc'"
    assert reasons[nested].startswith("not JSON")
    warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == 3
    assert all(f"(owned by {NOBODY_NAME})" in w for w in warnings)
    # Another user still cannot have the 20 GiB promised to the victim (before: 40 GiB on a 24 GiB GPU) ...
    def second() -> str:
        try:
            book(folder).acquire("cuda:0", 20 * GiB, "second", hold=False)
        except InsufficientMemoryError as exc:
            return str(exc)
        return "granted"

    assert "only 4.0 GiB is free" in run_as(OTHER, second)
    # ... and listing, the report and acquiring go on (before: a raw TypeError for everyone).
    assert len(leases_report(victim)["skipped"]) == 3
    assert victim.acquire("cuda:0", 4 * GiB, "small", hold=False).granted


def test_a_huge_lease_file_is_not_read(folder, gpu):
    huge = lease_name(gpu.uuid, NOBODY)

    def plant_huge() -> None:
        fd = os.open(folder / huge, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.ftruncate(fd, 182 * 10**6)  # 182 MB (sparse: no disk spent)
        os.close(fd)

    run_as(NOBODY, plant_huge)
    reader = book(folder)
    tracemalloc.start()
    try:
        live, _dead, listing = reader.survey()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert live == []
    assert [b.reason for b in listing.bad] == ["182000000 bytes, more than a lease's 4096"]
    assert peak < 2**20  # not one megabyte of it was read (before: 805 MB and a minute per reader)


def test_planted_symlinks_are_never_followed(folder, gpu):
    mine = book(folder).acquire("cuda:0", 10 * GiB, "root-model", hold=False)
    as_nobody, as_root = lease_name(gpu.uuid, NOBODY), lease_name(gpu.uuid, 0)

    def plant_links() -> None:
        os.symlink(folder / mine.file, folder / as_nobody)  # to count root's lease twice
        os.symlink("/etc/passwd", folder / as_root)

    run_as(NOBODY, plant_links)
    live, _dead, listing = book(folder).survey()
    assert [x.lease_id for x in live] == [mine.lease_id]  # once
    assert {(b.name, b.owner, b.reason) for b in listing.bad} == {
        (as_nobody, NOBODY_NAME, "a symbolic link"), (as_root, NOBODY_NAME, "a symbolic link")}


def test_a_lease_folder_that_is_a_link_or_another_users_is_refused(gpu):
    with shared_tmp() as base:
        theirs = base / "theirs"
        link = base / "leases-link"

        def make() -> None:
            theirs.mkdir()
            os.chmod(theirs, 0o1777)
            os.symlink(theirs, link)

        os.chmod(base, 0o1777)  # for a moment, so that nobody can make them
        run_as(NOBODY, make)
        os.chmod(base, 0o755)
        # A folder created first by another user: its owner could delete everyone's leases.
        with pytest.raises(LeaseFolderError, match=f"{theirs} belongs to {NOBODY_NAME}") as err:
            book(theirs).acquire("cuda:0", GiB, "m")
        assert err.value.owner == NOBODY_NAME
        assert err.value.path == str(theirs)
        with pytest.raises(LeaseFolderError, match=f"{link} is a symbolic link \\(owned by {NOBODY_NAME}\\)"):
            book(link).acquire("cuda:0", GiB, "m")

        # 64999 is refused the same way (not only root).
        def try_as_other() -> str:
            try:
                book(theirs).acquire("cuda:0", GiB, "m")
            except LeaseFolderError as exc:
                return str(exc)
            return "granted"

        assert f"belongs to {NOBODY_NAME}" in run_as(OTHER, try_as_other)
        # Writable by others without the sticky bit: anyone could delete anyone's leases.
        loose = base / "loose"
        loose.mkdir()
        os.chmod(loose, 0o777)
        with pytest.raises(LeaseFolderError, match=r"mode 0777\) lets others delete"):
            book(loose).leases()
        assert list(theirs.iterdir()) == []
        assert list(loose.iterdir()) == []


def test_a_load_that_cannot_take_its_lease_is_refused(gpu, monkeypatch):
    """Fail closed: no lease, no load (before: the load went on with no lease, silently)."""
    from workbench.config import reset_settings

    with shared_tmp() as base:
        theirs = base / "theirs"
        os.chmod(base, 0o1777)
        run_as(NOBODY, lambda: (theirs.mkdir(), os.chmod(theirs, 0o1777)))
        os.chmod(base, 0o755)
        monkeypatch.setenv("WORKBENCH_LEASE_DIR", str(theirs))
        reset_settings()
        with pytest.raises(LeaseFolderError) as err:
            policy.take({"cuda:0": GiB}, "tiny-llama")
        text = str(err.value)
        assert text.startswith(f"tiny-llama cannot take its GPU lease on cuda:0: the lease folder {theirs} "
                               f"belongs to {NOBODY_NAME}")
        assert "leases_enabled = False" in text  # the administrator's way out, on a single-user machine
        monkeypatch.setenv("WORKBENCH_LEASES", "0")
        reset_settings()
        assert policy.take({"cuda:0": GiB}, "tiny-llama") == ()


def test_an_unreadable_file_hides_nothing_but_itself(folder, gpu):
    """A 0600 file in the folder (before: a 0600 lease file made other users load with no lease)."""
    private = lease_name(gpu.uuid, NOBODY)
    run_as(NOBODY, lambda: plant(folder, private, forged_content(private, created_s=time.time()), mode=0o600))

    def take_as_other() -> dict:
        reader = book(folder)
        lease = reader.acquire("cuda:0", 6 * GiB, "others-model", hold=False)
        _live, _dead, listing = reader.survey()
        return {"lease_id": lease.lease_id, "bad": [(b.name, b.owner, b.reason) for b in listing.bad]}

    out = run_as(OTHER, take_as_other)
    assert out["bad"] == [(private, NOBODY_NAME, "cannot be opened (Permission denied)")]
    # Its lease was granted and written as its own (stale now: the child has ended).
    [(seen, why)] = book(folder).survey()[1]
    assert (seen.lease_id, seen.owner, why) == (out["lease_id"], user_name(OTHER), f"process {seen.pid} on "
                                                f"{seen.host} is gone")


def test_a_live_lease_from_another_pid_namespace_is_judged_by_heartbeat(folder, gpu):
    """Same host name, another PID namespace (a host-network pod): its PID means nothing here."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=60)
    me = ProcessIdentity.current()
    elsewhere = ProcessIdentity(done.pid, 12345, 1.0, me.pid_ns + 1, me.boot_id)

    def take_elsewhere() -> str:
        b = book(folder)
        lease = Lease("a1b2c3d4e5f6", gpu.uuid, "cuda:0", os.geteuid(), "", b.host, elsewhere, "pod-model",
                      8 * GiB, time.time(), time.time())
        with b.folder.opened() as fd:
            os.close(b.folder.create(fd, lease, granted=True))
        return lease.file_name()

    name = run_as(NOBODY, take_elsewhere)
    clock = FakeClock(time.time())
    reader = book(folder, clock)
    [seen] = reader.leases()
    assert seen.process.pid == done.pid
    assert seen.host == reader.host
    assert not seen.process.here()
    assert reader.share("cuda:0").outstanding_bytes == 8 * GiB
    clock.now += 61  # no heartbeat for a minute: stale now, ignored, and still not deleted by anyone else
    live, dead, _ = reader.survey()
    assert live == []
    assert [why for _, why in dead] == ["no heartbeat for 61 s"]
    assert (folder / name).exists()


def test_a_fifo_in_the_lease_folder_does_not_block_workbench_leases(folder, gpu):
    mine = book(folder).acquire("cuda:0", 3 * GiB, "root-model", hold=False)
    fifo = lease_name(gpu.uuid, NOBODY)

    def plant_fifos() -> None:
        os.mkfifo(folder / fifo, 0o644)
        os.mkfifo(folder / f"{gpu.uuid}.json", 0o644)  # where the lease file of before was read

    run_as(NOBODY, plant_fifos)
    env = {**os.environ, "WORKBENCH_LEASE_DIR": str(folder),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    code = ("import sys; from fakes.fake_pynvml import FakeGpu, installed, make_fake_nvml\n"
            "fake = make_fake_nvml([FakeGpu(memory_total_bytes=24 * 2**30)])\n"
            "with installed(fake, fake.torch_cuda()):\n"
            "    from workbench.cli import main\n"
            "    sys.exit(main(['leases', '--json']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert [x["lease_id"] for x in doc["leases"]] == [mine.lease_id]
    assert doc["skipped"] == [{"file": fifo, "owner": NOBODY_NAME, "reason": "a FIFO"}]
    # A kernel's load lists the same folder to take its lease: the FIFOs cost it nothing either.
    after = book(folder).acquire("cuda:0", 3 * GiB, "kernel-model", hold=False)
    assert after.granted
    assert {x.lease_id for x in book(folder).leases()} == {mine.lease_id, after.lease_id}


def test_a_childs_failure_comes_back_named():
    """The helper itself: what a child raises reaches the test with its type."""
    require_root()

    def fail() -> None:
        raise PermissionError("as nobody")

    with pytest.raises(ChildFailed, match="PermissionError: as nobody"):
        run_as(NOBODY, fail)
    child = start_as(NOBODY, os.geteuid)
    assert child.result() == NOBODY
