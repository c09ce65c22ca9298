"""Issue 15, one user filling the shared lease folder: their junk costs them, and nobody else.

Before, a folder with more than 50,000 entries was refused outright, and since a load
that cannot take its lease is refused, one user who planted 50,001 files stopped every
user's GPU loads. The attacker here is a forked child that became "nobody"
(tests/multiuser.py); the honest users are uid 64999 and root (this process).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time

import pytest

from fakes.clock import FakeClock
from multiuser import NOBODY, OTHER, ChildFailed, run_as, start_as
from workbench._process_identity import ProcessIdentity
from workbench.devices.leases import LeaseBook, leases_report
from workbench.devices.leases import folder as folder_module
from workbench.devices.leases.record import Lease, user_name
from workbench.errors import LeaseFolderError

GiB = 2**30
#: More than the 50,000 entries that made every reader refuse the folder before.
PLANTED = 60_000


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def engines():
    """``engines(uid)``: the PID of a process running as ``uid`` (an engine of that user's)."""
    procs = []

    def start(uid: int) -> int:
        procs.append(subprocess.Popen(["sleep", "600"], user=uid, group=uid, extra_groups=[]))
        return procs[-1].pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(30)


def book(folder, **kw) -> LeaseBook:
    return LeaseBook(folder, heartbeat_s=None, **{"admin_group": "", **kw})


def flood(folder, uuid: str, n: int) -> int:
    """As the attacker: ``n`` empty files, a quarter with names no lease has and the rest named like
    leases on the victims' GPU, in the attacker's name, in root's and in the honest user's."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            kind = i % 4
            if kind == 0:
                name = f"junk-{i}"
            elif kind == 1:
                name = f"{uuid}.u{os.geteuid()}.{i:012x}.0.lease"
            else:
                name = f"{uuid}.u{(0, OTHER)[kind - 2]}.{i:012x}.0.lease"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
        # Temporary names like the honest users' own (they clean up only what they own).
        os.close(os.open(f".tmp-u0-{'0' * 16}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    return n


def test_a_flood_of_files_costs_only_its_owner(folder, gpu, caplog, engines):
    parent = engines(OTHER)  # the honest user's engine: live as long as this test runs

    def honest_lease() -> str:
        return book(folder).acquire("cuda:0", 4 * GiB, "honest-model", pid=parent, watch="pid", hold=False).lease_id

    honest = run_as(OTHER, honest_lease)
    run_as(NOBODY, flood, folder, gpu.uuid, PLANTED, timeout_s=300)
    assert len(os.listdir(folder)) > 50_000

    victim = book(folder)
    with caplog.at_level(logging.WARNING, logger="workbench.devices.leases"):
        mine = victim.acquire("cuda:0", 8 * GiB, "victim-model", hold=False)  # before: LeaseFolderError
        live, _dead, listing = victim.survey()
        victim.survey()  # warned once, not at every listing
    assert mine.granted
    assert {(x.owner, x.model) for x in live} == {(user_name(OTHER), "honest-model"), (user_name(0), "victim-model")}
    assert {x.lease_id for x in live} == {honest, mine.lease_id}
    # Every lease-like file the attacker made counts against the attacker, whatever name it says.
    # (once it is left out, names in its own uid are passed over without a look: a lower bound)
    assert list(listing.flooded) == [NOBODY]
    assert 4096 < listing.flooded[NOBODY] <= PLANTED * 3 // 4
    flooded = [r.getMessage() for r in caplog.records if "lease-like files" in r.getMessage()]
    assert len(flooded) == 1
    assert f"{user_name(NOBODY)} owns more lease-like files than the 4096" in flooded[0]
    report = leases_report(victim)
    assert [(s["owner"], s["file"]) for s in report["skipped"]] == [(user_name(NOBODY), "(more than 4096 files)")]
    # What leases promise is still counted in full: 4 + 8 GiB of 24.
    assert victim.share("cuda:0").outstanding_bytes == 12 * GiB

    def second_honest() -> str:
        b = book(folder)
        lease = b.acquire("cuda:0", 2 * GiB, "second-model", hold=False)
        seen = {x.model for x in b.leases("cuda:0")}
        b.release(lease)
        return ",".join(sorted(seen))

    assert run_as(OTHER, second_honest) == "honest-model,second-model,victim-model"
    # The planted temporary file in root's name is nobody's to delete but its owner's.
    assert (folder / f".tmp-u0-{'0' * 16}").exists()


def test_an_owner_below_the_limit_is_read_and_above_it_left_out(folder, gpu, monkeypatch, engines):
    """The limit is per owner: exactly at it, the owner's leases count; one file more, none of them."""
    monkeypatch.setattr(folder_module, "MAX_FILES_PER_UID", 5)
    parent = engines(NOBODY)

    def take_and_plant(junk: int) -> str:
        b = book(folder)
        lease = b.acquire("cuda:0", 3 * GiB, "nobodys-model", pid=parent, watch="pid", hold=False)
        for i in range(junk):
            os.close(os.open(folder / f"{gpu.uuid}.u{os.geteuid()}.{i:012x}.0.lease", os.O_WRONLY | os.O_CREAT,
                             0o644))
        return lease.lease_id

    theirs = run_as(NOBODY, take_and_plant, 4)  # 1 lease + 4 junk = 5 files: at the limit
    reader = book(folder)
    live, _dead, listing = reader.survey()
    assert [x.lease_id for x in live] == [theirs]
    assert listing.flooded == {}
    assert len(listing.bad) == 4  # the junk, each named
    run_as(NOBODY, lambda: os.close(os.open(folder / f"{gpu.uuid}.u{NOBODY}.{'f' * 12}.0.lease",
                                            os.O_WRONLY | os.O_CREAT, 0o644)))
    live, _dead, listing = reader.survey()
    assert live == []
    assert listing.flooded == {NOBODY: 6}
    assert reader.acquire("cuda:0", 20 * GiB, "roots-model", hold=False).granted  # nobody's 3 GiB no longer count


def test_a_folder_too_slow_to_list_is_refused_naming_who_fills_it(folder, gpu, monkeypatch):
    """Past the time budget the listing is incomplete: the load is refused (fail closed), and the
    message names the owner of the junk so that an administrator can remove it."""
    run_as(NOBODY, flood, folder, gpu.uuid, 2000)
    monkeypatch.setattr(folder_module, "LIST_BUDGET_S", 0.0)
    with pytest.raises(LeaseFolderError) as err:
        book(folder).acquire("cuda:0", 1 * GiB, "m", hold=False)
    assert f"{user_name(NOBODY)} owns" in str(err.value)
    assert "no lease is taken" in str(err.value)
    assert "-user NAME -delete" in err.value.hint
    monkeypatch.setattr(folder_module, "LIST_BUDGET_S", 30.0)
    assert book(folder).acquire("cuda:0", 1 * GiB, "m", hold=False).granted


def test_a_hard_linked_lease_file_is_passed_over_never_counted_twice(folder, gpu, engines):
    """Where fs.protected_hardlinks is off, anyone can link anyone's file into the folder. A lease file
    has one link once written; a file with more is passed over, so a link can neither count a lease
    twice, nor pose as a newer generation of it, nor count against its owner's limit. (Root makes the
    links here: with fs.protected_hardlinks on, as on this machine, nobody else may.)"""
    parent = engines(OTHER)
    theirs = run_as(OTHER, lambda: book(folder).acquire("cuda:0", 5 * GiB, "m", pid=parent, watch="pid",
                                                        hold=False).file)
    gen_bump = theirs.replace(".0.lease", ".999.lease")
    os.link(folder / theirs, folder / gen_bump)
    live, _dead, listing = book(folder).survey()
    assert live == []
    assert listing.bad == []
    assert listing.flooded == {}
    os.unlink(folder / gen_bump)
    [lease] = book(folder).leases()
    assert (lease.file, lease.reserved_bytes) == (theirs, 5 * GiB)


def test_the_owner_still_writes_its_lease_into_a_full_folder(folder, gpu):
    """Planted files take no name the owner needs: its temporary and lease names are random."""
    run_as(NOBODY, flood, folder, gpu.uuid, 4000)
    lease = run_as(OTHER, lambda: book(folder).acquire("cuda:0", 1 * GiB, "m", hold=False).file)
    assert (folder / lease).stat().st_uid == OTHER


def test_a_holder_cannot_block_an_administrators_revocation_by_planting_it_first(folder, gpu, engines):
    """The revocation's name is known once the lease is: a holder who puts a file of its own there
    first made a group administrator's ``release --force`` report success while the lease stayed."""
    import grp

    group, gid = next((g, grp.getgrnam(g).gr_gid) for g in ("users", "staff", "adm") if _group_exists(g))
    parent = engines(NOBODY)

    def take_and_shield() -> tuple[str, str]:
        lease = book(folder).acquire("cuda:0", 5 * GiB, "shielded", pid=parent, watch="pid", hold=False)
        os.close(os.open(folder / (lease.file + ".revoked"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return lease.lease_id, lease.file

    lease_id, file = run_as(NOBODY, take_and_shield)
    with pytest.raises(ChildFailed) as failed:  # a real member of the administrators' group
        run_as(OTHER, lambda: book(folder, admin_group=group).release(lease_id, force=True), groups=(gid,))
    assert failed.value.type_name == "LeaseError"
    assert f"made by {user_name(NOBODY)}, not by an administrator; the lease stays" in failed.value.message
    assert [x.lease_id for x in book(folder, admin_group=group).leases()] == [lease_id]  # as the message says
    # Root still can: it deletes the files.
    assert book(folder).release(lease_id, force=True).lease_id == lease_id
    assert not (folder / file).exists()


def _hold_two_then_beat(folder, ready_w: int, go_r: int) -> list[str]:
    """As the holder: two held leases; once told, one heartbeat; the ids it still holds."""
    b = book(folder)
    first = b.acquire("cuda:0", 2 * GiB, "first")
    second = b.acquire("cuda:0", 2 * GiB, "second")
    os.write(ready_w, f"{first.file} {second.lease_id}\n".encode())
    os.read(go_r, 1)
    beat = [x.lease_id for x in b.heartbeat()]
    assert beat == [x.lease_id for x in b.held], (beat, b.held)
    return beat


def test_a_name_taken_after_roots_release_does_not_stop_the_holders_other_heartbeats(folder, gpu):
    """Root force-released one of a holder's leases (deleting its file); another user then made a
    file of that name. The holder's heartbeat failed on it, and its other leases went stale."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = start_as(OTHER, _hold_two_then_beat, folder, ready_w, go_r)
    first_file, second_id = os.read(ready_r, 4096).decode().split()
    book(folder).release(first_file.split(".")[2], force=True)  # root: the file is deleted
    run_as(NOBODY, lambda: os.close(os.open(folder / first_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)))
    os.write(go_w, b"g")
    assert child.result(60) == [second_id]
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)



def test_an_engine_lease_lives_by_its_own_users_process_only(folder, gpu, engines):
    """An engine's lease has no heartbeat: its PID says whether it lives. Tied to a process that
    is not its owner's (PID 1, forever alive), it blocked the GPU for good; now the heartbeat decides."""
    forged = run_as(NOBODY, lambda: book(folder).acquire("cuda:0", 20 * GiB, "forever", pid=1, watch="pid",
                                                          hold=False).lease_id)
    own_engine = engines(OTHER)
    honest = run_as(OTHER, lambda: book(folder).acquire("cuda:0", 2 * GiB, "engine", pid=own_engine, watch="pid",
                                                        hold=False).lease_id)
    clock = FakeClock(time.time())
    assert {x.lease_id for x in book(folder, clock=clock).leases()} == {forged, honest}  # fresh: both count
    clock.now += 3600  # an hour without a heartbeat
    live, dead, _ = book(folder, clock=clock).survey()
    assert [x.lease_id for x in live] == [honest]  # its engine runs as its owner
    assert [(x.lease_id, why) for x, why in dead] == [(forged, "no heartbeat for 60 min")]


def test_another_users_lease_under_my_lease_id_does_not_keep_me_from_releasing_mine(folder, gpu, engines):
    """Lease ids are visible to all, and anyone may write a lease under one already in use: the id
    was then ambiguous, and ``workbench leases release ID`` could not release the owner's lease."""
    mine = book(folder).acquire("cuda:0", 3 * GiB, "mine", hold=False)
    squatter = engines(NOBODY)

    def squat() -> str:
        b = book(folder)
        copy = Lease(mine.lease_id, gpu.uuid, "cuda:0", os.geteuid(), "", b.host, ProcessIdentity.of(squatter),
                     "squat", GiB, time.time(), time.time(), watch="pid")
        with b.folder.opened() as fd:
            os.close(b.folder.create(fd, copy, granted=True))
        return copy.file_name()

    theirs = run_as(NOBODY, squat)
    assert sorted(x.owner for x in book(folder).leases() if x.lease_id == mine.lease_id) == sorted(
        [user_name(0), user_name(NOBODY)])
    assert book(folder).release(mine.lease_id).file == mine.file
    assert not (folder / mine.file).exists()
    assert (folder / theirs).exists()
