"""The Jupyter server extension: REST endpoints and Prometheus metrics over the workbench's layers.

Enabled on install by ``etc/jupyter/jupyter_server_config.d/workbench.server.json``
(shipped as wheel shared data), so every Jupyter server in the environment, a
JupyterHub user's server included, loads it. It adds, under the server's base
URL (``/user/<name>/`` behind JupyterHub), all behind Jupyter's authentication:

* ``GET workbench/api/devices``: the devices, as ``workbench devices --json``;
* ``GET workbench/api/telemetry?since=SECONDS``: the latest sample and the last
  ``SECONDS`` (default 60) of history, from one sampler the server starts on first use;
* ``GET workbench/api/store``: the store listing, as ``workbench store list --json``;
* ``GET workbench/api/store/NAME``: one item of that listing (404 when no root has ``NAME``);
* ``GET workbench/api/leases``: the GPU leases, as ``workbench leases --json``;

Every read runs off the event loop, bounded in time (:mod:`.offloop`); errors are
jupyter_server's JSON error replies with the status :mod:`.statuses` gives each workbench
error (a user's mistake 4xx, a fault 500). The extension also
registers :class:`workbench.telemetry.WorkbenchCollector` with
``prometheus_client.REGISTRY``, so jupyter_server's own ``/metrics`` carries the
``workbench_*`` series. Settings come from the server's Jupyter config
(``c.WorkbenchSettings.store_path = ...`` in ``jupyter_server_config.py``).

Importing this package is cheap: tornado and the handlers load with the extension.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Tell jupyter_server which module to load (this one)."""
    return [{"module": "workbench.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Add the REST handlers and register the Prometheus collector (called by jupyter_server)."""
    from .app import load

    load(serverapp)


# jupyter_server < 2 looked for the older name.
load_jupyter_server_extension = _load_jupyter_server_extension
