"""What the server extension holds: its settings, one sampler, the handlers and the collector.

The documents are built by the same functions as the command line's ``--json``
output (:mod:`workbench.server.documents`), so the REST API and the CLI cannot
drift apart.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..errors import WorkbenchError
from . import documents
from .offloop import METRICS_WAIT_S, OffLoop, ReadTimeout, Snapshot
from .statuses import WorkbenchHTTPError, http_error

#: Default and largest ``since`` for the telemetry endpoint, in seconds.
DEFAULT_SINCE_S = 60.0


class ServerState:
    """The extension's state in one Jupyter server: settings, lazily started sampler, the reads.

    Args:
        settings: the workbench settings built from the server's config.

    One sampler per server, created and started by the first request (or scrape)
    that needs it, never at start-up: a server nobody looks at samples nothing.
    Every read a request needs runs in :attr:`reads` (off the event loop, one at a time
    per kind, waited for at most ``settings.server_read_timeout_s``); ``/metrics`` serves
    :attr:`lease_snapshot`, the last lease reading, because it may not wait at all.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._sampler: Any = None
        self._book: Any = None
        self.exported_env: dict[str, str] = {}
        self._lock = threading.Lock()
        self.reads = OffLoop()
        self.lease_snapshot: Snapshot[list[dict[str, Any]]] = Snapshot(
            self.reads, "leases", lambda: documents.leases_document(self.lease_book()))

    def store(self) -> Any:
        from ..store import ModelStore

        return ModelStore(self.settings.store_roots(), cache_path=Path(self.settings.cache_dir) / "index.json")

    def lease_book(self) -> Any:
        """A reader of the lease folder from the server's settings (it holds no lease itself)."""
        from ..devices.leases import LeaseBook

        with self._lock:
            if self._book is None:
                self._book = LeaseBook(self.settings.lease_dir, heartbeat_s=None,
                                       admin_group=self.settings.lease_admin_group)
            return self._book

    def sampler(self, start: bool = True) -> Any:
        """The server's one sampler (``None`` before the first use when ``start`` is false)."""
        from ..telemetry.sampler import Sampler

        with self._lock:
            if self._sampler is None:
                if not start:
                    return None
                self._sampler = Sampler(interval_s=self.settings.telemetry_interval_s,
                                        history_s=self.settings.telemetry_history_s)
            sampler = self._sampler
        if start and not sampler.running:
            sampler.start()
        if start and sampler.latest() is None:
            sampler.sample_now()  # the first answer has a reading, not an empty history
        return sampler

    def close(self) -> None:
        with self._lock:
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.close()
        self.reads.close()


# --- handlers -------------------------------------------------------------------------------


class _Base(APIHandler):
    """JSON over GET only; every read runs off the event loop, bounded in time (see :mod:`.offloop`).

    Errors the layers raise become ``tornado.web.HTTPError`` with the status
    :mod:`.statuses` gives them, which ``APIHandler`` writes as jupyter_server's JSON error.
    """

    def initialize(self, state: ServerState) -> None:
        self.state = state

    async def _reply(self, kind: str, build: Callable[[], Any], what: str) -> None:
        """Answer with ``build()``'s document, built in the state's pool as the read of ``kind``.

        Raises:
            tornado.web.HTTPError: 503 when the read of ``what`` takes longer than the setting
                ``server_read_timeout_s`` (it goes on; the next request gets its result);
                the status of a workbench error (:func:`.statuses.http_error`).
        """
        timeout_s = self.state.settings.server_read_timeout_s
        try:
            doc = await self.state.reads.run(kind, build, timeout_s, what)
        except ReadTimeout as exc:
            raise WorkbenchHTTPError(
                503, f"{exc}: the read goes on in the background; try again in a moment (if it keeps "
                     f"happening, something in {what} is slow to read, e.g. a file on a stuck mount)") from None
        except WorkbenchError as exc:  # anything else is a bug: jupyter_server logs its traceback, answers 500
            raise http_error(exc) from None
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(doc, default=str))


class DevicesHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._reply("devices", documents.devices_document, "the devices (NVML)")


class StoreHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._reply("store", lambda: documents.store_document(self.state.store()),
                          f"the store ({self.state.settings.store_path})")


class StoreEntryHandler(_Base):
    """``GET workbench/api/store/NAME``: the entry ``NAME`` as in the listing (404 when there is none)."""

    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        await self._reply(f"store/{name}", lambda: documents.entry_document(self.state.store(), name),
                          f"{name!r} in the store ({self.state.settings.store_path})")


class LeasesHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._reply("leases", self.state.lease_snapshot.read,
                          f"the lease folder ({self.state.settings.lease_dir})")


class TelemetryHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        raw = self.get_argument("since", str(DEFAULT_SINCE_S))
        try:
            since = float(raw)
        except ValueError:
            raise WorkbenchHTTPError(400, f"since={raw!r} is not a number of seconds") from None
        if not math.isfinite(since) or since < 0:
            raise WorkbenchHTTPError(400, f"since={raw!r} must be a non-negative number of seconds")

        def build() -> dict[str, Any]:
            sampler = self.state.sampler()
            return documents.telemetry_document(sampler, time.time() - since)

        # One read per window: a request joining a read in flight gets that read's document.
        await self._reply(f"telemetry:{since!r}", build, "the telemetry sampler")


class KernelsHandler(_Base):
    """``GET workbench/api/kernels``: what each of the user's kernels holds (:func:`documents.kernels_document`)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        kernels = await server_kernels(self.kernel_manager, self.session_manager)
        await self._reply("kernels", lambda: documents.kernels_document(kernels),
                          "the kernels' processes and what they published (jupyter --runtime-dir)")


async def server_kernels(kernel_manager: Any, session_manager: Any) -> list[dict[str, Any]]:
    """This server's kernels: ``kernel_id``, ``name`` (the kernel spec), ``path`` (the notebook of its
    session, ``None`` without one) and ``pid`` (``None`` for a kernel that is not a local process).
    Read from the server's own managers (memory only), on the event loop."""
    paths: dict[str, str | None] = {}
    for session in await session_manager.list_sessions():
        kernel = session.get("kernel") or {}
        if kernel.get("id"):
            paths[kernel["id"]] = session.get("path")
    found = []
    for kernel_id in kernel_manager.list_kernel_ids():
        try:
            km = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # culled or shut down since it was listed
            continue
        pid = getattr(getattr(km, "provisioner", None), "pid", None)
        found.append({"kernel_id": kernel_id, "name": getattr(km, "kernel_name", None),
                      "path": paths.get(kernel_id), "pid": pid if isinstance(pid, int) else None})
    return found


# --- loading --------------------------------------------------------------------------------

_metrics_lock = threading.Lock()
_current: ServerState | None = None
_registered = False


def _current_sampler() -> Any:
    """The server's sampler; the first scrape starts it off the loop (its first NVML reading
    can take a while), waiting at most ``METRICS_WAIT_S`` for it."""
    state = _current
    if state is None:
        return None
    sampler = state.sampler(start=False)
    if sampler is None or not sampler.running:
        # Not ready in time: this scrape goes without it. Failed: the collector logs why.
        with contextlib.suppress(concurrent.futures.TimeoutError):
            state.reads.submit("sampler", state.sampler).result(timeout=METRICS_WAIT_S)
        sampler = state.sampler(start=False)
    return sampler


def _current_leases() -> list[dict[str, Any]] | None:
    """The last lease reading (never read here: the collector runs on the event loop)."""
    state = _current
    if state is None:
        return []
    doc, _age = state.lease_snapshot.get()
    return None if doc is None else doc["leases"]


def _current_leases_age() -> float | None:
    state = _current
    return state.lease_snapshot.peek()[1] if state is not None else None


def register_metrics(state: ServerState) -> None:
    """Point the process's ``workbench_*`` collector at ``state``, registering it once.

    ``prometheus_client.REGISTRY`` is process-wide and refuses a second collector
    with the same names, so one collector is registered and reads whichever server
    state was loaded last (tests start several servers in one process).
    """
    global _current, _registered
    from prometheus_client import REGISTRY

    from ..telemetry.prometheus import WorkbenchCollector

    with _metrics_lock:
        _current = state
        if not _registered:
            REGISTRY.register(
                # No models= here: a server process loads no model; every model on a GPU, whoever's
                # kernel holds it, shows up through its lease (the `model` label of the lease series).
                WorkbenchCollector(_current_sampler, leases=_current_leases, leases_age_s=_current_leases_age)
            )
            _registered = True


def settings_from(serverapp: Any) -> Any:
    """The workbench settings, read from the server's Jupyter config."""
    from ..config import WorkbenchSettings

    return WorkbenchSettings(config=serverapp.config)


def export_to_kernels(serverapp: Any, settings: Any) -> dict[str, str]:
    """Hand the settings the server's Jupyter config sets to the kernels it starts.

    Kernels read config files and ``WORKBENCH_*`` variables, not the server's
    ``jupyter_server_config.py``; they do inherit its environment. So a hub admin's
    ``c.WorkbenchSettings.lease_dir = ...`` reaches the kernels that take the leases
    the server lists. A variable already set is left alone (it wins anyway).

    Returns:
        The variables set, ``{"WORKBENCH_LEASE_DIR": "/srv/leases", ...}``.
    """
    from ..config import ENV_VARS

    section = serverapp.config.get("WorkbenchSettings", {}) if "WorkbenchSettings" in serverapp.config else {}
    exported = {}
    for name, var in ENV_VARS.items():
        if name in section and not os.environ.get(var, "").strip():
            exported[var] = os.environ[var] = str(getattr(settings, name))
    return exported


def load(serverapp: Any) -> ServerState:
    """Install the handlers under the server's base URL and register the metrics."""
    state = ServerState(settings_from(serverapp))
    state.exported_env = export_to_kernels(serverapp, state.settings)
    web_app = serverapp.web_app
    base = url_path_join(web_app.settings["base_url"], "workbench", "api")
    handlers = [
        (url_path_join(base, "devices"), DevicesHandler),
        (url_path_join(base, "telemetry"), TelemetryHandler),
        (url_path_join(base, "store"), StoreHandler),
        (url_path_join(base, "store", r"([^/]+)"), StoreEntryHandler),
        (url_path_join(base, "leases"), LeasesHandler),
        (url_path_join(base, "kernels"), KernelsHandler),
    ]
    web_app.add_handlers(".*$", [(pattern, cls, {"state": state}) for pattern, cls in handlers])
    web_app.settings["workbench_state"] = state
    register_metrics(state)
    serverapp.log.info("workbench: REST API at %s, workbench_* series on /metrics", base)
    return state
