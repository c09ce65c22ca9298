"""A competing kernel for tests/devices/test_leases.py: takes a lease on a fake GPU, holds it until stdin closes.

Usage: python _lease_child.py BYTES MODEL  (WORKBENCH_LEASE_DIR and JUPYTERHUB_USER from the environment)
Prints "ready", waits for a line on stdin (so that every child starts at the same moment), then
prints one JSON line: {"ok": true, "lease_id": ...} or {"ok": false, "error": ...}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.fake_pynvml import FakeGpu, installed, make_fake_nvml  # noqa: E402
from workbench.errors import InsufficientMemoryError  # noqa: E402

fake = make_fake_nvml([FakeGpu(memory_total_bytes=24 * 2**30)])
with installed(fake, fake.torch_cuda()):
    from workbench.devices.leases import acquire, get_lease_book

    get_lease_book()  # settings and imports before the start line, so the race is the acquire alone
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        lease = acquire("cuda:0", int(sys.argv[1]), sys.argv[2])
        print(json.dumps({"ok": True, "lease_id": lease.lease_id}), flush=True)
    except InsufficientMemoryError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
    sys.stdin.read()  # hold the lease until the test closes our stdin; atexit then releases it
