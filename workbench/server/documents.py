"""The JSON documents the REST endpoints return, built by the functions the CLI's ``--json`` uses.

Each is plain JSON data (dicts, lists, numbers, strings) from the layers'
frozen dataclasses (``to_dict()``); nothing here reads a model folder beyond the
store's header-only listing, and nothing serves a file.
"""

from __future__ import annotations

from typing import Any


def devices_document() -> dict[str, Any]:
    """``workbench devices --json``: :func:`workbench.devices.devices_report`."""
    from ..devices import devices_report

    return devices_report()


def store_document(store: Any) -> list[dict[str, Any]]:
    """``workbench store list --json``: every entry of every root, broken and unsafe ones included."""
    return [entry.to_dict() for entry in store.list()]


def entry_document(store: Any, name: str) -> dict[str, Any]:
    """One item of ``workbench store list --json``: the entry ``name`` (:meth:`ModelStore.get`).

    Raises:
        ModelNotFoundError: no root has it. UnsafeNameError: not a plain name, or it resolves
            outside its root.
    """
    return store.get(name).to_dict()


def leases_document(book: Any = None) -> dict[str, Any]:
    """``workbench leases --json``: :func:`workbench.devices.leases.leases_report` over ``book``'s folder."""
    from ..devices.leases import leases_report

    return leases_report(book)


def telemetry_document(sampler: Any, since_s: float | None) -> dict[str, Any]:
    """The latest sample and the history after ``since_s`` (a ``time.time()`` value).

    Keys:
        ``latest``: :meth:`Sample.to_dict` of the newest sample (``None`` before the first).
        ``history``: :func:`workbench.telemetry.to_records` rows after ``since_s``
            (samples and events, oldest first).
        ``gpus``: the sampled GPUs' names; ``notices``: sentences such as why no GPU
            is sampled; ``interval_s``: seconds between samples.
    """
    from ..telemetry.export import to_records

    latest = sampler.latest()
    return {
        "interval_s": sampler.interval_s,
        "gpus": sampler.gpu_devices,
        "notices": list(sampler.notices),
        "latest": latest.to_dict() if latest is not None else None,
        "history": to_records(sampler, since_s),
    }
