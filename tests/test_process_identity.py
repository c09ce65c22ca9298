"""The one notion of "this process" (workbench._process_identity), used by leases and serving alike."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import psutil
import pytest

from workbench._process_identity import ProcessIdentity, boot_id, pid_namespace
from workbench.serve import process


def test_this_process_is_running_with_its_namespace_and_boot():
    me = ProcessIdentity.current()
    assert me.pid == os.getpid()
    assert me.status() == "running"
    assert me.alive()
    assert me.here()
    assert me.pid_ns == os.stat("/proc/self/ns/pid").st_ino == pid_namespace()
    with open("/proc/sys/kernel/random/boot_id") as fh:
        assert me.boot_id == fh.read().strip() == boot_id()
    with open("/proc/self/stat") as fh:
        assert me.start_ticks == int(fh.read().rsplit(")", 1)[1].split()[19])
    assert me.create_time_s == pytest.approx(psutil.Process().create_time(), abs=1.5)
    assert me.same_process(ProcessIdentity.of(os.getpid()))


def test_gone_recycled_zombie_and_elsewhere():
    me = ProcessIdentity.current()
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=60)
    assert ProcessIdentity(done.pid, 1, 1.0, me.pid_ns, me.boot_id).status() == "gone"
    # The same PID with another start: a recycled PID, not the process recorded.
    assert replace(me, start_ticks=me.start_ticks - 1).status() == "gone"
    assert replace(me, start_ticks=None, create_time_s=me.create_time_s - 3600).status() == "gone"
    # Another PID namespace or boot: nothing to look at from here; not gone either.
    other_ns = replace(me, pid_ns=me.pid_ns + 1)
    assert other_ns.status() == "elsewhere"
    assert other_ns.alive()
    assert not other_ns.here()
    assert replace(me, boot_id="00000000-0000-0000-0000-000000000000").status() == "elsewhere"
    # PID 1 here does not reap: an exited child is a zombie until waited for, and counts as gone.
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        recorded = ProcessIdentity.of(zombie.pid)
        deadline = time.monotonic() + 60
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recorded.status() == "gone"
        assert not process.is_running(zombie.pid)
    finally:
        zombie.wait(timeout=60)


def test_a_process_whose_start_is_hidden_counts_but_is_not_ours(monkeypatch):
    """``AccessDenied`` (hidepid, another user's process): alive for counting, never signalled.

    The one rule for leases and serve alike (before, leases said alive and serve said gone).
    """
    import workbench._process_identity as identity

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded = ProcessIdentity.of(sleeper.pid)
        monkeypatch.setattr(identity, "_start_ticks_and_state", lambda pid: (None, None))  # /proc hidden

        class Denied(psutil.Process):  # as psutil answers for a process /proc will not show us
            def create_time(self):
                if self.pid == sleeper.pid:
                    raise psutil.AccessDenied(self.pid)
                return super().create_time()

            def status(self):
                if self.pid == sleeper.pid:
                    raise psutil.AccessDenied(self.pid)
                return super().status()

        monkeypatch.setattr(psutil, "Process", Denied)
        assert recorded.status() == "unverified"
        assert recorded.alive()
        assert process.is_running(sleeper.pid, recorded.create_time_s)
        assert not process.is_ours(sleeper.pid, recorded.create_time_s)
        assert process.stop_group(sleeper.pid, recorded.create_time_s, grace_s=1) is False
        assert sleeper.poll() is None  # not signalled
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)
