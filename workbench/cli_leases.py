"""``workbench leases``: the GPU leases on this machine, and an administrator's forced release.

    workbench leases [--json]                   every live lease (stale ones are reclaimed first)
    workbench leases release ID [--force]       give back a lease; another user's only with --force

Registered by :func:`register` from ``workbench.cli.build_parser``.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import _cli_output as output


def cmd_leases(args: argparse.Namespace) -> int:
    from .devices import format_bytes
    from .devices.leases import duration_str, leases_report

    doc = leases_report()
    rows = [[x["lease_id"], x["device"], x["owner"], x["host"], str(x["pid"]), x["model"],
             format_bytes(x["reserved_bytes"]), f"{duration_str(x['heartbeat_age_s'])} ago",
             duration_str(x["idle_s"])] for x in doc["leases"]]
    text = (output.table(rows, ["ID", "GPU", "OWNER", "HOST", "PID", "MODEL", "BYTES", "HEARTBEAT", "IDLE"])
            if rows else f"No GPU leases in {doc['lease_dir']}.")
    output.emit(args, doc, text)
    return 0


def cmd_leases_release(args: argparse.Namespace) -> int:
    from .devices.leases import get_lease_book

    gone = get_lease_book().release(args.lease_id, force=args.force)
    if gone is None:
        output.emit(args, {"released": False, "lease": None}, f"lease {args.lease_id} was already gone")
        return 0
    output.emit(args, {"released": True, "lease": gone.to_dict()}, f"released {gone.describe()}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``leases`` (and ``leases release``) to the ``workbench`` command's subparsers."""
    desc = "GPU leases on this machine: owner, host, PID, model, bytes, heartbeat"
    p = subparsers.add_parser("leases", help=desc, description=desc)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(fn=cmd_leases)
    sub = p.add_subparsers(dest="leases_command")
    desc = "release a lease by id; another user's lease only with --force (a hub administrator's decision)"
    r = sub.add_parser("release", help=desc, description=desc)
    r.add_argument("lease_id", help="the lease's id (a unique prefix is enough), from `workbench leases`")
    r.add_argument("--force", action="store_true", help="release it even if it is another user's")
    r.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    r.set_defaults(fn=cmd_leases_release)
