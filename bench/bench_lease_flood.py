"""How long one listing of a flooded lease folder takes (issue 15: one user's junk costs only that user).

Plants N empty files (default 1,000,000) as root in a fresh folder, named like leases in another
uid's name (the worst case: every one needs its ``lstat``, since its owner is not the uid its name
says), then times ``LeaseFolder.list`` twice. The result must stay well inside
``folder.LIST_BUDGET_S``. Run as root: ``.venv/bin/python bench/bench_lease_flood.py [N]``.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

from workbench.devices.leases import folder as lease_folder


def main(n: int) -> None:
    base = tempfile.mkdtemp(prefix="wb-lease-flood-", dir="/tmp")
    try:
        path = os.path.join(base, "leases")
        os.mkdir(path, 0o755)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        t0 = time.monotonic()
        for i in range(n):
            os.close(os.open(f"GPU-0000.u65534.{i:012x}.0.lease", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                             dir_fd=fd))
        os.close(fd)
        print(f"planted {n} files in {time.monotonic() - t0:.1f} s")
        folder = lease_folder.LeaseFolder(path)
        for attempt in (1, 2):
            t0 = time.monotonic()
            with folder.opened() as dfd:
                listing = folder.list(dfd, now=time.time())
            took = time.monotonic() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"listing {attempt}: {took:.2f} s ({took / lease_folder.LIST_BUDGET_S:.0%} of the budget), "
                  f"max RSS {rss:.0f} MiB, owners left out {listing.flooded}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
