"""What each process of this user holds: its loaded models on every device, the CPU included.

GPU leases (:mod:`workbench.devices.leases`) say what holds a GPU, machine-wide; nothing said what
a kernel holds on the CPU, so the JupyterLab meter's panel read "No model holds a GPU lease" while
a kernel had two models in RAM. So the registry publishes, after every load and unload, one small
JSON document per process in the user's Jupyter runtime folder (``jupyter --runtime-dir``: private
to the user, where kernels keep their connection files, and the folder the server's kernels share
with it); the server's ``/workbench/api/kernels`` reads them back (:func:`read_holdings`).

The folder is the user's own, but a file in it is still read as untrusted: only regular files owned
by this user, bounded in size and depth, whose PID is alive and the one the file names. A process
that exits without cleaning up (killed) leaves a file whose PID is gone: it is skipped (and a reused
PID does not match the process's start time, which the file records).

Document (``workbench-holdings-<pid>.json``)::

    {"pid": 4242, "started_s": 1764670000.0, "updated_s": 1764670123.4,
     "models": [{"name": "SmolLM2-135M-Instruct", "engine": "transformers", "precision": "bfloat16",
                 "footprint_bytes": 269060096, "placement_bytes": {"cpu": 269060096}}]}
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "workbench-holdings-"
#: A document lists a process's models: a few hundred bytes each; anything larger is not ours.
MAX_BYTES = 256 * 1024
#: Files read per listing, at most (a folder planted with thousands costs bounded time).
MAX_FILES = 256
_NAME = re.compile(re.escape(PREFIX) + r"[0-9]{1,10}\.json")


def holdings_dir() -> Path:
    """The user's Jupyter runtime folder (``JUPYTER_RUNTIME_DIR`` when set)."""
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


def _path(folder: Path, pid: int) -> Path:
    return folder / f"{PREFIX}{pid}.json"


def _process_started_s(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def model_record(loaded: Any) -> dict[str, Any]:
    """One loaded model as the document lists it (raw bytes per device)."""
    return {"name": loaded.name, "engine": loaded.engine, "precision": loaded.precision,
            "footprint_bytes": int(loaded.footprint_bytes),
            "placement_bytes": {str(d): int(b) for d, b in dict(loaded.placement).items()}}


def publish(models: Iterable[Any], folder: Path | None = None) -> Path | None:
    """Write this process's document (or remove it when nothing is loaded); never raises.

    Returns:
        The file written, or ``None`` (nothing loaded, or the folder cannot be written: the
        meter's panel then does not see this process, which is logged once at debug level).
    """
    try:
        records = [model_record(m) for m in models]
        folder = folder or holdings_dir()
        target = _path(folder, os.getpid())
        if not records:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            return None
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"pid": os.getpid(), "started_s": _process_started_s(os.getpid()), "updated_s": time.time(),
               "models": records}
        fd, tmp = tempfile.mkstemp(prefix=f".{PREFIX}", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target
    except Exception as exc:  # noqa: BLE001 - the meter's view must never fail a load or an unload
        logger.debug("holdings not published: %s", exc)
        return None


_registries: weakref.WeakSet[Any] = weakref.WeakSet()
_publish_lock = threading.Lock()


def _remove_at_exit() -> None:
    publish(())


def registry_changed(registry: Any) -> None:
    """The registry loaded or unloaded a model: publish what every registry of this process holds
    (the file goes at exit, so a kernel shut down leaves nothing behind)."""
    with _publish_lock:
        if not _registries:
            atexit.register(_remove_at_exit)
        _registries.add(registry)
        models = [m for reg in list(_registries) for m in reg.list()]
        publish(models)


#: Longest name, engine or precision string kept from a document (a model name is tens of characters).
MAX_TEXT = 512
#: Devices listed per model, at most (a model spans a few GPUs and the CPU).
MAX_DEVICES = 64


def _count(value: Any) -> int | None:
    """A byte count as a document may hold it: a non-negative int (``bool`` and floats, NaN among
    them, are not: ``NaN`` would reach the meter's page as invalid JSON)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_TEXT else None


def valid_model(record: Any) -> dict[str, Any] | None:
    """``record`` as :func:`model_record` writes it, rebuilt from its checked fields, or ``None``
    where any field is missing or of the wrong kind (the record is skipped, not repaired)."""
    if not isinstance(record, dict):
        return None
    name, engine, precision = (_text(record.get(k)) for k in ("name", "engine", "precision"))
    footprint = _count(record.get("footprint_bytes"))
    placement = record.get("placement_bytes")
    if None in (name, engine, precision, footprint) or not isinstance(placement, dict) \
            or len(placement) > MAX_DEVICES:
        return None
    devices = {d: _count(b) for d, b in placement.items()}
    if any(_text(d) is None or b is None for d, b in devices.items()):
        return None
    return {"name": name, "engine": engine, "precision": precision, "footprint_bytes": footprint,
            "placement_bytes": devices}


def read_holdings(folder: Path | None = None) -> dict[int, list[dict[str, Any]]]:
    """``{pid: [model records]}`` of this user's live processes that published what they hold.

    Skipped: files not owned by this user (checked on the opened file, not on the name), symlinks
    and other files that are not regular, larger than :data:`MAX_BYTES`, malformed (not JSON, not
    the document's shape), naming another PID than their file's, or whose process is gone (or is a
    newer process with a reused PID, or its start time is not recorded). A model record of the
    wrong shape is left out (:func:`valid_model`). At most :data:`MAX_FILES` files are read.
    """
    from .._bounded_read import load_json
    from ..errors import WorkbenchError

    folder = folder or holdings_dir()
    found: dict[int, list[dict[str, Any]]] = {}
    try:
        # ASCII digits only: str.isdigit() is true of "²", which int() refuses.
        names = sorted(n for n in os.listdir(folder) if _NAME.fullmatch(n))
    except OSError:
        return found
    for name in names[:MAX_FILES]:
        pid, path = int(name[len(PREFIX):-len(".json")]), folder / name
        try:
            doc = load_json(path, MAX_BYTES, follow_symlinks=False, owner_uid=os.geteuid())
        except (OSError, WorkbenchError, ValueError):
            continue
        if not isinstance(doc, dict) or _count(doc.get("pid")) != pid or not isinstance(doc.get("models"), list):
            continue
        started = _process_started_s(pid)
        recorded = doc.get("started_s")
        if started is None or not isinstance(recorded, (int, float)) or isinstance(recorded, bool) \
                or not abs(started - recorded) <= 1.0:
            continue
        found[pid] = [m for m in map(valid_model, doc["models"]) if m is not None]
    return found
