"""`workbench leases [--json]` and `workbench leases release ID [--force]` between two hub users of one uid.

(As other OS users: tests/devices/test_lease_attacks.py.)
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

from workbench.devices.leases import LeaseBook

UUID = "GPU-11111111-2222-3333-4444-555555555555"
ME = pwd.getpwuid(os.geteuid()).pw_name


def run_cli(*args: str, user: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JUPYTERHUB_USER": user}  # WORKBENCH_LEASE_DIR: the test's own (root conftest)
    return subprocess.run([sys.executable, "-m", "workbench.cli", "leases", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_list_and_release_only_with_force():
    lease = LeaseBook(hub_user="alice", heartbeat_s=None).acquire(UUID, 7 * 2**30, "Mixtral-8x7B", hold=False)
    proc = run_cli("--json", user="bob")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [item] = doc["leases"]
    assert doc["lease_dir"] == os.environ["WORKBENCH_LEASE_DIR"]
    assert doc["hub_user"] == "bob"
    assert (item["owner"], item["hub_user"], item["pid"], item["model"], item["reserved_bytes"], item["gpu_uuid"]) == \
        (ME, "alice", os.getpid(), "Mixtral-8x7B", 7 * 2**30, UUID)
    assert item["uid"] == os.geteuid()
    assert item["holder"] == f"{ME} (hub user alice)"
    assert item["heartbeat_s"] == lease.heartbeat_s
    assert item["host"] == lease.host

    text = run_cli(user="bob").stdout
    assert f"{ME} (hub user alice)" in text
    assert "Mixtral-8x7B" in text
    assert "7.0 GiB" in text
    assert lease.lease_id in text

    refused = run_cli("release", lease.lease_id, user="bob")
    assert refused.returncode == 1
    assert f"belongs to {ME} (hub user alice), not {ME} (hub user bob)" in refused.stderr
    assert "--force" in refused.stderr
    assert len(json.loads(run_cli("--json", user="bob").stdout)["leases"]) == 1

    forced = run_cli("release", lease.lease_id[:5], "--force", "--json", user="bob")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["released"] is True
    assert json.loads(run_cli("--json", user="bob").stdout)["leases"] == []


def test_the_owner_releases_without_force():
    lease = LeaseBook(hub_user="alice", heartbeat_s=None).acquire(UUID, 2**30, "m", hold=False)
    proc = run_cli("release", lease.lease_id, user="alice")
    assert proc.returncode == 0
    assert "released" in proc.stdout
