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


def kernels_document(kernels: list[dict[str, Any]], holdings: dict[int, list[dict[str, Any]]] | None = None,
                     cpu_sample_s: float = 0.2) -> dict[str, Any]:
    """What each of the user's kernels (and other processes of theirs) holds, on every device.

    Args:
        kernels: this server's kernels, ``{"kernel_id", "name", "path", "pid"}`` each (``path``: the
            notebook, ``None`` without a session; ``pid`` ``None`` when the kernel is not local).
        holdings: ``{pid: models}`` as :func:`workbench.runtime.holdings.read_holdings` reads them;
            default read now.
        cpu_sample_s: seconds over which each process's CPU use is measured (once for all).

    Keys:
        ``kernels``: one item per kernel: its keys above plus ``cpu_percent`` (of one core, as top
            shows it), ``rss_bytes`` (resident RAM) and ``models`` (each ``name``, ``engine``,
            ``precision``, ``footprint_bytes``, ``placement_bytes`` by device: ``cpu`` included).
        ``processes``: the user's other processes that hold models (a ``workbench run``, another
            server's kernel): ``pid``, ``command``, ``cpu_percent``, ``rss_bytes``, ``models``.
    """
    import time

    import psutil

    from ..runtime.holdings import read_holdings

    held = read_holdings() if holdings is None else holdings
    pids = {k["pid"] for k in kernels if k.get("pid")} | set(held)
    procs: dict[int, Any] = {}
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            p.cpu_percent(None)  # starts the interval measured below
            procs[pid] = p
        except psutil.Error:
            continue
    if procs and cpu_sample_s > 0:
        time.sleep(cpu_sample_s)

    def usage(pid: int | None) -> dict[str, Any]:
        p = procs.get(pid) if pid else None
        if p is None:
            return {"cpu_percent": None, "rss_bytes": None}
        try:
            with p.oneshot():
                return {"cpu_percent": p.cpu_percent(None), "rss_bytes": p.memory_info().rss}
        except psutil.Error:
            return {"cpu_percent": None, "rss_bytes": None}

    out_kernels = [{**k, **usage(k.get("pid")), "models": held.get(k.get("pid"), [])} for k in kernels]
    kernel_pids = {k.get("pid") for k in kernels}
    others = []
    for pid in sorted(set(held) - kernel_pids):
        try:
            command = " ".join(procs[pid].cmdline())[:200] if pid in procs else None
        except psutil.Error:
            command = None
        others.append({"pid": pid, "command": command, **usage(pid), "models": held[pid]})
    return {"kernels": out_kernels, "processes": others}
