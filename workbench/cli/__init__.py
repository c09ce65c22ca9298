"""The ``workbench`` command: one module per command group (ARCHITECTURE.md section 3 is its contract).

    app.py        the parser (built from the groups below) and the one error handler: ``main``
    store.py      ``store list|inspect|seed|import|delete``, and ``open_store`` (roots checked first)
    devices.py    ``devices``
    leases.py     ``leases``, ``leases release``
    run.py        ``run`` (a store model, or ``--endpoint NAME``)
    serve.py      ``serve`` (checks before torch, signals while it waits)
    endpoints.py  ``endpoints``, ``endpoints add|stop|share``
    _output.py    how every command prints (``--json``: one document on stdout; progress on stderr)

Only this package parses arguments or installs signal handlers; the core layers it calls
have no argparse (``tests/test_layering.py``). Heavy libraries are imported inside the
commands that need them, so ``workbench store list`` and an argument error never import torch.
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]
