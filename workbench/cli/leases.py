"""``workbench leases``: the GPU leases on this machine, and an administrator's forced release.

    workbench leases [--json]                   every lease: live ones, stale ones (with why), files skipped
    workbench leases release ID [--force]       give back a lease; another user's only with --force, as
                                                root or a member of the setting lease_admin_group

Registered by :func:`register` from :func:`workbench.cli.app.build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._output import _cell, emit, table


def cmd_leases(args: argparse.Namespace) -> int:
    from ..devices import format_bytes
    from ..devices.leases import duration_str, leases_report

    doc = leases_report()

    def row(x: dict[str, Any], state: str) -> list[str]:
        return [x["lease_id"], x["device"], x["holder"], x["host"], str(x["pid"]), x["model"],
                format_bytes(x["reserved_bytes"]), f"{duration_str(x['heartbeat_age_s'])} ago",
                duration_str(x["idle_s"]), state]

    rows = [row(x, "live" if x["granted"] else "claiming") for x in doc["leases"]]
    rows += [row(x, f"stale: {x['reason']}") for x in doc["stale"]]
    header = ["ID", "GPU", "OWNER", "HOST", "PID", "MODEL", "BYTES", "HEARTBEAT", "IDLE", "STATE"]
    text = table(rows, header) if rows else f"No GPU leases in {doc['lease_dir']}."
    for bad in doc["skipped"]:
        owner = f" (owned by {_cell(bad['owner'])})" if bad["owner"] else ""
        text += f"\nskipped {_cell(bad['file'])}{owner}: {_cell(bad['reason'])}"
    emit(args, doc, text)
    return 0


def cmd_leases_release(args: argparse.Namespace) -> int:
    from ..devices.leases import get_lease_book

    gone = get_lease_book().release(args.lease_id, force=args.force)
    if gone is None:
        emit(args, {"released": False, "lease": None}, f"lease {args.lease_id} was already gone")
        return 0
    emit(args, {"released": True, "lease": gone.to_dict()}, f"released {gone.describe()}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``leases`` (and ``leases release``) to the ``workbench`` command's subparsers."""
    desc = "GPU leases on this machine: owner, host, PID, model, bytes, heartbeat"
    p = subparsers.add_parser("leases", help=desc, description=desc)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(fn=cmd_leases)
    sub = p.add_subparsers(dest="leases_command")
    desc = ("release a lease by id; another user's lease only with --force, as root or a member of the group "
            "the setting lease_admin_group names")
    r = sub.add_parser("release", help=desc, description=desc)
    r.add_argument("lease_id", help="the lease's id (a unique prefix is enough), from `workbench leases`")
    r.add_argument("--force", action="store_true",
                   help="release it even if it is another user's (administrators only; stale leases too)")
    r.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    r.set_defaults(fn=cmd_leases_release)
